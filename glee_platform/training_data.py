"""Training and evaluation input on Ray Data, streamed from the preprocessed Parquet shards.

AU faces: `read_parquet` over the split's shards (`glee_platform.prepared.face_split`), the
fold filter, then one `map_batches` that decodes the JPEG/PNG faces of the whole batch (and
takes the Sec. IV-B centre crop for evaluation; `glee.training.augmentation`). The faces
stay uint8 and go to the Train workers block by block: no process holds the dataset, the
driver only its small columns (labels, folds).

Shuffling, per epoch (documented in docs/DESIGN.md): the order of the shards is drawn anew
every epoch (`FileShuffleConfig`, seeded), and each worker mixes the rows of the blocks it
receives in a local buffer of `SHUFFLE_BATCHES` batches (`iter_batches`, seeded per epoch);
a shard holds 32 consecutive frames of one subject and task, so a batch mixes about that
many shards. The training crop and flip run in the worker on the decoded batch (one
vectorised gather) from its seeded generator, so with one worker a seed repeats a run.

FEC triplets: the triplets table (ids and margins; chain-mined triplets added, Sec. III-E)
is the Dataset; `TripletFaces`, a Ray Data actor, reads the three faces of each triplet by
id from their shards (an index of image id -> shard and row, and a bounded cache of
recently read shards) and decodes them.

Evaluation is split between the Train workers without dropping rows (`EvalSplitConfig`):
each rank evaluates its own share, and the counts are all-reduced.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from glee.datasets.images import decode_images
from glee.training.augmentation import CROP_SIZE, center_crop
from glee_platform.prepared import DataError, FaceSplit, dataset_dir, read_manifest

FACE_COLUMNS = ["image", "landmarks", "expression", "labels"]
SHUFFLE_BATCHES = 20  # local shuffle buffer of a worker, in batches
DECODE_BATCH = 64  # rows per decode-and-crop task
SHARD_CACHE_BYTES = 256 * 2**20  # TripletFaces: encoded shards kept per actor
TRIPLET_COLUMNS = ["anchor", "positive", "negative", "triplet_type", "margin", "mined"]
# A TripletFaces actor mostly waits on the trainer; half a CPU lets a training and an
# evaluation pool share the one CPU a 2-core machine leaves beside the Train worker.
TRIPLET_ACTOR_CPUS = 0.5


def _stack(column: Sequence[Any], dtype: Any) -> np.ndarray:
    return np.stack([np.asarray(v, dtype) for v in column])


def face_batch(batch: dict[str, Any], *, center: bool, size: int) -> dict[str, np.ndarray]:
    """The map_batches function of AU faces: decode the batch, centre-crop it for
    evaluation (training crops and flips in the worker, from its seeded generator)."""
    faces = decode_images(list(batch["image"]), "preprocessed face")  # (B, 200, 200, 3)
    landmarks = _stack(batch["landmarks"], np.float32)
    if center:
        faces, landmarks = center_crop(faces, landmarks, size=size)  # (B, size, size, 3)
    return {
        "image": faces,
        "landmarks": landmarks,
        "expression": _stack(batch["expression"], np.float32),
        "labels": _stack(batch["labels"], np.int8),
    }


def face_dataset(split: FaceSplit, *, train: bool, seed: int | None = None, size: int = CROP_SIZE):
    """A streaming Ray Dataset of the split's faces, decoded per batch: image (B, 200, 200,
    3) uint8 for training (the worker crops and flips), the centre crop (B, size, size, 3)
    for evaluation; landmarks (B, 136), expression (B, E), labels (B, n_au). Training sets
    shuffle their shard order every epoch (seeded by `seed`)."""
    import ray.data
    from ray.data.expressions import col

    if not split.files:
        raise DataError(f"no preprocessed {split.dataset} rows in folds {list(split.folds)}")
    shuffle = ray.data.FileShuffleConfig(seed=seed) if train else None
    ds = ray.data.read_parquet(list(split.files), columns=[*FACE_COLUMNS, "fold"], shuffle=shuffle)
    return (
        ds.filter(expr=col("fold").is_in(list(split.folds)))
        .select_columns(FACE_COLUMNS)
        .map_batches(
            face_batch,
            fn_kwargs={"center": not train, "size": size},
            batch_size=DECODE_BATCH,
            batch_format="numpy",
        )
    )


def decoded_once_if_small(ds, split: FaceSplit, what: str, *, limit: int, face_size: int = 200):
    """`ds` materialised (decoded once, kept in Ray's object store) when the split's decoded
    faces fit `limit` bytes, else `ds` unchanged (streamed every epoch); says which."""
    decoded = split.num_rows * face_size * face_size * 3
    mib = decoded / 2**20
    if decoded > limit:
        print(f"[glee] {what}: {split.num_rows} faces ({mib:.0f} MiB decoded) stream each epoch")
        return ds
    print(
        f"[glee] {what}: {split.num_rows} faces decoded once ({mib:.0f} MiB in Ray's object store)"
    )
    # In file order, as the streamed split is (DataConfig preserve_order): otherwise the
    # blocks land in the order their tasks finish and a seed no longer repeats a run.
    ds.context.execution_options.preserve_order = True
    return ds.materialize()


def eval_split_config(train_names: Sequence[str] = ("train",)):
    """A Ray Train DataConfig that splits the training sets equally (DDP needs the same
    number of steps on every rank) and the others without dropping rows, so each rank
    evaluates its own share of every face once. Training sets keep their order (with one
    worker a seed repeats a run exactly)."""
    from ray.train import DataConfig

    class EvalSplitConfig(DataConfig):
        # DataConfig.configure is Ray Train's documented seam for custom splits; its own
        # split is equal=True, which drops the remainder rows of an evaluation set.
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            train = {k: v for k, v in datasets.items() if k in train_names}
            output = super().configure(train, world_size, worker_handles, worker_node_ids, **kwargs)
            for name, ds in datasets.items():
                if name in train:
                    continue
                splits = ds.streaming_split(world_size, equal=False, locality_hints=worker_node_ids)
                for i, part in enumerate(splits):
                    output[i][name] = part
            return output

    ordered = {}
    for name in train_names:
        options = DataConfig.default_ingest_options()
        options.preserve_order = True
        ordered[name] = options
    return EvalSplitConfig(datasets_to_split=list(train_names), execution_options=ordered)


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
    from glee.datasets.fec import CHAIN_TRIPLET

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
    every = rows + mined
    out = pa.table(
        {
            "anchor": [r[0] for r in every],
            "positive": [r[1] for r in every],
            "negative": [r[2] for r in every],
            "triplet_type": types + [CHAIN_TRIPLET] * len(mined),
            "margin": pa.array([r[3] for r in every], pa.float32()),
            "mined": [False] * len(rows) + [True] * len(mined),
        }
    )
    if max_triplets and out.num_rows > max_triplets:  # 0 or None: every triplet
        keep = np.sort(
            np.random.default_rng(seed).choice(out.num_rows, max_triplets, replace=False)
        )
        out = out.take(pa.array(keep))
    return out


class FaceImageIndex:
    """FEC image id -> (shard file, row), and the rows of a shard read on demand with a
    bounded cache of encoded shards (least recently used out first)."""

    def __init__(self, prep: Path, cache_bytes: int = SHARD_CACHE_BYTES) -> None:
        folder = dataset_dir(prep, "fec") / "images"
        self.files = sorted(str(p) for p in folder.glob("part-*.parquet"))
        if not self.files:
            raise DataError(f"no FEC image shards in {folder}: rerun FEC preprocessing")
        self.where: dict[str, tuple[int, int]] = {}
        for f, path in enumerate(self.files):
            ids = pq.read_table(path, columns=["image_id"])["image_id"].to_pylist()
            self.where.update((image_id, (f, r)) for r, image_id in enumerate(ids))
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[int, tuple[list[bytes], np.ndarray]] = OrderedDict()
        self._cached = 0

    def __len__(self) -> int:
        return len(self.where)

    def _shard(self, f: int) -> tuple[list[bytes], np.ndarray]:
        hit = self._cache.get(f)
        if hit is not None:
            self._cache.move_to_end(f)
            return hit
        table = pq.read_table(self.files[f], columns=["image", "landmarks"])
        images = table["image"].to_pylist()
        landmarks = np.asarray(table["landmarks"].to_pylist(), np.float32).reshape(-1, 136)
        self._cache[f] = (images, landmarks)
        self._cached += sum(len(b) for b in images) + landmarks.nbytes
        while self._cached > self.cache_bytes and len(self._cache) > 1:
            _, (old, lms) = self._cache.popitem(last=False)
            self._cached -= sum(len(b) for b in old) + lms.nbytes
        return self._cache[f]

    def encoded(self, ids: Sequence[str]) -> tuple[list[bytes], np.ndarray]:
        """The encoded faces and landmarks (N, 136) of `ids`, in their order."""
        try:
            places = [self.where[str(i)] for i in ids]
        except KeyError as exc:
            raise DataError(
                f"FEC image {exc.args[0]} is in a triplet but not in the images table"
            ) from None
        images: list[bytes] = []
        landmarks = np.empty((len(ids), 136), np.float32)
        for k, (f, r) in enumerate(places):
            shard_images, shard_landmarks = self._shard(f)
            images.append(shard_images[r])
            landmarks[k] = shard_landmarks[r]
        return images, landmarks


class TripletFaces:
    """Ray Data actor: a batch of triplets -> their 3B faces, decoded (and centre-cropped
    for evaluation; training crops and flips in the worker, from its seeded generator).

    Output: image (B, 3, H, W, 3) uint8 (anchor, positive, negative of each triplet) and
    margin (B,).
    """

    def __init__(self, prep: str, center: bool, size: int = CROP_SIZE) -> None:
        self.index = FaceImageIndex(Path(prep))
        self.center = center
        self.size = size

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        b = len(batch["anchor"])
        ids = [*batch["anchor"], *batch["positive"], *batch["negative"]]  # (3B,): a, p, n
        encoded, _ = self.index.encoded(ids)
        faces = decode_images(encoded, "preprocessed FEC face")  # (3B, 200, 200, 3)
        if self.center:
            faces, _ = center_crop(faces, size=self.size)
        faces = faces.reshape(3, b, *faces.shape[1:]).transpose(1, 0, 2, 3, 4)  # (B, 3, ...)
        return {"image": np.ascontiguousarray(faces), "margin": np.asarray(batch["margin"])}


def triplet_dataset(
    table: pa.Table,
    prep: Path,
    *,
    train: bool,
    batch_size: int,
    seed: int = 0,
    actors: int | None = None,
):
    """The triplets streamed through `TripletFaces` actors (at most `actors`, default one
    per CPU of the cluster); for training in an order drawn from `seed` (each worker also
    mixes the batches it receives in a local buffer, drawn anew every epoch)."""
    import ray
    import ray.data

    columns = table.select(["anchor", "positive", "negative", "margin"])
    if train:
        columns = columns.take(pa.array(np.random.default_rng(seed).permutation(len(columns))))
    ds = ray.data.from_arrow(columns)
    most = actors or max(1, int(ray.cluster_resources().get("CPU", 2)))
    return ds.map_batches(
        TripletFaces,
        fn_constructor_kwargs={"prep": str(prep), "center": not train},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=most),
        num_cpus=TRIPLET_ACTOR_CPUS,
    )
