"""DISFA reader (DESIGN.md, "Datasets: on-disk layouts").

    <root>/Videos_LeftCamera/LeftVideoSN001_comp.avi     left camera
    <root>/ActionUnit_Labels/SN001/SN001_au1.txt         lines "frame,intensity" (0..5)

Line i of every label file is frame i of the video: the record keeps DISFA's 1-based frame
number and the image reference "video#(i-1)" (0-based decode index). An AU is present when
its intensity is >= 2; intensities are kept. The frame count comes from the container
header (no decoding); label lines beyond the video and video frames without a label line
are listed in `skipped`. A malformed label file (ragged line, non-integer or out-of-range
value, AU files of different lengths or frame numbers) skips that subject with
"file:line: reason"; a requested AU without a label file raises `DatasetError`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from glee.datasets.bp4d import _check_aus, assign_folds
from glee.datasets.errors import DatasetError, Skip
from glee.datasets.images import video_frame_count, video_ref
from glee.datasets.records import DISFA_AUS, DatasetIndex, FrameRecord, au_names
from glee.datasets.splits import load_split

VIDEO_DIR = "Videos_LeftCamera"
LABEL_DIR = "ActionUnit_Labels"
PRESENT_INTENSITY = 2  # DESIGN.md "AU sets": intensity >= 2 means present
_VIDEO_NAME = re.compile(r"^LeftVideo(?P<subject>.+?)_comp$", re.IGNORECASE)


class _Malformed(Exception):
    def __init__(self, path: Path, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.skip = Skip(f"{path}:{line}", reason)


def _read_intensity_file(path: Path) -> list[tuple[int, int]]:
    """[(frame, intensity)] in line order."""
    out: list[tuple[int, int]] = []
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    for lineno, line in enumerate(lines, start=1):
        fields = line.strip().split(",")
        if len(fields) != 2:
            raise _Malformed(path, lineno, f"expected 'frame,intensity', got {line.strip()!r}")
        try:
            frame, value = int(fields[0]), int(fields[1])
        except ValueError:
            raise _Malformed(path, lineno, "non-integer value") from None
        if not 0 <= value <= 5:
            raise _Malformed(path, lineno, f"intensity {value} is outside 0..5")
        out.append((frame, value))
    return out


def _subject_labels(
    label_dir: Path, subject: str, aus: Sequence[int]
) -> tuple[list[int], list[tuple[int, ...]], Path]:
    """Frame numbers and per-line intensity tuples (AU order) of one subject."""
    columns: list[list[tuple[int, int]]] = []
    first: Path | None = None
    for au in aus:
        path = label_dir / subject / f"{subject}_au{au}.txt"
        if not path.is_file():
            raise DatasetError(
                f"DISFA label file {path} for AU{au} does not exist: DISFA codes AUs "
                f"1,2,4,5,6,9,12,15,17,20,25,26; choose AUs among those"
            )
        rows = _read_intensity_file(path)
        if first is None:
            first = path
        elif len(rows) != len(columns[0]):
            raise _Malformed(
                path, len(rows), f"{len(rows)} lines but {first.name} has {len(columns[0])}"
            )
        else:
            for i, ((f0, _), (f1, _)) in enumerate(zip(columns[0], rows), start=1):
                if f0 != f1:
                    raise _Malformed(path, i, f"frame {f1} but {first.name} line {i} is {f0}")
        columns.append(rows)
    assert first is not None
    frames = [f for f, _ in columns[0]]
    intensities = [tuple(col[i][1] for col in columns) for i in range(len(frames))]
    return frames, intensities, first


def read_disfa(
    root: str | Path, split: str | Path = "disfa", aus: Sequence[int] = DISFA_AUS
) -> DatasetIndex:
    """Index DISFA (or a synthetic DISFA) under `root`: one FrameRecord per labelled frame."""
    root = Path(root).expanduser().resolve()
    aus = _check_aus(aus)
    if not root.is_dir():
        raise DatasetError(
            f"DISFA root {root} does not exist: pass the folder that holds {VIDEO_DIR}/ "
            f"and {LABEL_DIR}/"
        )
    label_dir, video_dir = root / LABEL_DIR, root / VIDEO_DIR
    if not label_dir.is_dir():
        raise DatasetError(
            f"DISFA root {root} has no {LABEL_DIR} folder: expected "
            f"<root>/{LABEL_DIR}/SN001/SN001_au1.txt (lines 'frame,intensity')"
        )
    if not video_dir.is_dir():
        raise DatasetError(
            f"DISFA root {root} has no {VIDEO_DIR} folder: expected "
            f"<root>/{VIDEO_DIR}/LeftVideoSN001_comp.avi"
        )
    folds_split = load_split(split)
    label_subjects = sorted(p.name for p in label_dir.iterdir() if p.is_dir())
    videos: dict[str, Path] = {}
    for path in sorted(video_dir.iterdir()):
        m = _VIDEO_NAME.match(path.stem)
        if m and path.is_file():
            videos[m["subject"]] = path
    if not label_subjects and not videos:
        raise DatasetError(
            f"DISFA root {root} holds no subjects: expected {LABEL_DIR}/SN001/ and "
            f"{VIDEO_DIR}/LeftVideoSN001_comp.avi"
        )
    warnings: list[str] = []
    skipped: list[Skip] = []
    records: list[FrameRecord] = []
    folds = assign_folds(set(label_subjects) | set(videos), folds_split, "disfa", warnings)
    for subject in label_subjects:
        try:
            frames, intensities, first = _subject_labels(label_dir, subject, aus)
        except _Malformed as e:
            skipped.append(e.skip)
            continue
        video = videos.get(subject)
        if video is None:
            skipped.append(
                Skip(
                    str(label_dir / subject),
                    f"no video {video_dir}/LeftVideo{subject}_comp.avi for {len(frames)} label lines",
                )
            )
            continue
        n_video = video_frame_count(video)
        if n_video < 0:
            skipped.append(Skip(str(video), "video cannot be opened"))
            continue
        for i, (frame, values) in enumerate(zip(frames, intensities)):
            ref = video_ref(video, i)  # line i+1 <-> 0-based frame i
            if i >= n_video:
                skipped.append(
                    Skip(f"{first}:{i + 1}", f"label line beyond the video's {n_video} frames")
                )
                continue
            labels = tuple(1 if v >= PRESENT_INTENSITY else 0 for v in values)
            records.append(
                FrameRecord(
                    "disfa",
                    subject,
                    "",
                    frame,
                    ref,
                    labels,
                    folds[subject],
                    tuple(float(v) for v in values),
                )
            )
        for i in range(len(frames), n_video):
            skipped.append(Skip(video_ref(video, i), "video frame without a label line"))
    for subject, video in videos.items():
        if subject not in label_subjects:
            skipped.append(Skip(str(video), f"no label folder {label_dir / subject}"))
    return DatasetIndex(
        dataset="disfa",
        root=str(root),
        records=records,
        skipped=skipped,
        au_names=au_names(aus),
        warnings=warnings,
        split=folds_split,
    )
