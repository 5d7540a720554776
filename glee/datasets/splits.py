"""Subject splits for 3-fold cross-validation, kept as data (DESIGN.md, standard folds).

A split file has one subject per line, "SUBJECT FOLD" (whitespace) or "SUBJECT,FOLD"
(CSV, an optional "subject,fold" header is allowed); '#' starts a comment. The shipped
splits live in `glee/datasets/splits/{bp4d,bp4dplus,disfa}.txt`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from glee.datasets.errors import DatasetError

SPLITS_DIR = Path(__file__).resolve().parent / "splits"
SHIPPED_SPLITS = ("bp4d", "bp4dplus", "disfa")
NUM_FOLDS = 3


def split_path(name_or_path: str | Path) -> Path:
    """The file behind a shipped split name or a user's path."""
    key = str(name_or_path)
    if key.lower() in SHIPPED_SPLITS:
        return SPLITS_DIR / f"{key.lower()}.txt"
    path = Path(key).expanduser()
    if not path.is_file():
        raise DatasetError(
            f"split {key!r} is neither a shipped split ({', '.join(SHIPPED_SPLITS)}) "
            f"nor an existing file: give one of those names or a path to a 'SUBJECT FOLD' file"
        )
    return path


def load_split(name_or_path: str | Path) -> dict[str, int]:
    """Subject -> fold (1..3) from a shipped split name or a user's split file."""
    path = split_path(name_or_path)
    split: dict[str, int] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = [f.strip() for f in line.split(",")] if "," in line else line.split()
        if len(split) == 0 and [f.lower() for f in fields] == ["subject", "fold"]:
            continue  # CSV header
        if len(fields) != 2:
            raise DatasetError(
                f"split file {path} line {lineno}: expected 'SUBJECT FOLD', got {raw.strip()!r}"
            )
        subject, fold_text = fields
        try:
            fold = int(fold_text)
        except ValueError:
            fold = -1
        if not 1 <= fold <= NUM_FOLDS:
            raise DatasetError(
                f"split file {path} line {lineno}: fold must be an integer 1..{NUM_FOLDS}, "
                f"got {fold_text!r}"
            )
        if subject in split and split[subject] != fold:
            raise DatasetError(
                f"split file {path} line {lineno}: subject {subject} is listed in fold "
                f"{split[subject]} and fold {fold}; a subject belongs to one fold"
            )
        split[subject] = fold
    if not split:
        raise DatasetError(f"split file {path} lists no subjects: expected 'SUBJECT FOLD' lines")
    return split


def fold_subjects(split: Mapping[str, int], k: int) -> tuple[list[str], list[str]]:
    """(train subjects, test subjects) of fold k: test on part k, train on the others."""
    folds = sorted(set(split.values()))
    if k not in folds:
        raise DatasetError(f"fold {k} is not in the split: folds present are {folds}")
    train = sorted(s for s, f in split.items() if f != k and f > 0)
    test = sorted(s for s, f in split.items() if f == k)
    return train, test
