"""What the readers return: one record per labelled frame, one per FEC triplet.

Image references are strings that `glee.datasets.images.load_image` understands:
    "/abs/path/0001.jpg"                      a file
    "/abs/path/F001.zip!F001/T1/0001.jpg"     a member of a zip archive (BP4D+)
    "/abs/path/LeftVideoSN001_comp.avi#12"    0-based frame 12 of a video (DISFA)
"""

from __future__ import annotations

from dataclasses import dataclass

# AU sets (DESIGN.md, "AU sets"); label vectors follow this order.
BP4D_AUS: tuple[int, ...] = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)
DISFA_AUS: tuple[int, ...] = (1, 2, 4, 6, 9, 12, 25, 26)
DATASET_AUS: dict[str, tuple[int, ...]] = {
    "bp4d": BP4D_AUS,
    "bp4dplus": BP4D_AUS,
    "disfa": DISFA_AUS,
}
AU_DATASETS: tuple[str, ...] = tuple(DATASET_AUS)  # the datasets with AU labels
# Every AU the synthetic world drives (union of the datasets' coded AUs we model).
ALL_AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 24, 25, 26)

UNKNOWN = -1  # label value for "not coded" (BP4D's 9)


def au_names(aus: tuple[int, ...]) -> list[str]:
    return [f"AU{a}" for a in aus]


@dataclass(frozen=True)
class FrameRecord:
    dataset: str  # "bp4d" | "bp4dplus" | "disfa"
    subject: str  # "F001", "SN001", ...
    task: str  # "T1" ... ("" for DISFA)
    frame: int  # frame number as the dataset numbers it
    image: str  # image reference (module docstring)
    labels: tuple[int, ...]  # per AU of DATASET_AUS[dataset]: 1, 0 or UNKNOWN
    fold: int  # 1..3 from the split file, 0 if the subject is in no part
    intensities: tuple[float, ...] | None = None  # DISFA: 0..5 per AU of DATASET_AUS


@dataclass(frozen=True)
class FaceRef:
    """One face of an FEC triplet: where the image is and its box, normalised to [0, 1]."""

    url: str
    left: float  # top-left column
    right: float  # bottom-right column
    top: float  # top-left row
    bottom: float  # bottom-right row


@dataclass(frozen=True)
class TripletRecord:
    faces: tuple[FaceRef, FaceRef, FaceRef]  # as listed in the CSV
    triplet_type: str  # ONE_CLASS_TRIPLET | TWO_CLASS_TRIPLET | THREE_CLASS_TRIPLET
    annotations: tuple[int, ...]  # each in {1, 2, 3}: the face most different
    most_different: int  # majority vote, 1..3
    margin: float  # 0.1 one-class, 0.2 two/three-class (Sec. IV-B)

    @property
    def anchor_positive_negative(self) -> tuple[FaceRef, FaceRef, FaceRef]:
        """The two similar faces (CSV order) and the most different one."""
        neg = self.faces[self.most_different - 1]
        a, p = (f for i, f in enumerate(self.faces) if i != self.most_different - 1)
        return a, p, neg


@dataclass
class DatasetIndex:
    """What an AU reader returns: the labelled frames, what it skipped and why, notes."""

    dataset: str  # "bp4d" | "bp4dplus" | "disfa"
    root: str
    records: list[FrameRecord]
    skipped: list[tuple[str, str]]  # glee.datasets.errors.Skip: (reference, reason)
    au_names: list[str]  # label order, e.g. ["AU1", "AU2", ...]
    warnings: list[str]
    split: dict[str, int] | None = None  # subject -> fold used for `FrameRecord.fold`

    def subjects(self) -> list[str]:
        return sorted({r.subject for r in self.records})


@dataclass
class FecIndex:
    """What the FEC reader returns: the triplets of one CSV and the rows it skipped."""

    csv: str
    split: str  # "train" | "test" | "custom"
    triplets: list[TripletRecord]
    skipped: list[tuple[str, str]]  # (csv:line or url, reason)
    warnings: list[str]
    image_root: str | None = None
    cache_dir: str | None = None
