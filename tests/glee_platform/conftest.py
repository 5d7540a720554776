"""Shared fixtures of the Ray-layer tests: one Ray session, small preprocessed Parquet sets.

`ray_session` starts Ray once for the whole test session (ray.init costs 10-30 s here) and
shuts it down at the end; every Ray test of the project uses this fixture name.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

TOY_AUS = ["AU1", "AU2", "AU4"]
# Where each toy AU draws its bright square (x0, y0) in the 200x200 face.
TOY_SQUARES = [(40, 40), (110, 40), (75, 110)]


def start_local_ray() -> None:
    """The test session's Ray: three logical CPUs on this two-core machine (two one-CPU
    Train workers and the input pipeline that streams their data), no dashboard."""
    import ray

    # address="local": a bare init would join a cluster another `ray start` on this machine
    # registered in /tmp/ray/ray_current_cluster (the job-submit test starts one)
    ray.init(
        address="local",
        num_cpus=3,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )


@pytest.fixture(scope="session")
def local_ray_starter():
    """`start_local_ray` for fixtures that must stop the session's Ray and start it again."""
    return start_local_ray


@pytest.fixture(scope="session")
def ray_session():
    import ray

    started = False
    if not ray.is_initialized():
        start_local_ray()
        started = True
    yield ray
    if started and ray.is_initialized():
        ray.shutdown()


def toy_face(labels: list[int], rng: np.random.Generator) -> np.ndarray:
    """A 200x200 RGB face whose AU k shows as a bright square where TOY_SQUARES[k] says."""
    img = (rng.random((200, 200, 3)) * 60 + 40).astype(np.uint8)
    for k, on in enumerate(labels):
        if on == 1:
            x, y = TOY_SQUARES[k]
            img[y : y + 50, x : x + 50] = (230, 200, 180)
    return img


def png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def expression(labels: list[int], rng: np.random.Generator) -> list[float]:
    e = rng.normal(0.0, 0.1, 51)
    e[: len(labels)] += np.asarray(labels) == 1
    return e.astype(np.float32).tolist()


def write_toy_au(prep: Path, dataset: str = "bp4d", rows_per_fold: int = 48, seed: int = 0):
    """A preprocessed AU dataset in the agreed Parquet format, with learnable labels."""
    rng = np.random.default_rng(seed)
    out = prep / dataset
    (out / "faces").mkdir(parents=True, exist_ok=True)
    rows = []
    folds = {}
    for fold in (1, 2, 3):
        for i in range(rows_per_fold):
            subject = f"F{fold}{i % 2:02d}"
            folds[subject] = fold
            # AU1 frequent, AU2 medium, AU4 rare; some AU2 labels unknown (-1)
            labels = [int(rng.random() < p) for p in (0.5, 0.35, 0.2)]
            img = toy_face(labels, rng)
            expr = expression(labels, rng)
            if i % 7 == 0:
                labels[1] = -1
            lm = np.stack([rng.uniform(30, 170, 68), rng.uniform(30, 170, 68)], 1).ravel()
            rows.append(
                {
                    "dataset": dataset,
                    "subject": subject,
                    "task": "T1",
                    "frame": i,
                    "fold": fold,
                    "image": png(img),
                    "landmarks": lm.astype(np.float32).tolist(),
                    "pose": [0.0] * 6,
                    "shape": [0.0] * 60,
                    # f_exp carries the AUs too (as a 3DMM fit would), plus noise
                    "expression": expr,
                    "fit_rmse": 1.0,
                    "labels": labels,
                    "intensities": None,
                }
            )
    table = pa.Table.from_pylist(rows).cast(
        pa.schema(
            [
                ("dataset", pa.string()),
                ("subject", pa.string()),
                ("task", pa.string()),
                ("frame", pa.int32()),
                ("fold", pa.int8()),
                ("image", pa.binary()),
                ("landmarks", pa.list_(pa.float32())),
                ("pose", pa.list_(pa.float32())),
                ("shape", pa.list_(pa.float32())),
                ("expression", pa.list_(pa.float32())),
                ("fit_rmse", pa.float32()),
                ("labels", pa.list_(pa.int8())),
                ("intensities", pa.list_(pa.float32())),
            ]
        )
    )
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), out / "faces" / "part-0000.parquet")
    pq.write_table(table.slice(half), out / "faces" / "part-0001.parquet")
    manifest = {
        "dataset": dataset,
        "au_names": TOY_AUS,
        "rows_ok": table.num_rows,
        "rows_failed": 0,
        "config": {},
        "versions": {},
        "folds": folds,
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def write_toy_fec(prep: Path, n_images: int = 60, n_triplets: int = 150, seed: int = 0):
    """A preprocessed FEC set: faces of 3 expression classes; triplets pick 2 of one class."""
    rng = np.random.default_rng(seed)
    out = prep / "fec"
    (out / "images").mkdir(parents=True, exist_ok=True)
    classes = rng.integers(0, 3, n_images)
    images = []
    for i in range(n_images):
        labels = [int(k == classes[i]) for k in range(3)]
        images.append(
            {
                "image_id": f"img{i:03d}",
                "image": png(toy_face(labels, rng)),
                "landmarks": rng.uniform(30, 170, 136).astype(np.float32).tolist(),
                "expression": [0.0] * 51,
                "fit_rmse": 1.0,
            }
        )
    pq.write_table(pa.Table.from_pylist(images), out / "images" / "part-0000.parquet")
    by_class = [np.flatnonzero(classes == k) for k in range(3)]
    trips = []
    for t in range(n_triplets):
        k = int(rng.integers(0, 3))
        a, p = rng.choice(by_class[k], 2, replace=False)
        n = rng.choice(by_class[(k + 1 + int(rng.integers(0, 2))) % 3])
        kind = ["ONE_CLASS_TRIPLET", "TWO_CLASS_TRIPLET", "THREE_CLASS_TRIPLET"][t % 3]
        trips.append(
            {
                "anchor": f"img{a:03d}",
                "positive": f"img{p:03d}",
                "negative": f"img{n:03d}",
                "triplet_type": kind,
                "margin": 0.1 if kind.startswith("ONE") else 0.2,
                "split": "test" if t % 5 == 0 else "train",
            }
        )
    # a chain (a, p; n), (a, n; m), (p, n; m) that proves (a, p; m) (Sec. III-E mining)
    a, p, n, m = (f"img{int(i):03d}" for i in by_class[0][:2].tolist() + by_class[1][:2].tolist())
    for anchor, positive, negative in ((a, p, n), (a, n, m), (p, n, m)):
        trips.append(
            {
                "anchor": anchor,
                "positive": positive,
                "negative": negative,
                "triplet_type": "TWO_CLASS_TRIPLET",
                "margin": 0.2,
                "split": "train",
            }
        )
    pq.write_table(pa.Table.from_pylist(trips), out / "triplets.parquet")
    (out / "manifest.json").write_text(json.dumps({"dataset": "fec", "rows_ok": n_images}))
    return out


@pytest.fixture(scope="session")
def toy_prep(tmp_path_factory) -> Path:
    prep = tmp_path_factory.mktemp("prep")
    write_toy_au(prep, "bp4d")
    write_toy_au(prep, "bp4dplus", rows_per_fold=16, seed=1)
    write_toy_fec(prep)
    return prep
