"""Training throughput: Ray Train against a plain PyTorch loop, and 2 workers against 1.

Same model (the tiny GLEE-Net preset), same rows (fold 1's training parts of the smoke
config's preprocessed BP4D), same batch size, augmentation, loss and optimisation step
(glee.training.optimisation). Ray Train streams its input from the Parquet shards through
Ray Data (decode, crop and flip beside the workers); the plain loop holds its rows decoded
in memory and crops them in the timed loop. Images per
second count the training steps of an epoch only (no start-up, no evaluation); the first
epoch of every variant is a warm-up and is left out. Each worker gets one CPU and one
torch thread, so does the plain loop, which runs in a process of its own at the
niceness of Ray's workers (Ray starts them at nice 15: on a busy machine a loop at nice 0
would win the comparison by priority, not by speed). The variants run in turn (A B C
A B C), and the ratios are of the medians, measured side by side in this one run; the
load average says how busy the machine was.

python bench/train_throughput.py
python bench/train_throughput.py --rows 384 --epochs 4 --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from glee.datasets.images import decode_images
from glee.model.glee_net import build_glee_net
from glee.training.augmentation import expression_mirror, random_crop_flip, to_model_input
from glee.training.losses import au_loss
from glee.training.optimisation import Optimisation
from glee_platform import train
from glee_platform.config import ExperimentConfig, load_config
from glee_platform.prepared import expression_names, face_split, fold_filter, read_manifest
from glee_platform.session import ensure_ray
from glee_platform.sources import ensure_preprocessed

FOLD = 1


def load_rows(cfg: ExperimentConfig) -> dict[str, np.ndarray]:
    """The rows Ray Train gets (the same shards and folds), decoded, as numpy arrays: the
    plain loop decodes nothing while it is timed."""
    _, folds = fold_filter(FOLD, train=True)
    split = face_split(cfg.prep_dir, cfg.data.dataset, folds, cfg.data.max_rows)
    cols = {"image": [], "landmarks": [], "expression": [], "labels": []}
    for path in split.files:
        table = pq.read_table(path, columns=[*cols, "fold"]).to_pylist()
        for row in table:
            if row["fold"] in folds:
                for k in cols:
                    cols[k].append(row[k])
    return {
        "image": decode_images(cols["image"]),
        "landmarks": np.asarray(cols["landmarks"], np.float32),
        "expression": np.asarray(cols["expression"], np.float32),
        "labels": np.asarray(cols["labels"], np.int8),
    }


def plain_loop(
    cfg: ExperimentConfig, rows: dict[str, np.ndarray], epochs: int, niceness: int
) -> list[float]:
    """The finetuning step of `train.finetune_loop` without Ray: images/s per epoch."""
    os.nice(niceness - os.nice(0))
    torch.set_num_threads(cfg.resources.threads)
    torch.manual_seed(cfg.seed)
    manifest = read_manifest(cfg.prep_dir, cfg.data.dataset)
    gcfg = train.model_config(cfg, len(manifest["au_names"]))
    net = build_glee_net(gcfg)
    ft = cfg.finetune
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=ft.lr, momentum=ft.momentum, weight_decay=ft.weight_decay
    )
    opt = Optimisation(net, optimizer, cfg.resources.precision, torch.device("cpu"))
    weights = train.training_au_weights(cfg, FOLD)
    mirror = expression_mirror(expression_names(manifest), gcfg.expr_dim)
    rng = np.random.default_rng(cfg.seed)
    n, bs = len(rows["labels"]), ft.batch_size
    out = []
    for epoch in range(epochs):
        net.train()
        order = np.random.default_rng(cfg.seed + epoch).permutation(n)
        t0 = time.perf_counter()
        seen = 0
        for start in range(0, n - bs + 1, bs):  # drop_last, as the Ray loop
            idx = order[start : start + bs]
            crops, _, f_exp = random_crop_flip(
                rows["image"][idx],
                rows["landmarks"][idx],
                rows["expression"][idx],
                rng=rng,
                expr_mirror=mirror,
            )
            x, f = to_model_input(crops), torch.from_numpy(f_exp)
            labels = torch.from_numpy(rows["labels"][idx])
            opt.step(lambda x=x, f=f, labels=labels: au_loss(*net(x, f), labels, weights))
            seen += len(idx)
        out.append(seen / (time.perf_counter() - t0))
    return out


def _plain_in_child(queue, *args) -> None:
    queue.put(plain_loop(*args))


def plain_process(cfg, rows, epochs: int, niceness: int) -> list[float]:
    """`plain_loop` in a fresh process (no Ray in it), at `niceness`."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_plain_in_child, args=(queue, cfg, rows, epochs, niceness))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def _niceness() -> int:
    return os.nice(0)


def ray_worker_niceness() -> int:
    import ray

    return ray.get(ray.remote(num_cpus=0)(_niceness).remote())


def ray_train(cfg: ExperimentConfig, epochs: int, workers: int, storage: Path) -> list[float]:
    """`train.run_finetune_fold` on Ray Train: images/s per epoch from its epoch_seconds."""
    run_cfg = copy.deepcopy(cfg)
    run_cfg.name = f"w{workers}-{time.strftime('%H%M%S')}"
    run_cfg.resources.storage_path = str(storage)
    run_cfg.resources.num_workers = workers
    run, _ = train.run_finetune_fold(run_cfg.check(), FOLD, None, reuse=False)
    n = face_split(cfg.prep_dir, cfg.data.dataset, [2, 3], cfg.data.max_rows).num_rows
    bs = cfg.finetune.batch_size
    per_epoch = (n // workers) // bs * bs * workers  # equal split, drop_last on each shard
    return [per_epoch / h["epoch_seconds"] for h in run.history]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="smoke")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    # 1,024: about a demo fold's training part. At 384 an epoch lasts ~5 s and Ray Data's
    # per-epoch split start is a quarter of it (docs/BENCHMARKS.md).
    parser.add_argument("--rows", type=int, default=1024, help="training rows (data.max_rows)")
    parser.add_argument("--epochs", type=int, default=3, help="per variant, the first a warm-up")
    parser.add_argument("--rounds", type=int, default=2, help="times each variant runs")
    args = parser.parse_args(argv)
    cfg = load_config(
        args.config,
        [
            "finetune.init=none",
            "finetune.folds=[1]",
            f"finetune.epochs={args.epochs}",
            f"finetune.eval_every={args.epochs}",
            f"data.max_rows={args.rows}",
            "resources.cpus_per_worker=1",
            *args.set,
        ],
    )
    # Three logical CPUs on this 2-core machine: two one-CPU workers and the input pipeline
    # that streams their data (the plain loop has its rows decoded in memory).
    ensure_ray(num_cpus=3)
    ensure_preprocessed(cfg, [cfg.data.dataset])
    rows = load_rows(cfg)
    niceness = ray_worker_niceness()
    storage = Path(tempfile.mkdtemp(prefix="bench-train-"))
    speeds: dict[str, list[float]] = {"plain": [], "ray1": [], "ray2": []}
    loads = [os.getloadavg()]
    for r in range(args.rounds):
        for variant in speeds:
            t0 = time.perf_counter()
            if variant == "plain":
                per_epoch = plain_process(cfg, rows, args.epochs, niceness)
            else:
                per_epoch = ray_train(cfg, args.epochs, int(variant[-1]), storage)
            speeds[variant] += per_epoch[1:]  # the first epoch warms up
            print(
                f"round {r + 1} {variant:5s} images/s per epoch "
                + " ".join(f"{v:6.1f}" for v in per_epoch)
                + f"   ({time.perf_counter() - t0:.0f}s wall)   load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
            loads.append(os.getloadavg())
    med = {k: statistics.median(v) for k, v in speeds.items()}
    print()
    print(
        f"model tiny, {len(rows['labels'])} rows, batch {cfg.finetune.batch_size}, "
        f"1 CPU and 1 thread per worker, plain loop at nice {niceness} as Ray's workers"
    )
    for k, v in med.items():
        print(f"{k:5s} median images/s {v:7.1f}   (epochs: {len(speeds[k])})")
    print(f"Ray Train 1 worker / plain PyTorch   {med['ray1'] / med['plain']:.2f}   (goal >= 0.9)")
    print(f"Ray Train 2 workers / 1 worker       {med['ray2'] / med['ray1']:.2f}   (ideal 2.0)")
    print(
        "load average (1, 5, 15 min): start "
        + ", ".join(f"{x:.2f}" for x in loads[0])
        + "; end "
        + ", ".join(f"{x:.2f}" for x in loads[-1])
        + f"; max 1-min {max(x[0] for x in loads):.2f} on {os.cpu_count()} cores"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
