"""BP4D+ reader (DESIGN.md, "Datasets: on-disk layouts").

    <root>/2D+3D/F001.zip                  members F001/T1/0001.jpg ... (any zero padding)
    <root>/AUCoding/AU_OCC/F001_T1.csv     frame column '0', then 34 AU columns; 0, 1, 9

Only tasks with a label file (T1, T6, T7, T8 in the real data) give records; each task
folder without one is listed once in `skipped`. Image references are "zip!member". Label
files are parsed, and malformed ones skipped, exactly as for BP4D (`glee.datasets.bp4d`).
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

from glee.datasets.bp4d import (
    IMAGE_DIR,
    IMAGE_SUFFIXES,
    _check_aus,
    frame_number,
    label_files,
    match_labels_to_images,
)
from glee.datasets.errors import DatasetError, Skip
from glee.datasets.images import zip_ref
from glee.datasets.records import BP4D_AUS, DatasetIndex
from glee.datasets.splits import load_split


def read_bp4dplus(
    root: str | Path, split: str | Path = "bp4dplus", aus: Sequence[int] = BP4D_AUS
) -> DatasetIndex:
    """Index BP4D+ (or a synthetic BP4D+) under `root`: one FrameRecord per labelled frame."""
    root = Path(root).expanduser().resolve()
    aus = _check_aus(aus)
    labels = label_files(root, "BP4D+")
    image_dir = root / IMAGE_DIR
    zips = sorted(image_dir.glob("*.zip")) if image_dir.is_dir() else []
    if not zips:
        raise DatasetError(
            f"BP4D+ root {root} has no {IMAGE_DIR}/*.zip archives: expected "
            f"<root>/{IMAGE_DIR}/F001.zip with members F001/T1/0001.jpg"
        )
    folds = load_split(split)
    images: dict[tuple[str, str], dict[int, str]] = {}
    where: dict[tuple[str, str], str] = {}
    early: list[Skip] = []
    for subject, task in labels:
        where[(subject, task)] = str(image_dir / f"{subject}.zip")
    for archive in zips:
        subject = archive.stem
        try:
            with zipfile.ZipFile(archive) as zf:
                members = zf.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            early.append(Skip(str(archive), f"not a readable zip archive ({e})"))
            continue
        for member in sorted(members):
            parts = member.split("/")
            if len(parts) < 2 or not parts[-1] or not member.lower().endswith(IMAGE_SUFFIXES):
                continue
            task = parts[-2].upper()
            ref = zip_ref(archive, member)
            n = frame_number(parts[-1])
            if n is None:
                early.append(Skip(ref, "member name is not a frame number"))
                continue
            frames = images.setdefault((subject, task), {})
            if n in frames:
                early.append(Skip(ref, f"frame {n} also in {frames[n]}"))
                continue
            frames[n] = ref
            where.setdefault((subject, task), zip_ref(archive, "/".join(parts[:-1]) + "/"))
    index = match_labels_to_images("bp4dplus", labels, images, where, aus, folds)
    index.root = str(root)
    index.skipped = early + index.skipped
    return index
