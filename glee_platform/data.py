"""Preprocessed Parquet -> Ray Datasets for training, plus the augmentation of Sec. IV-B.

AU datasets: `<prep>/<dataset>/faces/*.parquet` rows are filtered by fold, decoded once
(PNG/JPEG -> uint8 RGB) and materialised in the object store; Ray Train splits them
across workers (`get_dataset_shard`). Augmentation runs per batch on the worker: a random
176x176 crop of the 200x200 face and a horizontal flip for training, the centre crop for
evaluation. A flip also mirrors what depends on left and right: landmark x and the iBUG
point order, and the left/right expression blendshapes of f_exp.

FEC: the triplets table (plus chain-mined triplets, Sec. III-E) is the Ray Dataset; each
worker holds the FEC images table keyed by image id (`FaceImageStore`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

FACE_SIZE = 200  # aligned face (DESIGN.md, Alignment)
CROP_SIZE = 176  # training crop (Sec. IV-B)
FACE_COLUMNS = ["image", "landmarks", "expression", "labels"]

# iBUG-68 point that each point becomes under a horizontal mirror.
_IBUG_PAIRS = (
    [(i, 16 - i) for i in range(17)]  # jaw
    + [(17 + i, 26 - i) for i in range(5)]  # brows
    + [(27, 27), (28, 28), (29, 29), (30, 30)]  # nose bridge
    + [(31, 35), (32, 34), (33, 33)]  # nostrils
    + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    + [(48, 54), (49, 53), (50, 52), (51, 51), (55, 59), (56, 58), (57, 57)]  # outer lips
    + [(60, 64), (61, 63), (62, 62), (65, 67), (66, 66)]  # inner lips
)
IBUG_MIRROR = np.zeros(68, np.int64)
for _a, _b in _IBUG_PAIRS:
    IBUG_MIRROR[_a], IBUG_MIRROR[_b] = _b, _a


class DataError(ValueError):
    """Preprocessed data is missing or malformed; the message says what to do."""


# --------------------------------------------------------------------------- manifest


def dataset_dir(prep: Path, dataset: str) -> Path:
    return Path(prep) / dataset


def read_manifest(prep: Path, dataset: str) -> dict[str, Any]:
    path = dataset_dir(prep, dataset) / "manifest.json"
    if not path.is_file():
        raise DataError(
            f"no preprocessed {dataset} at {path.parent}: run preprocessing first "
            f"(glee_platform.preprocess.preprocess_dataset or `python jobs/finetune.py`)"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def is_preprocessed(prep: Path, dataset: str) -> bool:
    d = dataset_dir(prep, dataset)
    table = "images" if dataset == "fec" else "faces"
    return (d / "manifest.json").is_file() and any((d / table).glob("*.parquet"))


def expression_mirror(names: Sequence[str] | None, dim: int) -> np.ndarray:
    """Index map of f_exp under a horizontal flip: `*_l` <-> `*_r` blendshapes swap."""
    perm = np.arange(dim)
    if not names or len(names) != dim:
        return perm
    where = {n: i for i, n in enumerate(names)}
    for i, n in enumerate(names):
        for a, b in (("_l", "_r"), ("_left", "_right")):
            if n.endswith(a) and n[: -len(a)] + b in where:
                j = where[n[: -len(a)] + b]
                perm[i], perm[j] = j, i
    return perm


def expression_names(manifest: dict[str, Any]) -> list[str]:
    """Blendshape names of the 3DMM the preprocessing fitted (manifest, else the default)."""
    names = manifest.get("expression_names") or manifest.get("config", {}).get("expression_names")
    if names:
        return list(names)
    from glee.face.default_model import default_model  # the project's built-in 3DMM

    return list(default_model().expression_names)


# --------------------------------------------------------------------------- AU tables


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


def _read_faces_table(prep: Path, dataset: str, columns: list[str]) -> pa.Table:
    read_manifest(prep, dataset)
    return pq.read_table(dataset_dir(prep, dataset) / "faces", columns=columns)


def _select(table: pa.Table, folds: Sequence[int], max_rows: int | None) -> pa.Table:
    """Rows of the given folds in file order, the first `max_rows` of them if positive (the
    same rows for the AU weights and for training)."""
    mask = pc.is_in(table["fold"], value_set=pa.array(list(folds), table.schema.field("fold").type))
    table = table.filter(mask)
    if max_rows:  # 0 or None: every row
        table = table.slice(0, int(max_rows))
    return table


def label_matrix(
    prep: Path, dataset: str, folds: Sequence[int], max_rows: int | None = None
) -> np.ndarray:
    """(N, n_au) int8 labels (1, 0, -1 unknown) of the rows in `folds`."""
    table = _select(_read_faces_table(prep, dataset, ["fold", "labels"]), folds, max_rows)
    labels = table["labels"].to_pylist()
    if not labels:
        manifest = read_manifest(prep, dataset)
        return np.zeros((0, len(manifest["au_names"])), np.int8)
    return np.asarray(labels, np.int8)


def always_present_f1(labels: np.ndarray) -> np.ndarray:
    """Per-AU F1 of predicting every AU present: TP = positives, FP = negatives, FN = 0."""
    labels = np.asarray(labels)
    pos = (labels == 1).sum(0).astype(np.float64)
    neg = (labels == 0).sum(0).astype(np.float64)
    denom = 2 * pos + neg
    return np.divide(2 * pos, denom, out=np.zeros_like(pos), where=denom > 0)


def _decode_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """PNG/JPEG bytes -> (B, 200, 200, 3) uint8 RGB; list columns -> dense float arrays."""
    return {
        "image": _decode_images(batch["image"]),
        "landmarks": np.stack([np.asarray(v, np.float32) for v in batch["landmarks"]]),
        "expression": np.stack([np.asarray(v, np.float32) for v in batch["expression"]]),
        "labels": np.stack([np.asarray(v, np.int8) for v in batch["labels"]]),
    }


def face_dataset(
    prep: Path,
    dataset: str,
    folds: Sequence[int],
    *,
    max_rows: int | None = None,
    shuffle_seed: int | None = None,
    cache_decoded: bool = True,
):
    """A Ray Dataset of decoded faces of `folds` (image, landmarks, expression, labels)."""
    import ray.data

    table = _select(_read_faces_table(prep, dataset, [*FACE_COLUMNS, "fold"]), folds, max_rows)
    if table.num_rows == 0:
        raise DataError(f"no preprocessed {dataset} rows in folds {list(folds)}")
    if shuffle_seed is not None:  # a fixed row order per seed, so runs repeat exactly
        order = np.random.default_rng(shuffle_seed).permutation(table.num_rows)
        table = table.take(pa.array(order))
    ds = ray.data.from_arrow(table.select(FACE_COLUMNS)).map_batches(
        _decode_batch, batch_format="numpy", batch_size=64
    )
    return ds.materialize() if cache_decoded else ds


# --------------------------------------------------------------------------- augmentation


def _as_images(images) -> torch.Tensor:
    return torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)


def random_crop_flip(
    images,
    landmarks,
    expression,
    *,
    generator: torch.Generator,
    size: int = CROP_SIZE,
    expr_mirror: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sec. IV-B training augmentation: a random `size` crop and a horizontal flip (p=0.5).

    images (B, H, W, 3) uint8, landmarks (B, 136) interleaved x, y in pixels, expression
    (B, E). Returns x (B, 3, size, size) float in [0, 1], landmarks in crop pixels with the
    iBUG order mirrored on flipped images, and f_exp with left/right blendshapes swapped
    there (`expr_mirror`, see `expression_mirror`).
    """
    imgs = _as_images(images)
    b, h, w = imgs.shape[0], imgs.shape[1], imgs.shape[2]
    lms = torch.as_tensor(landmarks, dtype=torch.float32).reshape(b, 68, 2).clone()
    expr = torch.as_tensor(expression, dtype=torch.float32).clone()
    ox = torch.randint(0, w - size + 1, (b,), generator=generator)
    oy = torch.randint(0, h - size + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    x = torch.empty(b, 3, size, size, dtype=torch.float32)
    for i in range(b):  # per-sample offsets: a view each, no copy of the full image
        crop = imgs[i, oy[i] : oy[i] + size, ox[i] : ox[i] + size]  # (size, size, 3)
        if flip[i]:
            crop = crop.flip(1)
        x[i] = crop.permute(2, 0, 1).float() / 255.0
    lms[..., 0] -= ox[:, None].float()
    lms[..., 1] -= oy[:, None].float()
    if flip.any():
        mirrored = lms[flip][:, torch.as_tensor(IBUG_MIRROR)]  # (F, 68, 2): point k <- mirror
        mirrored[..., 0] = (size - 1) - mirrored[..., 0]
        lms[flip] = mirrored
        if expr_mirror is not None:
            expr[flip] = expr[flip][:, torch.as_tensor(np.asarray(expr_mirror, np.int64))]
    return x, lms.reshape(b, 136), expr


def center_crop(images, landmarks, size: int = CROP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Sec. IV-B evaluation: the centre `size` crop; landmarks shift with it."""
    imgs = _as_images(images)
    h, w = imgs.shape[1], imgs.shape[2]
    oy, ox = (h - size) // 2, (w - size) // 2
    x = imgs[:, oy : oy + size, ox : ox + size].permute(0, 3, 1, 2).float().contiguous() / 255.0
    lms = torch.as_tensor(landmarks, dtype=torch.float32).reshape(-1, 68, 2).clone()
    lms[..., 0] -= ox
    lms[..., 1] -= oy
    return x, lms.reshape(-1, 136)


# --------------------------------------------------------------------------- FEC triplets


def chain_mine(rows: Sequence[tuple[str, str, str, float]]) -> list[tuple[str, str, str, float]]:
    """Sec. III-E hard sample mining on (anchor, positive, negative, margin) image-id rows:
    the readers' `mine_chain_triplets` with image ids standing for faces. Returns only the
    new triplets, with the largest margin of the chain that proves them."""
    from glee.datasets.fec import mine_chain_triplets
    from glee.datasets.records import FaceRef, TripletRecord

    records = [
        TripletRecord(
            faces=tuple(
                FaceRef(url=str(i), left=0.0, right=1.0, top=0.0, bottom=1.0) for i in row[:3]
            ),
            triplet_type="TWO_CLASS_TRIPLET",
            annotations=(3,),
            most_different=3,
            margin=float(row[3]),
        )
        for row in rows
    ]
    out = []
    for t in mine_chain_triplets(records):
        a, p, n = t.anchor_positive_negative
        out.append((a.url, p.url, n.url, float(t.margin)))
    return out


TRIPLET_COLUMNS = ["anchor", "positive", "negative", "triplet_type", "margin", "mined"]


def load_triplets(
    prep: Path,
    *,
    margin_one: float,
    margin_two_three: float,
    chain_mining: bool,
    split: str = "train",
    max_triplets: int | None = None,
    seed: int = 0,
) -> pa.Table:
    """The FEC triplets of `split` with margins by type (Sec. IV-B: one-class `margin_one`,
    two/three-class `margin_two_three`), plus chain-mined triplets (column `mined`)."""
    read_manifest(prep, "fec")
    path = dataset_dir(prep, "fec") / "triplets.parquet"
    if not path.is_file():
        raise DataError(f"{path} is missing: rerun FEC preprocessing")
    table = pq.read_table(path)
    if "split" in table.column_names:
        table = table.filter(pc.equal(table["split"], split))
    elif split != "train":  # a table without splits holds training triplets only
        table = table.slice(0, 0)
    types = table["triplet_type"].to_pylist()
    margins = [
        margin_one
        if t == "ONE_CLASS_TRIPLET"
        else margin_two_three
        if t in ("TWO_CLASS_TRIPLET", "THREE_CLASS_TRIPLET")
        else float(m)
        for t, m in zip(types, table["margin"].to_pylist())
    ]
    rows = list(
        zip(
            table["anchor"].to_pylist(),
            table["positive"].to_pylist(),
            table["negative"].to_pylist(),
            margins,
        )
    )
    mined = chain_mine(rows) if chain_mining else []
    from glee.datasets.fec import CHAIN_TRIPLET

    out = pa.table(
        {
            "anchor": [r[0] for r in rows] + [r[0] for r in mined],
            "positive": [r[1] for r in rows] + [r[1] for r in mined],
            "negative": [r[2] for r in rows] + [r[2] for r in mined],
            "triplet_type": types + [CHAIN_TRIPLET] * len(mined),
            "margin": pa.array([r[3] for r in rows] + [r[3] for r in mined], pa.float32()),
            "mined": [False] * len(rows) + [True] * len(mined),
        }
    )
    if max_triplets and out.num_rows > max_triplets:  # 0 or None: every triplet
        keep = np.sort(
            np.random.default_rng(seed).choice(out.num_rows, max_triplets, replace=False)
        )
        out = out.take(pa.array(keep))
    return out


def triplet_dataset(table: pa.Table):
    """The triplets as a Ray Dataset (ids and margins only; images come from the store)."""
    import ray.data

    return ray.data.from_arrow(table)


class FaceImageStore:
    """Every FEC face, decoded once per worker, by image id."""

    def __init__(self, prep: Path) -> None:
        read_manifest(prep, "fec")
        table = pq.read_table(
            dataset_dir(prep, "fec") / "images", columns=["image_id", "image", "landmarks"]
        )
        decoded = _decode_images(table["image"].to_pylist())
        self.index = {k: i for i, k in enumerate(table["image_id"].to_pylist())}
        self.images = torch.from_numpy(decoded)  # (N, 200, 200, 3) uint8
        self.landmarks = torch.as_tensor(
            np.asarray(table["landmarks"].to_pylist(), np.float32).reshape(len(self.index), -1)
        )

    def __len__(self) -> int:
        return len(self.index)

    def batch(self, ids: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            rows = torch.as_tensor([self.index[str(i)] for i in ids])
        except KeyError as exc:
            raise DataError(
                f"FEC image {exc.args[0]} is in a triplet but not in the images table"
            ) from None
        return self.images[rows], self.landmarks[rows]


def _decode_images(raw: Sequence[bytes]) -> np.ndarray:
    out = []
    for b in raw:
        bgr = cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DataError("a preprocessed FEC image does not decode: rerun preprocessing")
        out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return np.stack(out)
