"""What a preprocessed dataset folder holds, read without its images.

A folder (`<prep>/<dataset>/`, written by `glee_platform.preprocess`) has manifest.json, the
Parquet shards (`faces/part-*.parquet`, FEC: `images/part-*.parquet` + `triplets.parquet`)
and errors.parquet. Training, evaluation and search read the small columns here on the
driver (folds, labels: a few bytes per face); the images stream to the workers through
`glee_platform.training_data` and are never held by the driver.

Rows of a split: the shards in file order, each filtered to the split's folds. `max_rows`
(smoke runs) keeps whole shards, in file order, while their rows add up to at most
`max_rows` (at least one shard): the same rows for the AU weights, the baselines (always
present, the f_exp probe), training and evaluation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


class DataError(ValueError):
    """Preprocessed data is missing or malformed; the message says what to do."""


def dataset_dir(prep: Path, dataset: str) -> Path:
    return Path(prep) / dataset


def read_manifest(prep: Path, dataset: str) -> dict[str, Any]:
    path = dataset_dir(prep, dataset) / "manifest.json"
    if not path.is_file():
        raise DataError(
            f"no preprocessed {dataset} at {path.parent}: run preprocessing first "
            f"(`python jobs/preprocess.py --dataset {dataset} ...` or `python jobs/finetune.py`)"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def is_preprocessed(prep: Path, dataset: str) -> bool:
    d = dataset_dir(prep, dataset)
    table = "images" if dataset == "fec" else "faces"
    return (d / "manifest.json").is_file() and any((d / table).glob("*.parquet"))


def expression_names(manifest: dict[str, Any]) -> list[str]:
    """Blendshape names of the 3DMM the preprocessing fitted (manifest, else the default)."""
    names = manifest.get("expression_names") or manifest.get("config", {}).get("expression_names")
    if names:
        return list(names)
    from glee.face.default_model import default_model  # the project's built-in 3DMM

    return list(default_model().expression_names)


def fold_filter(fold: int | None, train: bool) -> tuple[str, list[int]]:
    """Which `fold` values a split keeps: train on the other parts, test on part k.

    fold None means "the whole dataset" (cross-dataset evaluation), subjects of no fold
    (fold 0) included.
    """
    if fold is None:
        return "all", [0, 1, 2, 3]
    if fold not in (1, 2, 3):
        raise DataError(f"fold must be 1, 2 or 3, got {fold!r}")
    if train:
        parts = [k for k in (1, 2, 3) if k != fold]
        return f"parts {parts[0]}+{parts[1]}", parts
    return f"part {fold}", [fold]


@dataclass(frozen=True)
class FaceSplit:
    """The rows of some folds of an AU dataset: which shards hold them, and their labels."""

    dataset: str
    folds: tuple[int, ...]
    files: tuple[str, ...]  # shards in file order, each with at least one row of the folds
    labels: np.ndarray  # (N, n_au) int8 (1, 0, -1 unknown), in file order

    @property
    def num_rows(self) -> int:
        return len(self.labels)


def face_split(
    prep: Path, dataset: str, folds: Sequence[int], max_rows: int | None = None
) -> FaceSplit:
    """The shards and labels of `folds`; reads only the fold and label columns."""
    manifest = read_manifest(prep, dataset)
    folder = dataset_dir(prep, dataset) / "faces"
    files, labels = [], []
    total = 0
    for path in sorted(folder.glob("part-*.parquet")):
        table = pq.read_table(path, columns=["fold", "labels"])
        keep = pc.is_in(table["fold"], value_set=pa.array(list(folds), table["fold"].type))
        table = table.filter(keep)
        if table.num_rows == 0:
            continue
        if max_rows and files and total + table.num_rows > max_rows:
            break
        files.append(str(path))
        labels.append(np.asarray(table["labels"].to_pylist(), np.int8))
        total += table.num_rows
    if not labels:
        return FaceSplit(
            dataset, tuple(folds), (), np.zeros((0, len(manifest["au_names"])), np.int8)
        )
    return FaceSplit(dataset, tuple(folds), tuple(files), np.concatenate(labels))


def split_expressions(split: FaceSplit) -> np.ndarray:
    """(N, n_expr) float32 fitted f_exp (Sec. III-C) of the split's rows, in the order of
    `split.labels`: the same shards, each filtered to the split's folds."""
    parts = []
    for path in split.files:
        table = pq.read_table(path, columns=["fold", "expression"])
        keep = pc.is_in(table["fold"], value_set=pa.array(list(split.folds), table["fold"].type))
        column = table.filter(keep)["expression"].combine_chunks()
        widths = set(pc.list_value_length(column).to_pylist())
        if len(widths) != 1:
            raise DataError(f"{path}: expression vectors of lengths {sorted(widths)}")
        parts.append(column.flatten().to_numpy().reshape(len(column), widths.pop()))
    if len(parts) == 0:
        return np.zeros((0, 0), np.float32)
    out = np.concatenate(parts).astype(np.float32, copy=False)
    if len(out) != split.num_rows:
        raise DataError(f"{split.dataset}: {len(out)} expression rows for {split.num_rows} labels")
    return out


def label_matrix(
    prep: Path, dataset: str, folds: Sequence[int], max_rows: int | None = None
) -> np.ndarray:
    """(N, n_au) int8 labels (1, 0, -1 unknown) of the rows in `folds`."""
    return face_split(prep, dataset, folds, max_rows).labels


def always_present_f1(labels: np.ndarray) -> np.ndarray:
    """Per-AU F1 of predicting every AU present: TP = positives, FP = negatives, FN = 0."""
    labels = np.asarray(labels)
    pos = (labels == 1).sum(0).astype(np.float64)
    neg = (labels == 0).sum(0).astype(np.float64)
    denom = 2 * pos + neg
    return np.divide(2 * pos, denom, out=np.zeros_like(pos), where=denom > 0)
