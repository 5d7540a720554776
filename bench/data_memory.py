"""Memory of the driver and of a Train worker as the dataset grows: N against 4N faces.

The bench writes a preprocessed AU faces table and an FEC images table of N and of 4N
rows (200x200 JPEGs, the aligned faces of the real Parquet format; no rendering) and runs,
each in a fresh driver process, one real finetuning epoch (fold 1: train on parts 2+3,
evaluate part 1) and one real pretraining epoch (every FEC image in a triplet, the held-out
tenth evaluated) of the tiny GLEE-Net through Ray Train, with the streaming input of
glee_platform.training_data (`resources.decoded_once_mib=0`: the training split streams
at both sizes, as every split of a full-size dataset does). It reads the driver's and the
Train worker's peak RSS (VmHWM; the worker's reported in the run's metrics) and the peak
of each kind of their resident memory, sampled every 50 ms (glee_platform.tracking.
MemoryPeaks): private (RssAnon), and the shared memory the worker maps (RssShmem: pages of
Ray's object store it reads blocks from without a copy; the node's object store holds
them, up to its configured size, not the process). It prints, per process and run,

    growth_share = (peak at 4N - peak at N) / (decoded bytes at 4N - decoded bytes at N)

the share of what the dataset adds that a process holds (goal <= 0.1). 4N is sized so its
decoded faces exceed 2 GB (4N * 200 * 200 * 3 bytes). The last line is the worst private
memory; the line before it the worst VmHWM, which counts the mapped object store pages.

python bench/data_memory.py                 # N = 4,500, 4N = 18,000 (2.16 GB decoded)
python bench/data_memory.py --n 600         # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
# what the child reports -> (the table's name for it, which worst-case line it counts in)
PROCESSES = {
    "driver": ("driver peak RSS (VmHWM)", "rss"),
    "worker": ("Train worker peak RSS (VmHWM)", "rss"),
    "driver_anon": ("driver private (RssAnon)", "private"),
    "worker_anon": ("Train worker private (RssAnon)", "private"),
    "worker_shmem": ("Train worker shared memory mapped (RssShmem)", ""),
}
FACE = 200
SHARD = 32
AUS = ["AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU14", "AU15", "AU17", "AU23", "AU24"]


def _faces(n: int, rng: np.random.Generator) -> list[bytes]:
    """n distinct 200x200 JPEGs of face-like smooth content (~8-12 KB each)."""
    out = []
    yy, xx = np.mgrid[0:FACE, 0:FACE].astype(np.float32) / FACE
    for _ in range(n):
        a = rng.uniform(0.5, 1.5, 6)
        img = np.stack(
            [
                128 + 60 * np.sin(6 * a[k] * xx + 5 * a[k + 3] * yy + rng.uniform(0, 6))
                for k in range(3)
            ],
            -1,
        )
        img += rng.normal(0, 12, img.shape)
        ok, buf = cv2.imencode(".jpg", np.clip(img, 0, 255).astype(np.uint8))
        assert ok
        out.append(buf.tobytes())
    return out


def write_tables(prep: Path, n: int, seed: int = 0) -> None:
    """bp4d faces (n rows, folds 1-3) and fec images (n) + triplets covering every image."""
    rng = np.random.default_rng(seed)
    faces = prep / "bp4d" / "faces"
    faces.mkdir(parents=True, exist_ok=True)
    for s in range(0, n, SHARD):
        k = min(SHARD, n - s)
        table = pa.table(
            {
                "dataset": ["bp4d"] * k,
                "subject": [f"S{(s // SHARD) % 30:03d}"] * k,
                "task": ["T1"] * k,
                "frame": pa.array(range(s, s + k), pa.int32()),
                "fold": pa.array([(s // SHARD) % 3 + 1] * k, pa.int8()),
                "image": _faces(k, rng),
                "landmarks": pa.array(
                    rng.uniform(30, 170, (k, 136)).astype(np.float32).tolist(),
                    pa.list_(pa.float32(), 136),
                ),
                "expression": rng.normal(0, 0.3, (k, 51)).astype(np.float32).tolist(),
                "labels": pa.array(
                    (rng.random((k, len(AUS))) < 0.3).astype(np.int8).tolist(), pa.list_(pa.int8())
                ),
            }
        )
        pq.write_table(table, faces / f"part-{s // SHARD:05d}.parquet")
    (prep / "bp4d" / "manifest.json").write_text(
        json.dumps({"dataset": "bp4d", "au_names": AUS, "rows_ok": n, "config": {}})
    )
    images = prep / "fec" / "images"
    images.mkdir(parents=True, exist_ok=True)
    ids = [f"img{i:06d}" for i in range(n)]
    for s in range(0, n, SHARD):
        k = min(SHARD, n - s)
        pq.write_table(
            pa.table(
                {
                    "image_id": ids[s : s + k],
                    "image": _faces(k, rng),
                    "landmarks": pa.array(
                        rng.uniform(30, 170, (k, 136)).astype(np.float32).tolist(),
                        pa.list_(pa.float32(), 136),
                    ),
                }
            ),
            images / f"part-{s // SHARD:05d}.parquet",
        )
    order = rng.permutation(n)
    trips = [ids[i] for i in order[: n - n % 3]]
    t = len(trips) // 3
    kinds = ["ONE_CLASS_TRIPLET", "TWO_CLASS_TRIPLET", "THREE_CLASS_TRIPLET"]
    pq.write_table(
        pa.table(
            {
                "anchor": trips[0::3],
                "positive": trips[1::3],
                "negative": trips[2::3],
                "triplet_type": [kinds[i % 3] for i in range(t)],
                "margin": pa.array([0.1 if i % 3 == 0 else 0.2 for i in range(t)], pa.float32()),
                "split": ["test" if i % 10 == 0 else "train" for i in range(t)],
            }
        ),
        prep / "fec" / "triplets.parquet",
    )
    (prep / "fec" / "manifest.json").write_text(json.dumps({"dataset": "fec", "rows_ok": n}))


def child(prep: Path, mode: str, runs: Path) -> dict:
    """One real epoch in this (fresh) driver process; peak RSS of driver and worker."""
    sys.path.insert(0, str(ROOT))
    from glee_platform.config import load_config
    from glee_platform.session import ensure_ray
    from glee_platform.tracking import MemoryPeaks, peak_rss_bytes
    from glee_platform.train import run_finetune_fold, run_pretrain

    cfg = load_config(
        "smoke",
        [
            "name=mem",
            f"data.prep={prep}",
            "data.synthetic=none",
            f"resources.storage_path={runs}",
            "resources.cpus_per_worker=1",
            "resources.threads_per_worker=2",
            "finetune.init=none",
            "finetune.epochs=1",
            "finetune.batch_size=32",
            "pretrain.epochs=1",
            "pretrain.batch_size=30",
            "pretrain.chain_mining=false",
            "log_every=1000000",
            # every split streams, at N as at 4N: the path of any split over 512 MiB
            # decoded (all of a full-size dataset's); smaller ones are decoded once into
            # the object store, which that budget bounds by construction
            "resources.decoded_once_mib=0",
        ],
    )
    ensure_ray(num_cpus=2)
    memory = MemoryPeaks().start()
    t0 = time.perf_counter()
    if mode == "finetune":
        run, _ = run_finetune_fold(cfg, 1, None, reuse=False)
    else:
        run = run_pretrain(cfg, reuse=False)
    driver = memory.stop()
    return {
        "driver": peak_rss_bytes(),
        "worker": int(run.final["peak_rss_mb"] * 2**20),
        "driver_anon": driver.get("RssAnon", 0),
        "worker_anon": int(run.final.get("peak_rss_anon_mb", 0) * 2**20),
        "worker_shmem": int(run.final.get("peak_rss_shmem_mb", 0) * 2**20),
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4500, help="rows of the small tables (4N too)")
    parser.add_argument("--work", default="", help="folder for the tables (default: a temp dir)")
    parser.add_argument(
        "--child", nargs=3, metavar=("PREP", "MODE", "RUNS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        print(
            "RESULT " + json.dumps(child(Path(args.child[0]), args.child[1], Path(args.child[2])))
        )
        return 0
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-mem-"))
    sizes = {"N": args.n, "4N": 4 * args.n}
    peaks: dict[tuple[str, str, str], int] = {}  # (mode, process, size) -> bytes
    for label, n in sizes.items():
        prep = work / f"prep-{n}"
        if not (prep / "fec" / "triplets.parquet").is_file():
            t0 = time.perf_counter()
            write_tables(prep, n)
            print(f"wrote {n} faces and {n} FEC images in {time.perf_counter() - t0:.0f} s")
        for mode in ("finetune", "pretrain"):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    str(prep),
                    mode,
                    str(work / f"runs-{n}-{mode}"),
                ],
                capture_output=True,
                text=True,
                env={**os.environ, "RAY_ADDRESS": "local"},
                cwd=ROOT,
            )
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if out.returncode or line is None:
                print(out.stdout[-3000:], out.stderr[-3000:])
                return 1
            got = json.loads(line[len("RESULT ") :])
            for key in PROCESSES:
                peaks[(mode, key, label)] = got[key]
            print(
                f"{label:2s} ({n} rows, {n * FACE * FACE * 3 / 2**30:.2f} GiB decoded) {mode:8s} "
                + "  ".join(f"{k} {got[k] / 2**20:.0f} MiB" for k in PROCESSES)
                + f"  ({got['seconds']:.0f} s)",
                flush=True,
            )
    added = (sizes["4N"] - sizes["N"]) * FACE * FACE * 3
    print()
    print("| run | memory | peak at N (MiB) | peak at 4N (MiB) | ratio | growth_share |")
    print("|---|---|---|---|---|---|")
    worst: dict[str, tuple] = {}  # "rss" / "private" -> (share, ratio, mode, process)
    for mode in ("finetune", "pretrain"):
        for key, (what, measure) in PROCESSES.items():
            small, big = peaks[(mode, key, "N")], peaks[(mode, key, "4N")]
            share = (big - small) / added
            print(
                f"| {mode} | {what} | {small / 2**20:.0f} | {big / 2**20:.0f} | "
                f"{big / max(small, 1):.2f} | {share:.4f} |"
            )
            if measure and (measure not in worst or share > worst[measure][0]):
                worst[measure] = (share, big / max(small, 1), mode, what)
    print(f"the dataset added {added / 2**30:.2f} GiB of decoded faces")
    share, ratio, mode, what = worst["rss"]
    print(f"worst peak RSS (VmHWM): {mode} {what}: rss_ratio={ratio:.3f} growth_share={share:.4f}")
    share, ratio, mode, what = worst["private"]
    print(f"worst private memory (RssAnon): {mode} {what}")
    print(f"rss_ratio={ratio:.3f} growth_share={share:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
