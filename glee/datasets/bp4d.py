"""BP4D reader (DESIGN.md, "Datasets: on-disk layouts").

    <root>/2D+3D/F001/T1/0001.jpg          frame number in the file name (any zero padding)
    <root>/AUCoding/AU_OCC/F001_T1.csv     header: 0,1,2,4,...  (0 = frame column, then AUs)
                                           values 0, 1, 9 (9 = not coded -> UNKNOWN)

Malformed label files (missing frame column, ragged rows, non-integer or out-of-range
values, duplicate AU columns) are skipped whole, with "file:line: reason" in
`DatasetIndex.skipped`, so one bad file does not stop a 328-file dataset. A requested AU
absent from a label file is a configuration mistake and raises `DatasetError`.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from glee.datasets.errors import DatasetError, Skip
from glee.datasets.records import BP4D_AUS, UNKNOWN, DatasetIndex, FrameRecord, au_names
from glee.datasets.splits import load_split

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
LABEL_DIR = ("AUCoding", "AU_OCC")
IMAGE_DIR = "2D+3D"
_LABEL_NAME = re.compile(r"^(?P<subject>[^_]+)_(?P<task>T\d+)$", re.IGNORECASE)
# FACS action units and action descriptors that can head an AU_OCC column.
FACS_CODES: frozenset[int] = frozenset(
    [1, 2, *range(4, 47), *range(50, 59), *range(61, 67), *range(68, 86)]
)
OCC_VALUES = {0: 0, 1: 1, 9: UNKNOWN}  # BP4D occurrence coding


@dataclass
class AuOccTable:
    """One parsed AU_OCC CSV: frame -> (labels in the requested AU order, CSV line)."""

    path: Path
    rows: dict[int, tuple[tuple[int, ...], int]]
    unknown_headers: list[str]


class MalformedLabels(Exception):
    def __init__(self, path: Path, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.skip = Skip(f"{path}:{line}", reason)


def _au_header(text: str) -> int | None:
    text = text.strip()
    if text.upper().startswith("AU"):
        text = text[2:]
    try:
        return int(text)
    except ValueError:
        return None


def read_au_occ_csv(path: Path, aus: Sequence[int]) -> AuOccTable:
    """Parse an AU_OCC CSV (BP4D and BP4D+); MalformedLabels for a bad file, DatasetError
    when a requested AU has no column."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    while rows and not any(c.strip() for c in rows[-1]):
        rows.pop()
    if not rows:
        raise MalformedLabels(path, 1, "empty label file")
    header = [c.strip() for c in rows[0]]
    if not header or header[0] not in ("0", "frame", "Frame"):
        raise MalformedLabels(
            path, 1, f"first column must be the frame column headed '0', got {header[:1]}"
        )
    columns: dict[int, int] = {}
    unknown: list[str] = []
    for col, text in enumerate(header[1:], start=1):
        au = _au_header(text)
        if au is None or au not in FACS_CODES:
            unknown.append(text)
            continue
        if au in columns:
            raise MalformedLabels(path, 1, f"AU {au} appears in two columns")
        columns[au] = col
    for au in aus:
        if au not in columns:
            raise DatasetError(
                f"label file {path} has no column for AU{au}: its AU columns are "
                f"{sorted(columns)}; choose AUs the dataset codes"
            )
    wanted = [columns[au] for au in aus]
    parsed: dict[int, tuple[tuple[int, ...], int]] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise MalformedLabels(
                path, lineno, f"ragged row: {len(row)} fields, header has {len(header)}"
            )
        try:
            frame = int(row[0])
            values = [int(row[c]) for c in wanted]
        except ValueError:
            raise MalformedLabels(path, lineno, "non-integer value") from None
        bad = [v for v in values if v not in OCC_VALUES]
        if bad:
            raise MalformedLabels(path, lineno, f"occurrence value {bad[0]} is not 0, 1 or 9")
        if frame in parsed:
            raise MalformedLabels(path, lineno, f"frame {frame} appears twice")
        parsed[frame] = (tuple(OCC_VALUES[v] for v in values), lineno)
    return AuOccTable(path, parsed, unknown)


def label_files(root: Path, dataset_name: str) -> dict[tuple[str, str], Path]:
    """(subject, task) -> AU_OCC CSV; DatasetError if the folder is missing or empty."""
    label_dir = root.joinpath(*LABEL_DIR)
    if not root.is_dir():
        raise DatasetError(
            f"{dataset_name} root {root} does not exist: pass the folder that holds "
            f"{IMAGE_DIR}/ and {'/'.join(LABEL_DIR)}/"
        )
    if not label_dir.is_dir():
        raise DatasetError(
            f"{dataset_name} root {root} has no {'/'.join(LABEL_DIR)} folder: expected "
            f"<root>/{'/'.join(LABEL_DIR)}/F001_T1.csv (frame column '0', then AU columns)"
        )
    found: dict[tuple[str, str], Path] = {}
    for path in sorted(label_dir.glob("*.csv")):
        m = _LABEL_NAME.match(path.stem)
        if m:
            found[(m["subject"], m["task"].upper())] = path
    if not found:
        raise DatasetError(
            f"{dataset_name} label folder {label_dir} holds no SUBJECT_TASK.csv files "
            f"(expected e.g. F001_T1.csv)"
        )
    return found


def frame_number(name: str) -> int | None:
    """'0001.jpg' -> 1; None if the stem is not an integer."""
    stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    try:
        return int(stem)
    except ValueError:
        return None


def assign_folds(
    subjects: Iterable[str], split: dict[str, int], dataset_name: str, warnings: list[str]
) -> dict[str, int]:
    """Fold per subject; subjects absent from the split get 0 and one warning."""
    subjects = sorted(set(subjects))
    missing = [s for s in subjects if s not in split]
    if missing:
        warnings.append(
            f"{dataset_name}: {len(missing)} subject(s) not in the split get fold 0 "
            f"(used by no fold): {' '.join(missing)}"
        )
    return {s: split.get(s, 0) for s in subjects}


def match_labels_to_images(
    dataset_name: str,
    labels: dict[tuple[str, str], Path],
    images: dict[tuple[str, str], dict[int, str]],
    image_where: dict[tuple[str, str], str],
    aus: Sequence[int],
    split: dict[str, int],
) -> DatasetIndex:
    """Join label rows and images by (subject, task, frame number); list what has no partner."""
    records: list[FrameRecord] = []
    skipped: list[Skip] = []
    warnings: list[str] = []
    unknown_headers: set[str] = set()
    tables: dict[tuple[str, str], AuOccTable] = {}
    for key, path in sorted(labels.items()):
        try:
            table = read_au_occ_csv(path, aus)
        except MalformedLabels as e:
            skipped.append(e.skip)
            continue
        unknown_headers.update(table.unknown_headers)
        tables[key] = table
    if unknown_headers:
        warnings.append(
            f"{dataset_name}: ignored label columns that are not FACS AU numbers: "
            f"{sorted(unknown_headers)}"
        )
    folds = assign_folds(
        {s for s, _ in tables} | {s for s, _ in images}, split, dataset_name, warnings
    )
    for (subject, task), table in sorted(tables.items()):
        frames = images.get((subject, task))
        if frames is None:
            skipped.append(
                Skip(
                    str(table.path),
                    f"no images for {subject}/{task}: expected {image_where[(subject, task)]}",
                )
            )
            continue
        for frame, (labels_row, lineno) in sorted(table.rows.items()):
            ref = frames.get(frame)
            if ref is None:
                skipped.append(Skip(f"{table.path}:{lineno}", f"no image for frame {frame}"))
                continue
            records.append(
                FrameRecord(dataset_name, subject, task, frame, ref, labels_row, folds[subject])
            )
        for frame, ref in sorted(frames.items()):
            if frame not in table.rows:
                skipped.append(Skip(ref, f"no label row for frame {frame} in {table.path.name}"))
    for (subject, task), frames in sorted(images.items()):
        if (subject, task) in tables:
            continue
        if (subject, task) in labels:
            reason = f"label file {labels[(subject, task)].name} was skipped (malformed)"
        else:
            reason = f"task not AU-coded (no label file {subject}_{task}.csv)"
        skipped.append(Skip(image_where[(subject, task)], f"{reason}: {len(frames)} images"))
    return DatasetIndex(
        dataset=dataset_name,
        root="",
        records=records,
        skipped=skipped,
        au_names=au_names(tuple(aus)),
        warnings=warnings,
        split=split,
    )


def _check_aus(aus: Sequence[int]) -> tuple[int, ...]:
    aus = tuple(int(a) for a in aus)
    if not aus or len(set(aus)) != len(aus):
        raise DatasetError(f"AU list {list(aus)} must be non-empty without repeats")
    return aus


def read_bp4d(
    root: str | Path, split: str | Path = "bp4d", aus: Sequence[int] = BP4D_AUS
) -> DatasetIndex:
    """Index BP4D (or a synthetic BP4D) under `root`: one FrameRecord per labelled frame."""
    root = Path(root).expanduser().resolve()
    aus = _check_aus(aus)
    labels = label_files(root, "BP4D")
    image_dir = root / IMAGE_DIR
    if not image_dir.is_dir():
        raise DatasetError(
            f"BP4D root {root} has no {IMAGE_DIR} folder: expected <root>/{IMAGE_DIR}/F001/T1/0001.jpg"
        )
    folds = load_split(split)
    images: dict[tuple[str, str], dict[int, str]] = {}
    where: dict[tuple[str, str], str] = {}
    bad_names: list[Skip] = []
    for key in labels:
        where[key] = str(image_dir / key[0] / key[1])
    for subject_dir in sorted(p for p in image_dir.iterdir() if p.is_dir()):
        for task_dir in sorted(p for p in subject_dir.iterdir() if p.is_dir()):
            key = (subject_dir.name, task_dir.name.upper())
            frames: dict[int, str] = {}
            for path in sorted(task_dir.iterdir()):
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                n = frame_number(path.name)
                if n is None:
                    bad_names.append(Skip(str(path), "file name is not a frame number"))
                elif n in frames:
                    bad_names.append(Skip(str(path), f"frame {n} also in {frames[n]}"))
                else:
                    frames[n] = str(path)
            if frames:
                images[key] = frames
                where[key] = str(task_dir)
    index = match_labels_to_images("bp4d", labels, images, where, aus, folds)
    index.root = str(root)
    index.skipped = bad_names + index.skipped
    return index
