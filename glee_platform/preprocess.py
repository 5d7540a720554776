"""Preprocessing on Ray Data: reader records -> shards -> actor pool(s) -> Parquet.

Each shard (up to `shard_size` frames of one subject and task) is one Ray Data row, and
`glee.face.pipeline.FacePreprocessor` turns it into face rows and error rows, written as
Parquet atomically. A shard's file is complete or absent, so a rerun with the same
arguments processes only what is missing. When all shards are done the driver writes
errors.parquet, manifest.json and, for FEC, triplets.parquet (DESIGN.md, "Preprocessed
data: Parquet").

Two shapes of the one pipeline:

    num_gpus == 0   ShardWorker actors (1 CPU each): `process` = decode, detection,
                    landmarks, alignment, a batched 3DMM fit, encode, write.
    num_gpus > 0    ShardLandmarks actors (1 CPU + num_gpus GPU each; the device is
                    chosen in the actor: cuda when Ray gave it a GPU) run
                    `find_landmarks`: decode, MTCNN batched over the shard's frames, the
                    landmark backend (FAN batched across frames), the warp to the
                    aligned crop; they pass on each shard as `StagedFaces.to_bytes` (the
                    landmarks and 200 x 200 crops, never the frames, so memory stays
                    bounded by the shards in flight). ShardFit actors (1 CPU each) run
                    `fit_and_align`: the batched fit, encode, write. Both stages are one
                    Ray Data pipeline, so they overlap.

Pool sizes. `num_cpus` given: that many fit actors (a fixed pool when it is the only
stage, every actor started up front so shards spread over nodes; at most that many beside
GPU actors). Not given: every pool starts at one actor and may grow to one per shard
(`ActorPoolStrategy(min_size=1, max_size=shards)`; Ray 2.60 reads max_size=None as
unbounded): Ray Data's actor autoscaler adds actors while they are busy and the cluster
has room, and its cluster autoscaler asks Ray's autoscaler for nodes, so on an
autoscaling cluster the pool grows with the cluster instead of stopping at the CPUs
present when the job started. A `--num-gpus` that no node (running, or of the launcher's
node types) can give stops before the pipeline with one line, where Ray would wait.

Output (AU datasets):   <out>/faces/part-<shard>.parquet, errors.parquet, manifest.json
Output (FEC):           <out>/images/part-<shard>.parquet, triplets.parquet, errors.parquet,
                        manifest.json
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import platform as std_platform
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray

from glee.datasets.records import DATASET_AUS, au_names
from glee.datasets.registry import DATASETS
from glee.face.landmark_error import landmark_error
from glee.face.pipeline import (
    FacePreprocessor,
    PreprocessConfig,
    StagedFaces,
    error_row,
    load_morphable_model,
)
from glee.files import write_json_atomic, write_parquet_atomic
from glee_platform.resources import cluster_node_types
from glee_platform.session import ensure_ray, say

ERROR_SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("subject", pa.string()),
        ("task", pa.string()),
        ("frame", pa.int32()),
        ("input", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
    ]
)
FACE_SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("subject", pa.string()),
        ("task", pa.string()),
        ("frame", pa.int32()),
        ("fold", pa.int8()),
        ("image", pa.binary()),
        ("landmarks", pa.list_(pa.float32(), 136)),  # in the aligned face
        ("image_landmarks", pa.list_(pa.float32(), 136)),  # in the input image, as found
        ("camera", pa.list_(pa.float32(), 3)),  # focal, cx, cy (px) the fit projected with
        ("pose", pa.list_(pa.float32(), 6)),
        ("shape", pa.list_(pa.float32())),
        ("expression", pa.list_(pa.float32())),
        ("fit_rmse", pa.float32()),
        ("labels", pa.list_(pa.int8())),
        ("intensities", pa.list_(pa.float32())),
    ]
)
FEC_IMAGE_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("image", pa.binary()),
        ("landmarks", pa.list_(pa.float32(), 136)),  # in the aligned face
        ("image_landmarks", pa.list_(pa.float32(), 136)),  # in the input image, as found
        ("camera", pa.list_(pa.float32(), 3)),  # focal, cx, cy (px) the fit projected with
        ("pose", pa.list_(pa.float32(), 6)),
        ("shape", pa.list_(pa.float32())),
        ("expression", pa.list_(pa.float32())),
        ("fit_rmse", pa.float32()),
    ]
)
TRIPLET_SCHEMA = pa.schema(
    [
        ("anchor", pa.string()),
        ("positive", pa.string()),
        ("negative", pa.string()),
        ("triplet_type", pa.string()),
        ("margin", pa.float32()),
        ("split", pa.string()),
    ]
)


class PreprocessError(RuntimeError):
    """A user-facing problem (bad root, missing weights, bad option): one line, no traceback."""


@dataclass
class Summary:
    dataset: str
    out: Path
    rows_ok: int
    rows_failed: int
    shards_total: int
    shards_run: int
    seconds: float
    landmarks: str = ""  # the backend that ran
    truth: dict[str, Any] | None = None  # _truth_report, where the dataset has a truth

    def line(self) -> str:
        text = f"{self.rows_ok} ok, {self.rows_failed} failed (see {self.out / 'errors.parquet'})"
        if self.truth:
            t = self.truth
            text += (
                f"; landmarks {self.landmarks} found {100 * t['detection_rate']:.1f}% of the "
                f"faces, {t['mean_px']:.2f} px ({100 * t['mean_iod']:.2f}% IOD) from the truth"
            )
        return text


# -- shards --------------------------------------------------------------------------------
def _shard_id(name: str, items: list[dict]) -> str:
    """Stable across reruns with the same inputs; changes if the shard's inputs change."""
    digest = hashlib.sha1(
        "\n".join(str(it["image"]) for it in items).encode(), usedforsecurity=False
    ).hexdigest()[:8]
    return f"{name}-{digest}"


def _au_items(dataset: str, root: Path, split: str | None) -> tuple[list[dict], list[dict], Any]:
    from glee.datasets.registry import read_dataset

    kwargs = {"split": split} if split else {}
    index = read_dataset(dataset, root, **kwargs)
    items = [
        {
            "dataset": r.dataset,
            "subject": r.subject,
            "task": r.task,
            "frame": int(r.frame),
            "fold": int(r.fold),
            "labels": [int(v) for v in r.labels],
            "intensities": None if r.intensities is None else [float(v) for v in r.intensities],
            "image": r.image,
        }
        for r in index.records
    ]
    skipped = [
        error_row({"dataset": dataset, "image": s.reference}, "read", s.reason)
        for s in index.skipped
    ]
    return items, skipped, index


def _fec_items(root: Path) -> tuple[list[dict], list[dict], list[dict]]:
    """Unique faces of the train and test CSVs as items, and the triplets by face id.

    `root` is an FEC root as jobs/fetch_fec.py leaves it (the CSVs, images/, crops/,
    dead_links.csv) or any folder with the CSVs whose URLs are local files."""
    from glee.datasets.errors import DatasetError
    from glee.datasets.fec import face_key, face_source, read_dead_links, read_fec

    dead = read_dead_links(root)
    faces: dict[str, dict] = {}
    missing: set[str] = set()  # face ids already reported as not on disk
    triplets: list[dict] = []
    skipped: list[dict] = []
    for split in ("train", "test"):
        csv = root / f"faceexp-comparison-data-{split}-public.csv"
        if not csv.is_file():
            continue
        index = read_fec(root, split=split)
        skipped += [
            error_row({"dataset": "fec", "image": s.reference}, "read", s.reason)
            for s in index.skipped
        ]
        for t in index.triplets:
            ids = []
            for ref in t.anchor_positive_negative:
                fid = face_key(ref)
                ids.append(fid)
                if fid in faces or fid in missing:
                    continue
                try:
                    src = face_source(ref, image_root=root, cache_dir=root, dead=dead)
                except DatasetError as exc:
                    missing.add(fid)
                    skipped.append(
                        error_row({"dataset": "fec", "image": ref.url}, "read", str(exc))
                    )
                    continue
                faces[fid] = {
                    "dataset": "fec",
                    "image_id": fid,
                    # landmarks.parquet keys FEC images by the stem of the file read
                    "subject": src.path.stem,
                    "task": "",
                    "frame": 0,
                    "image": str(src.path),
                    "box_norm": list(src.box_norm),
                }
            triplets.append(
                {
                    "anchor": ids[0],
                    "positive": ids[1],
                    "negative": ids[2],
                    "triplet_type": t.triplet_type,
                    "margin": float(t.margin),
                    "split": split,
                }
            )
    if not triplets and not skipped:
        raise PreprocessError(
            f"FEC root {root} has no faceexp-comparison-data-{{train,test}}-public.csv"
        )
    return sorted(faces.values(), key=lambda f: f["image_id"]), triplets, skipped


def make_shards(
    items: list[dict], shard_size: int, group_keys: tuple[str, ...], cut_by: str | None = None
) -> list[dict]:
    """Shards of up to `shard_size` items within each group of `group_keys`.

    `cut_by` (FEC: "image_id"): the items, sorted by that key, are cut where the key's hash
    says (`content_cuts`) instead of every `shard_size` items, and a shard is named by its
    content alone, so adding or removing an image changes the one shard it falls in and
    leaves every other shard, and its finished file, as it was.
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for it in items:
        groups[tuple(it[k] for k in group_keys)].append(it)
    shards = []
    for key in sorted(groups):
        group = groups[key]
        name = "_".join(str(k) for k in key if k != "") or "all"
        if cut_by is not None:
            group = sorted(group, key=lambda it: str(it[cut_by]))
            bounds = content_cuts([str(it[cut_by]) for it in group], shard_size)
            chunks = [(name, group[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        else:
            chunks = [
                (f"{name}-{start // shard_size:04d}", group[start : start + shard_size])
                for start in range(0, len(group), shard_size)
            ]
        for label, chunk in chunks:
            shards.append({"shard": _shard_id(label, chunk), "items": json.dumps(chunk)})
    return shards


def content_cuts(keys: list[str], size: int) -> list[int]:
    """Boundaries [0, ..., len(keys)] of content-defined chunks of sorted `keys`: a chunk
    ends after a key whose hash is 0 modulo `size` (chunks of `size` keys on average), or
    at 4 `size` keys. Whether a key ends a chunk depends on that key alone, so an inserted
    key changes only the chunk it lands in (until the next natural cut after a capped one)."""
    bounds = [0]
    for i, key in enumerate(keys):
        h = int.from_bytes(hashlib.sha1(key.encode(), usedforsecurity=False).digest()[:8], "big")
        if h % max(size, 1) == 0 or i + 1 - bounds[-1] >= 4 * size:
            bounds.append(i + 1)
    if bounds[-1] != len(keys):
        bounds.append(len(keys))
    return bounds


# -- the actor -----------------------------------------------------------------------------
class _ShardWriter:
    """What both writing actors share: each shard's rows and errors to its files, the
    counts back to the driver, and the test hook that fails after `fail_after` shards."""

    def __init__(self, out: str, table: str, fail_after: int | None) -> None:
        self.out = Path(out)
        self.table = table
        self.fail_after = fail_after  # test hook: raise after this many shards
        self.done = 0

    def _write(self, shards: Any, results: Any) -> dict:
        """`results`: (rows, errors) of each shard in `shards`, produced as they are asked."""
        ok, failed = [], []
        for shard, (rows, errors) in zip(shards, results):
            write_shard(self.out, self.table, str(shard), rows, errors)
            ok.append(len(rows))
            failed.append(len(errors))
            self.done += 1
            if self.fail_after is not None and self.done >= self.fail_after:
                raise RuntimeError(f"injected failure after {self.done} shard(s)")
        return {"shard": list(shards), "ok": ok, "failed": failed}


class ShardWorker(_ShardWriter):
    """One per actor: the landmark backend, detector and morphable model load once here."""

    def __init__(self, cfg: dict, root: str, out: str, table: str, fail_after: int | None = None):
        import cv2

        cv2.setNumThreads(1)
        self.pre = FacePreprocessor(PreprocessConfig(**cfg), dataset_root=root)
        # One thread for the networks (FAN, MTCNN) on this actor's one CPU. Provided landmarks
        # load no network, and importing torch only to set this costs ~1.5 s per actor.
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)
        super().__init__(out, table, fail_after)

    def __call__(self, batch: dict) -> dict:
        items = (self.pre.process(json.loads(i)) for i in batch["items"])
        return self._write(batch["shard"], items)


class ShardLandmarks:
    """The GPU stage, one per actor: `find_landmarks` on each shard (decode, detection,
    landmarks, the warp to the aligned crop), passed on as bytes."""

    def __init__(self, cfg: dict, root: str):
        import cv2

        cv2.setNumThreads(1)
        config = PreprocessConfig(**cfg)
        # Ray sets CUDA_VISIBLE_DEVICES to the GPUs it assigned this actor: none -> CPU.
        device = config.device or ("cuda" if ray.get_gpu_ids() else "cpu")
        if config.landmarks != "provided":  # MTCNN (and FAN) run here: torch on one thread
            import torch

            torch.set_num_threads(1)
        self.pre = FacePreprocessor(replace(config, device=device), dataset_root=root)

    def __call__(self, batch: dict) -> dict:
        staged = [self.pre.find_landmarks(json.loads(items)) for items in batch["items"]]
        return {"shard": list(batch["shard"]), "staged": [s.to_bytes() for s in staged]}


class ShardFit(_ShardWriter):
    """The CPU stage, one per actor: `fit_and_align` on each staged shard, then its file."""

    def __init__(self, cfg: dict, out: str, table: str, fail_after: int | None = None):
        import cv2

        cv2.setNumThreads(1)
        self.pre = FacePreprocessor(PreprocessConfig(**cfg), fit_only=True)
        super().__init__(out, table, fail_after)

    def __call__(self, batch: dict) -> dict:
        staged = (self.pre.fit_and_align(StagedFaces.from_bytes(d)) for d in batch["staged"])
        return self._write(batch["shard"], staged)


def write_shard(out: Path, table: str, shard: str, rows: list[dict], errors: list[dict]) -> None:
    """Errors first, faces last: a faces file on disk means the whole shard is done."""
    schema = FEC_IMAGE_SCHEMA if table == "images" else FACE_SCHEMA
    err_dir, row_dir = out / "errors", out / table
    err_dir.mkdir(parents=True, exist_ok=True)
    row_dir.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(
        err_dir / f"{shard}.parquet", pa.Table.from_pylist(errors, schema=ERROR_SCHEMA)
    )
    cols = {name: [r.get(name) for r in rows] for name in schema.names}
    write_parquet_atomic(row_dir / f"part-{shard}.parquet", pa.table(cols, schema=schema))


# -- the driver ----------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    out = {"python": std_platform.python_version()}
    for pkg in ("glee-platform", "torch", "ray", "numpy", "opencv-python-headless", "pyarrow"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _pool_size(num_cpus: int | None) -> int:
    if num_cpus:
        return max(1, int(num_cpus))
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def actor_pool(num_cpus: int | None, shards: int, *, fixed: bool = True) -> Any:
    """The `ActorPoolStrategy` of a stage over `shards` shards (module docstring): `num_cpus`
    actors (a fixed pool if `fixed`, else up to that many), or one growing to one per shard."""
    from ray.data import ActorPoolStrategy

    if num_cpus and fixed:
        return ActorPoolStrategy(size=max(1, min(int(num_cpus), shards)))
    top = min(int(num_cpus), shards) if num_cpus else shards
    return ActorPoolStrategy(min_size=1, max_size=max(1, top))


def check_num_gpus(num_gpus: float) -> None:
    """A one-line PreprocessError for a GPU share Ray cannot schedule: negative, or above
    one GPU and not a whole number of them (Ray's rule for fractional requests)."""
    if not np.isfinite(num_gpus) or num_gpus < 0 or (num_gpus > 1 and num_gpus % 1):
        raise PreprocessError(
            f"--num-gpus {num_gpus:g}: give 0 (CPU actors), a share of one GPU (0.25, 0.5, "
            "1) or a whole number of GPUs per actor"
        )


def check_cluster_gpus(num_gpus: float) -> str:
    """Whether the connected cluster can hold an actor of `num_gpus` GPUs: a node that has
    them now, or a launcher node type that gives them (the autoscaler starts it). Returns
    what it found; raises PreprocessError, one line, where Ray would wait forever."""
    live = max((n["Resources"].get("GPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=0.0)
    if live >= num_gpus:
        return f"{ray.cluster_resources().get('GPU', 0):g} GPU(s) in the cluster"
    types = cluster_node_types() or {}
    typed = sorted(n for n, r in types.items() if r.get("GPU", 0.0) >= num_gpus)
    if typed:
        return f"node type(s) {', '.join(typed)} give GPUs: the autoscaler starts them"
    most = max([live, *(r.get("GPU", 0.0) for r in types.values())])
    if most == 0:
        where = "no node has one"
        if types:
            where += f", nor does any of its node types ({', '.join(sorted(types))})"
        raise PreprocessError(
            f"--num-gpus {num_gpus:g} asks for GPUs but the Ray cluster has none: {where}; "
            "pass --num-gpus 0 (resources.preprocess_gpus: 0 in a config) to preprocess on CPU "
            "actors, or add a GPU node type"
        )
    raise PreprocessError(
        f"--num-gpus {num_gpus:g} asks for {num_gpus:g} GPUs per actor but no node of the Ray "
        f"cluster has more than {most:g}: ask for a share of one node's GPUs (e.g. 0.5)"
    )


def _shards_per_call(shards: int, actors: int) -> int:
    """Shards one actor call processes: Ray Data spends ~10-20 ms of actor time around every
    call (a third of a 32-frame shard's time when two actors share two cores), so calls take
    up to 8 shards, while each actor still gets 8 calls or more to balance the load. Each
    shard is written as soon as it is done, so a call that dies loses no finished shard."""
    return max(1, min(8, shards // (8 * max(1, actors))))


def resolve_landmarks(name: str) -> str:
    """The landmark backend `name` runs: 'auto' becomes what `choose_landmark_backend`
    picks (fan when its weights are on disk or downloadable, else dlib), said on the
    terminal; no 68-point backend at all is one line saying how to get one."""
    from glee.face.landmarks import MissingBackendError, choose_landmark_backend

    if name != "auto":
        return name
    try:
        chosen, why = choose_landmark_backend("auto")
    except MissingBackendError as exc:
        raise PreprocessError(str(exc)) from None
    say(f"[glee] landmarks: {chosen} ({why})")
    return chosen


def preprocess_dataset(
    dataset: str,
    root: str | os.PathLike,
    out: str | os.PathLike,
    landmarks: str = "auto",
    num_cpus: int | None = None,
    *,
    split: str | None = None,
    shard_size: int = 32,
    config: PreprocessConfig | None = None,
    progress: bool = True,
    num_gpus: float = 0.0,
    _fail_after_shards: int | None = None,
    _gpu_stage_on_cpu: bool = False,
) -> Summary:
    """Preprocess one dataset into `out` (skipping shards already complete).

    `landmarks` "auto" is resolved here, once, on the driver (FAN when its weights are on
    disk or downloadable, else dlib): every actor runs the same backend, and the manifest
    records which. `num_gpus` > 0: detection and landmarks on actors of that share of a
    GPU, the fit on CPU actors (module docstring); the manifest records it.
    `_gpu_stage_on_cpu` (tests): the two-stage pipeline with its first stage asking for
    no GPU, so it runs on a machine without one."""
    if dataset not in DATASETS:
        raise PreprocessError(f"unknown dataset {dataset!r}: choose one of {list(DATASETS)}")
    check_num_gpus(num_gpus)
    root, out = Path(root).expanduser().resolve(), Path(out).expanduser().resolve()
    if not root.is_dir():
        raise PreprocessError(f"dataset root {root} does not exist: pass --root <{dataset} folder>")
    if shard_size < 1:
        raise PreprocessError(f"shard_size must be >= 1, got {shard_size}")
    cfg = config or PreprocessConfig(landmarks=landmarks)
    t0 = time.perf_counter()

    # Fail fast on the driver for user mistakes (bad root, missing landmarks or weights).
    from glee.datasets.errors import DatasetError
    from glee.face.landmarks import make_landmark_backend

    try:
        cfg = replace(cfg, landmarks=resolve_landmarks(cfg.landmarks))
        make_landmark_backend(cfg.landmarks, dataset_root=root, device="cpu")
        if dataset == "fec":
            items, triplets, read_errors = _fec_items(root)
            table, group_keys, cut_by = "images", (), "image_id"
        else:
            items, read_errors, _ = _au_items(dataset, root, split)
            triplets, table, group_keys, cut_by = [], "faces", ("subject", "task"), None
    except (DatasetError, FileNotFoundError, ValueError) as exc:
        raise PreprocessError(str(exc).splitlines()[0]) from exc
    except Exception as exc:
        if type(exc).__name__ == "MissingWeightsError":
            raise PreprocessError(str(exc).splitlines()[0]) from exc
        raise

    shards = make_shards(items, shard_size, group_keys, cut_by)
    out.mkdir(parents=True, exist_ok=True)
    todo = [s for s in shards if not (out / table / f"part-{s['shard']}.parquet").exists()]
    _remove_stale(out, table, {s["shard"] for s in shards})

    if todo:
        ensure_ray(num_cpus)
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = progress
        per_call = _shards_per_call(len(todo), _pool_size(num_cpus))
        shards_ds = ray.data.from_items(todo, override_num_blocks=len(todo))
        fit_kwargs = {
            "cfg": cfg.to_dict(),
            "out": str(out),
            "table": table,
            "fail_after": _fail_after_shards,
        }
        if num_gpus > 0:
            cpus = ray.cluster_resources().get("CPU", 0)
            if cpus < 2 and not cluster_node_types():
                raise PreprocessError(
                    f"--num-gpus needs 2 CPUs or more (a landmark actor and a fit actor hold "
                    f"one each) and the Ray cluster has {cpus:g}: pass --num-cpus 2 or more"
                )
            if not _gpu_stage_on_cpu:
                say(
                    f"[glee] preprocess: landmarks on {num_gpus:g} GPU per actor "
                    f"({check_cluster_gpus(num_gpus)}), the fit on CPU actors"
                )
            pipeline = shards_ds.map_batches(
                ShardLandmarks,
                fn_constructor_kwargs={"cfg": cfg.to_dict(), "root": str(root)},
                batch_size=per_call,
                compute=actor_pool(None, len(todo)),
                num_cpus=1,
                num_gpus=0 if _gpu_stage_on_cpu else num_gpus,
            ).map_batches(
                ShardFit,
                fn_constructor_kwargs=fit_kwargs,
                batch_size=per_call,
                compute=actor_pool(num_cpus, len(todo), fixed=False),
                num_cpus=1,
            )
        else:
            pipeline = shards_ds.map_batches(
                ShardWorker,
                fn_constructor_kwargs={**fit_kwargs, "root": str(root)},
                batch_size=per_call,
                compute=actor_pool(num_cpus, len(todo)),
                num_cpus=1,
            )
        try:
            results = pipeline.take_all()
        finally:
            # Drop the pipeline now: its actor pool holds CPUs until the Dataset is
            # collected, and a Train run started next in this driver would wait for them.
            del pipeline
            gc.collect()
        assert len(results) == len(todo), "every shard reports once"

    if cfg.fit_mode == "subject" and table == "faces":
        fit_subjects(out, [s["shard"] for s in shards], cfg, num_cpus, progress)
    summary = _finish(
        dataset, out, table, shards, read_errors, triplets, cfg, root, split, num_gpus
    )
    summary.shards_run = len(todo)
    summary.seconds = time.perf_counter() - t0
    return summary


# -- one shape per subject: two more passes over the written shards --------------------------
SHAPES_FILE = "shapes.parquet"
SHAPE_SCHEMA = pa.schema(
    [
        ("subject", pa.string()),
        ("shape", pa.list_(pa.float32())),  # f_s
        ("reg_expression", pa.float64()),  # the f_exp prior of the subject's frames
        ("noise_px", pa.float64()),  # landmark noise the shape pass measured (px, RMS)
    ]
)
FIT_KEY = b"glee.fit"  # a faces shard's Parquet metadata: the fit its rows hold


def _fit_tag(path: Path) -> str:
    meta = pq.read_schema(path).metadata or {}
    return meta.get(FIT_KEY, b"").decode()


def _shapes_tag(shards: list[str]) -> str:
    """Names the shape pass's input: the shard ids, which hash their frames."""
    digest = hashlib.sha1("\n".join(sorted(shards)).encode(), usedforsecurity=False)
    return "subject:" + digest.hexdigest()[:12]


class SubjectShape:
    """Ray Data `map_groups` function: one subject's frames -> its f_s (the shape pass)."""

    def __init__(self, cfg: dict):
        self.cfg = PreprocessConfig(**cfg)
        self.model = load_morphable_model(self.cfg.model_path)

    def __call__(self, group: pd.DataFrame) -> pd.DataFrame:
        from glee.face.fitting import FIT_PRIORS, estimate_shape

        group = group.sort_values(["task", "frame"], kind="stable")
        reg_shape, reg_expression = FIT_PRIORS["subject"]
        est = estimate_shape(
            self.model,
            np.stack(group["image_landmarks"].to_numpy()).reshape(-1, 68, 2),
            np.stack(group["camera"].to_numpy()).astype(np.float64),
            reg_shape=reg_shape,
            reg_expression=reg_expression,
        )
        return pd.DataFrame(
            {
                "subject": [group["subject"].iloc[0]],
                "shape": [est.shape.tolist()],
                "reg_expression": [est.reg_expression],
                "noise_px": [est.noise_px],
            }
        )


class SubjectRefit:
    """Ray Data actor: refits a shard's frames with their subject's shape fixed and rewrites
    the shard (the per-frame pass). Frames whose refit diverges move to the shard's errors."""

    def __init__(self, cfg: dict, out: str, shapes: list[dict], tag: str):
        self.cfg = PreprocessConfig(**cfg)
        self.model = load_morphable_model(self.cfg.model_path)
        self.out, self.tag = Path(out), tag
        self.shapes = {r["subject"]: r for r in shapes}

    def __call__(self, batch: dict) -> dict:
        for shard in batch["shard"]:
            refit_shard(self.out, str(shard), self.model, self.shapes, self.cfg, self.tag)
        return {"shard": list(batch["shard"])}


def refit_shard(
    out: Path,
    shard: str,
    model: Any,
    shapes: dict[str, dict],
    cfg: PreprocessConfig,
    tag: str,
) -> None:
    """Pose and f_exp of every row of one faces shard with its subject's f_s fixed (`shapes`:
    subject -> its shapes.parquet row)
    (`glee.face.fitting.fit_with_shape`), written back atomically with `tag` in the file's
    metadata (errors first, faces last, as `write_shard`)."""
    from glee.face.fitting import fit_with_shape

    path = out / "faces" / f"part-{shard}.parquet"
    table = pq.read_table(path)
    if table.num_rows == 0:
        write_parquet_atomic(path, table.replace_schema_metadata({FIT_KEY: tag.encode()}))
        return
    rows = table.to_pylist()
    subject = rows[0]["subject"]
    lms = np.array([r["image_landmarks"] for r in rows], np.float64).reshape(-1, 68, 2)
    cams = np.array([r["camera"] for r in rows], np.float64)
    known = shapes[subject]
    fit = fit_with_shape(
        model, np.asarray(known["shape"]), lms, cams, reg_expression=known["reg_expression"]
    )
    kept, errors = [], []
    for j, row in enumerate(rows):
        rmse = float(fit.rmse[j])
        if not np.isfinite(rmse) or rmse > cfg.max_fit_rmse:
            item = {**row, "image": f"frame {row['frame']} of {row['subject']}/{row['task']}"}
            reason = f"subject fit diverged: landmark RMSE {rmse:.2f} px > {cfg.max_fit_rmse} px"
            errors.append(error_row(item, "fit", reason))
            continue
        row.update(
            pose=fit.pose[j].astype(np.float32).tolist(),
            shape=fit.shape[j].astype(np.float32).tolist(),
            expression=fit.expression[j].astype(np.float32).tolist(),
            fit_rmse=rmse,
        )
        kept.append(row)
    err_path = out / "errors" / f"{shard}.parquet"
    old_errors = pq.read_table(err_path)
    new_errors = pa.Table.from_pylist(errors, schema=ERROR_SCHEMA)
    write_parquet_atomic(err_path, pa.concat_tables([old_errors, new_errors]))
    faces = pa.Table.from_pylist(kept, schema=FACE_SCHEMA)
    write_parquet_atomic(path, faces.replace_schema_metadata({FIT_KEY: tag.encode()}))


def fit_subjects(
    out: Path, shards: list[str], cfg: PreprocessConfig, num_cpus: int | None, progress: bool
) -> None:
    """One f_s per subject, then every frame refitted with it (fit mode "subject").

    Shape pass: the faces table's landmarks and cameras, grouped by subject in Ray Data
    (`groupby("subject").map_groups`), one `estimate_shape` per subject, written to
    shapes.parquet. Per-frame pass: the shards in parallel on an actor pool
    (`SubjectRefit`). Resumable: shapes.parquet is reused while it names the same shards,
    and a shard whose metadata says it holds this subject fit is not fitted again.
    """
    tag = _shapes_tag(shards)
    files = {s: out / "faces" / f"part-{s}.parquet" for s in shards}
    todo = [s for s in shards if _fit_tag(files[s]) != tag]
    if not todo:
        return
    ensure_ray(num_cpus)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = progress
    shapes_path = out / SHAPES_FILE
    if shapes_path.is_file() and _fit_tag(shapes_path) == tag:
        shapes_table = pq.read_table(shapes_path)
    else:
        say(f"[glee] fit: one shape per subject from {len(shards)} shards")
        columns = ["subject", "task", "frame", "image_landmarks", "camera"]
        ds = ray.data.read_parquet([str(files[s]) for s in shards], columns=columns)
        shapes_ds = ds.groupby("subject").map_groups(
            SubjectShape,
            fn_constructor_kwargs={"cfg": cfg.to_dict()},
            batch_format="pandas",
            compute=actor_pool(num_cpus, len(shards), fixed=False),
            num_cpus=1,
        )
        rows = sorted(shapes_ds.take_all(), key=lambda r: r["subject"])
        del shapes_ds, ds
        rows = [{**r, "shape": [float(v) for v in r["shape"]]} for r in rows]
        shapes_table = pa.Table.from_pylist(rows, schema=SHAPE_SCHEMA)
        shapes_table = shapes_table.replace_schema_metadata({FIT_KEY: tag.encode()})
        write_parquet_atomic(shapes_path, shapes_table)
    shapes = shapes_table.to_pylist()
    pool = _pool_size(num_cpus)
    refit = ray.data.from_items([{"shard": s} for s in todo], override_num_blocks=len(todo))
    refit = refit.map_batches(
        SubjectRefit,
        fn_constructor_kwargs={"cfg": cfg.to_dict(), "out": str(out), "shapes": shapes, "tag": tag},
        batch_size=_shards_per_call(len(todo), pool),
        compute=actor_pool(num_cpus, len(todo), fixed=False),
        num_cpus=1,
    )
    try:
        done = refit.take_all()
    finally:
        del refit
        gc.collect()
    assert len(done) == len(todo), "every shard reports once"


def split_triplets(triplets: list[dict], ok_ids: set[str]) -> tuple[list[dict], list[dict]]:
    """(kept, lost): the triplets whose three faces all preprocessed, and the others, in one
    pass (FEC has 500k triplets: a membership test against the kept list was quadratic)."""
    kept: list[dict] = []
    lost: list[dict] = []
    for t in triplets:
        whole = t["anchor"] in ok_ids and t["positive"] in ok_ids and t["negative"] in ok_ids
        (kept if whole else lost).append(t)
    return kept, lost


def _remove_stale(out: Path, table: str, live: set[str]) -> None:
    """Shards of an earlier run over different inputs would double-count: remove them."""
    for folder, prefix in ((out / table, "part-"), (out / "errors", "")):
        if not folder.is_dir():
            continue
        for f in folder.glob("*.parquet"):
            if f.stem.removeprefix(prefix) not in live:
                f.unlink()


def _finish(
    dataset: str,
    out: Path,
    table: str,
    shards: list[dict],
    read_errors: list[dict],
    triplets: list[dict],
    cfg: PreprocessConfig,
    root: Path,
    split: str | None,
    num_gpus: float = 0.0,
) -> Summary:
    rows_ok = 0
    subject_folds: dict[str, int] = {}
    ok_ids: set[str] = set()
    for s in shards:
        path = out / table / f"part-{s['shard']}.parquet"
        if table == "faces":  # a shard is one subject's task: its footer says enough
            n = pq.read_metadata(path).num_rows
            if n:
                first = json.loads(s["items"])[0]
                subject_folds[first["subject"]] = int(first["fold"])
        else:
            t = pq.read_table(path, columns=["image_id"])
            n = t.num_rows
            ok_ids.update(t["image_id"].to_pylist())
        rows_ok += n
    err_tables = [pa.Table.from_pylist(read_errors, schema=ERROR_SCHEMA)]
    err_tables += [pq.read_table(out / "errors" / f"{s['shard']}.parquet") for s in shards]
    errors = pa.concat_tables(err_tables)

    if table == "images":
        kept, lost = split_triplets(triplets, ok_ids)
        errors = pa.concat_tables(
            [
                errors,
                pa.Table.from_pylist(
                    [
                        error_row(
                            {
                                "dataset": "fec",
                                "image": f"{t['anchor']}|{t['positive']}|{t['negative']}",
                            },
                            "triplet",
                            "a face of this triplet failed preprocessing",
                        )
                        for t in lost
                    ],
                    schema=ERROR_SCHEMA,
                ),
            ]
        )
        write_parquet_atomic(
            out / "triplets.parquet", pa.Table.from_pylist(kept, schema=TRIPLET_SCHEMA)
        )
    write_parquet_atomic(out / "errors.parquet", errors)
    failed = int(sum(1 for st in errors["stage"].to_pylist() if st != "triplet"))
    manifest = {
        "dataset": dataset,
        "au_names": au_names(DATASET_AUS[dataset]) if dataset in DATASET_AUS else [],
        "rows_ok": rows_ok,
        "rows_failed": failed,
        "triplets": len(triplets) if table == "images" else None,
        "config": {**cfg.to_dict(), "root": str(root), "split": split},
        "versions": _versions(),
        "folds": dict(sorted(subject_folds.items())),
        "expression_names": load_morphable_model(cfg.model_path).expression_names,
        "shards": sorted(s["shard"] for s in shards),
        "num_gpus": float(num_gpus),  # GPU share of a landmark actor (0: CPU actors only)
    }
    from glee.face.fitting import FIT_PRIORS

    # FEC's faces are of people it does not name: no subject to share a shape with.
    applied = cfg.fit_mode if table == "faces" else cfg.first_fit_mode
    manifest["fit"] = {
        "mode": applied,
        "reg_shape": FIT_PRIORS[applied][0],
        "reg_expression": FIT_PRIORS[applied][1],
    }
    if table == "images":
        manifest["triplets_kept"] = pq.read_metadata(out / "triplets.parquet").num_rows
    truth = _truth_report(out, table, root) if cfg.landmarks != "provided" else None
    if truth is not None:
        manifest["landmarks_vs_truth"] = truth
    write_json_atomic(out / "manifest.json", manifest)
    return Summary(dataset, out, rows_ok, failed, len(shards), 0, 0.0, cfg.landmarks, truth)


def _truth_report(out: Path, table: str, root: Path) -> dict[str, Any] | None:
    """Detection rate and landmark error against the truth, where the dataset has one (the
    synthetic world's landmarks.parquet: the exact landmarks of every rendered frame)."""
    truth_path = root / "landmarks.parquet"
    if table != "faces" or not truth_path.is_file():
        return None
    keys = ["subject", "task", "frame"]
    found = pads.dataset(out / table, format="parquet").to_table(columns=[*keys, "image_landmarks"])
    truth = pq.read_table(truth_path).to_pandas()
    truth["frame"] = truth["frame"].astype(np.int64)
    got = found.to_pandas()
    got["frame"] = got["frame"].astype(np.int64)
    both = got.merge(truth, on=keys, how="inner")
    if both.empty or len(truth) == 0:
        return None
    xy = np.stack([both[[f"x{i}" for i in range(68)]], both[[f"y{i}" for i in range(68)]]], -1)
    error = landmark_error(np.stack(both["image_landmarks"].to_numpy()).reshape(-1, 68, 2), xy)
    listed = _listed_frames(out, got[keys], truth, keys)
    return {
        "frames": listed,
        "detected": len(both),
        "detection_rate": round(len(both) / max(listed, 1), 4),
        "mean_px": round(error.mean_px, 3),
        "mean_iod": round(error.mean_iod, 5),
    }


def _listed_frames(out: Path, faces: Any, truth: Any, keys: list[str]) -> int:
    """Truth frames that the readers listed (a frame they skipped is not a detection miss):
    the `faces` rows written plus the frames that failed after reading."""
    err = pq.read_table(out / "errors.parquet", columns=[*keys, "stage"]).to_pandas()
    err = err[err["stage"] != "read"]
    seen = pd.concat([faces, err[keys]]).astype({"frame": np.int64}).drop_duplicates()
    return int(len(seen.merge(truth[keys], on=keys, how="inner")))
