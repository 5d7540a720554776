"""GLEE-Net training on Ray Train: pretraining on FEC triplets and AU finetuning per fold.

The two per-worker loops, `pretrain_loop` and `finetune_loop`, read everything from their
`config` dict; their Ray calls are the few of Ray's examples: `get_checkpoint` (resume),
`get_dataset_shard`, `prepare_model` (DDP: gloo on CPU, NCCL on GPU) and `report` (rank 0
attaches the checkpoint: model + optimiser + epoch + metric history). Validation counts
are all-reduced across ranks, so every reported metric covers the whole evaluation set.

Resuming after a failure takes the newest complete checkpoint in the run folder, not only
the one Ray Train's controller registered: the controller collects reports when it polls
the workers (every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s), so a worker that dies just
after `report` has uploaded its checkpoint would otherwise restart from the one before.

The driver functions `run_pretrain`, `run_finetune_fold` and `run_finetune` build the Ray
Datasets, start a `TorchTrainer` with an explicit storage path and a `FailureConfig`, and
reuse a finished run whose config hash matches (`done.json` in the run folder).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from glee.files import write_json_atomic, write_text_atomic
from glee.losses import au_class_weights, au_loss, triplet_loss
from glee.metrics import F1Accumulator, f1_table, fold_average, to_markdown, write_f1_table
from glee.model.config import GLEEConfig
from glee.model.glee_net import GLEENet, build_glee_net
from glee_platform import data as gdata
from glee_platform.config import ConfigError, ExperimentConfig
from glee_platform.tracking import (
    EpochLogger,
    read_metrics_csv,
    write_metrics_csv,
)

STATE_FILE = "state.pt"
DONE_FILE = "done.json"
CHECKPOINT_PREFIX = "checkpoint_epoch"  # checkpoint_epoch0003: the state after epoch 3
BRANCH_PREFIXES = ("global_branch.", "local_branch.")  # what pretraining trains (Sec. III-E)


# =========================================================================== worker side


def _worker_setup(config: dict[str, Any]) -> tuple[int, int, torch.device]:
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(config["threads"])))
    torch.manual_seed(int(config["seed"]) * 1000 + rank)
    return rank, world, ray.train.torch.get_device()


def checkpoint_epoch(path: str | Path) -> int:
    """The epoch a `checkpoint_epochNNNN` folder holds; -1 for another name."""
    name = Path(path).name
    digits = name[len(CHECKPOINT_PREFIX) :]
    return int(digits) if name.startswith(CHECKPOINT_PREFIX) and digits.isdigit() else -1


def checkpoints_newest_first(train_dir: str | Path, registered: str | Path | None = None):
    """The complete checkpoints of a Train run folder, newest epoch first, plus `registered`
    (Ray Train's latest). A checkpoint whose upload was cut short has a truncated
    state.pt, which is not a readable zip archive, and is left out."""
    found = set()
    root = Path(train_dir)
    if root.is_dir():
        found = {
            p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if zipfile.is_zipfile(p / STATE_FILE)
        }
    if registered is not None:
        found.add(Path(registered))
    return sorted(found, key=checkpoint_epoch, reverse=True)


def _resume(
    net: nn.Module, optimizer: torch.optim.Optimizer, config: dict[str, Any], rank: int
) -> tuple[int, int, list[dict]]:
    """(start epoch, global step, history) from the newest checkpoint of this run, if any:
    Ray Train's latest registered one, or a newer one its controller had not collected
    when the worker that reported it died (see the module docstring)."""
    import ray.train

    registered = ray.train.get_checkpoint()
    context = registered.as_directory() if registered else contextlib.nullcontext(None)
    with context as reg_dir:
        for path in checkpoints_newest_first(config["checkpoint_root"], reg_dir):
            try:
                state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
            except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
                continue  # unreadable: fall back to the one before
            if rank == 0 and (reg_dir is None or Path(reg_dir) != path):
                print(f"[glee] resuming from {path.name}, which Ray Train had not registered")
            net.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            return int(state["epoch"]) + 1, int(state["global_step"]), list(state["history"])
    return 0, 0, []


def _report(
    metrics: dict[str, Any],
    rank: int,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    global_step: int,
    history: list[dict],
) -> None:
    """ray.train.report on every rank; rank 0 attaches the checkpoint."""
    import ray.train

    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as d:
        state = {
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "global_step": global_step,
            "history": history,
        }
        tmp = Path(d) / f".{STATE_FILE}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, Path(d) / STATE_FILE)
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(d),
            checkpoint_dir_name=f"{CHECKPOINT_PREFIX}{epoch:04d}",
        )


def _maybe_fail(fault: dict[str, Any] | None, epoch: int, step: int, rank: int) -> None:
    """Fault injection: the configured worker exits at (epoch, step) once per experiment."""
    if not fault or (epoch, step, rank) != (fault["epoch"], fault["step"], fault["rank"]):
        return
    marker = Path(fault["marker"])
    if marker.exists():
        return
    write_text_atomic(marker, f"worker rank {rank} exited at epoch {epoch} step {step}\n")
    os._exit(1)


def _my_batches(batches):
    """This rank's share of an unsplit evaluation set: batch i goes to rank i % world.

    Evaluation sets are not split by Ray Data (an equal split drops the remainder rows);
    every row is evaluated exactly once across the ranks.
    """
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    for i, batch in enumerate(batches):
        if i % world == rank:
            yield batch


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if _distributed():
        torch.distributed.all_reduce(t)
    return t


def _sync_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (batch-norm running statistics) on every rank before evaluation.

    Evaluation runs on the module without its DDP wrapper: ranks evaluate different numbers
    of batches (`_my_batches`), and a DDP forward broadcasts buffers, a collective that
    every rank must join, so uneven forwards through DDP hang. Each rank's running
    statistics drift from rank 0's during training; this makes every rank evaluate the
    model that rank 0 checkpoints.
    """
    if _distributed():
        for buf in module.buffers():
            torch.distributed.broadcast(buf, src=0)


class _Embedder(nn.Module):
    """DDP needs a forward: this one is GLEE-Net's expression embedding (Sec. III-B)."""

    def __init__(self, net: GLEENet) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.embed(images)


def _sgd(params, config: dict[str, Any]) -> torch.optim.SGD:
    return torch.optim.SGD(
        list(params),
        lr=config["lr"],
        momentum=config["momentum"],
        weight_decay=config["weight_decay"],
    )


def pretrain_loop(config: dict[str, Any]) -> None:
    """Per-worker pretraining (Sec. III-E, IV-B): triplet loss on E_exp of FEC triplets."""
    import ray.train
    import ray.train.torch

    rank, world, device = _worker_setup(config)
    net = build_glee_net(GLEEConfig.from_dict(config["model"]))
    optimizer = _sgd(net.branch_parameters(), config)
    start_epoch, global_step, history = _resume(net, optimizer, config, rank)
    logger = EpochLogger(config["tb_dir"], config["csv_path"], history, global_step, rank == 0)
    embedder = _Embedder(net)
    model = ray.train.torch.prepare_model(  # DDP for training; `embedder` (same weights) for eval
        embedder, parallel_strategy_kwargs={"find_unused_parameters": True}
    )
    store = gdata.FaceImageStore(Path(config["prep"]))
    generator = torch.Generator().manual_seed(int(config["seed"]) * 7919 + rank)
    train_shard = ray.train.get_dataset_shard("train")
    test_shard = ray.train.get_dataset_shard("test") if config["has_test"] else None
    bs = int(config["batch_size"])

    def embed_triplets(batch: dict[str, np.ndarray], train: bool) -> list[torch.Tensor]:
        ids = [*batch["anchor"], *batch["positive"], *batch["negative"]]
        images, landmarks = store.batch(ids)  # (3B, 200, 200, 3) uint8
        if train:
            x, _, _ = gdata.random_crop_flip(
                images, landmarks, torch.zeros(len(ids), 1), generator=generator
            )
            e = model(x.to(device))  # (3B, 16)
        else:
            x, _ = gdata.center_crop(images, landmarks)
            e = embedder(x.to(device))  # not through DDP: see _sync_buffers
        return list(e.chunk(3))

    for epoch in range(start_epoch, config["epochs"]):
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros(2, dtype=torch.float64)  # (sum, count)
        for step, batch in enumerate(
            train_shard.iter_batches(
                batch_size=bs,
                batch_format="numpy",
                drop_last=True,
                local_shuffle_buffer_size=bs * 20,
                local_shuffle_seed=int(config["seed"]) + 1009 * epoch + rank,
            )
        ):
            _maybe_fail(config.get("fault"), epoch, step, rank)
            a, p, n = embed_triplets(batch, train=True)
            margin = torch.tensor(batch["margin"], dtype=torch.float32, device=device)
            loss = triplet_loss(a, p, n, margin)  # Eq. (4)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            global_step += 1
            loss_sum += torch.tensor([loss.item() * len(margin), len(margin)], dtype=torch.float64)
            logger.step("loss/train_step", loss.item(), global_step)
        _all_reduce(loss_sum)
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": float(loss_sum[0] / loss_sum[1].clamp(min=1)),
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_seconds": time.perf_counter() - t0,
            "start_epoch": start_epoch,  # > 0: this attempt resumed from a checkpoint
        }
        if test_shard is not None:
            metrics.update(_triplet_eval(test_shard, embedder, embed_triplets, config))
        logger.epoch(metrics, global_step)
        _report(metrics, rank, net, optimizer, epoch, global_step, history)
    logger.close()


@torch.no_grad()
def _triplet_eval(shard, model: nn.Module, embed_triplets, config: dict[str, Any]) -> dict:
    """Triplet accuracy on held-out triplets: both similar-pair distances the smallest."""
    _sync_buffers(model)
    model.eval()
    counts = torch.zeros(3, dtype=torch.float64)  # (correct, total, loss sum)
    for batch in _my_batches(
        shard.iter_batches(batch_size=int(config["eval_batch_size"]), batch_format="numpy")
    ):
        a, p, n = embed_triplets(batch, train=False)
        d_ap = (a - p).pow(2).sum(1)
        ok = (d_ap < (a - n).pow(2).sum(1)) & (d_ap < (p - n).pow(2).sum(1))
        margin = torch.tensor(batch["margin"], dtype=torch.float32, device=a.device)
        counts += torch.tensor(
            [ok.sum().item(), len(ok), triplet_loss(a, p, n, margin).item() * len(ok)],
            dtype=torch.float64,
        )
    _all_reduce(counts)
    total = counts[1].clamp(min=1)
    return {"val_triplet_acc": float(counts[0] / total), "val_loss": float(counts[2] / total)}


def load_pretrained_branches(net: GLEENet, checkpoint_dir: str | Path) -> int:
    """Copy the pretrained global/local branch weights into `net`; returns how many tensors."""
    state = torch.load(Path(checkpoint_dir) / STATE_FILE, map_location="cpu", weights_only=True)
    own = net.state_dict()
    picked = {
        k: v
        for k, v in state["model"].items()
        if k.startswith(BRANCH_PREFIXES) and k in own and own[k].shape == v.shape
    }
    if not picked:
        raise ValueError(
            f"the pretraining checkpoint {checkpoint_dir} has no branch weights that fit this "
            "model: pretrain with the same model preset, or set finetune.init=none"
        )
    net.load_state_dict(picked, strict=False)
    return len(picked)


def finetune_loop(config: dict[str, Any]) -> None:
    """Per-worker AU finetuning (Sec. III-D, IV-B): weighted BCE on initial + final logits."""
    import ray.train
    import ray.train.torch

    rank, world, device = _worker_setup(config)
    net = build_glee_net(GLEEConfig.from_dict(config["model"]))
    if config.get("init_checkpoint"):
        load_pretrained_branches(net, config["init_checkpoint"])
    optimizer = _sgd([p for p in net.parameters() if p.requires_grad], config)
    start_epoch, global_step, history = _resume(net, optimizer, config, rank)
    logger = EpochLogger(config["tb_dir"], config["csv_path"], history, global_step, rank == 0)
    model = ray.train.torch.prepare_model(  # DDP for training; `net` (same weights) for eval
        net, parallel_strategy_kwargs={"find_unused_parameters": True}
    )
    weights = torch.as_tensor(config["au_weights"], dtype=torch.float32, device=device)
    mirror = np.asarray(config["expr_mirror"], np.int64)
    au_names = list(config["au_names"])
    generator = torch.Generator().manual_seed(int(config["seed"]) * 7919 + rank)
    train_shard = ray.train.get_dataset_shard("train")
    eval_shard = ray.train.get_dataset_shard("eval")
    bs = int(config["batch_size"])

    for epoch in range(start_epoch, config["epochs"]):
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros(2, dtype=torch.float64)
        for step, batch in enumerate(
            train_shard.iter_torch_batches(
                batch_size=bs,
                drop_last=True,
                local_shuffle_buffer_size=bs * 20,
                local_shuffle_seed=int(config["seed"]) + 1009 * epoch + rank,
            )
        ):
            _maybe_fail(config.get("fault"), epoch, step, rank)
            x, _, f_exp = gdata.random_crop_flip(
                batch["image"],
                batch["landmarks"],
                batch["expression"],
                generator=generator,
                expr_mirror=mirror,
            )
            labels = batch["labels"].to(device)
            initial, final = model(x.to(device), f_exp.to(device))
            loss = au_loss(initial, final, labels, weights)  # Sec. III-D
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            global_step += 1
            loss_sum += torch.tensor([loss.item() * len(labels), len(labels)], dtype=torch.float64)
            logger.step("loss/train_step", loss.item(), global_step)
        _all_reduce(loss_sum)
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": float(loss_sum[0] / loss_sum[1].clamp(min=1)),
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_seconds": time.perf_counter() - t0,
            "start_epoch": start_epoch,  # > 0: this attempt resumed from a checkpoint
        }
        last = epoch == config["epochs"] - 1
        if last or (epoch + 1) % int(config["eval_every"]) == 0:
            metrics.update(_au_eval(eval_shard, net, weights, au_names, config, device))
        logger.epoch(metrics, global_step)
        _report(metrics, rank, net, optimizer, epoch, global_step, history)
    logger.close()


@torch.no_grad()
def _au_eval(shard, model, weights, au_names, config, device) -> dict[str, Any]:
    """Per-AU F1 of the final predictions on the whole evaluation set (all ranks' counts)."""
    _sync_buffers(model)
    model.eval()
    acc = F1Accumulator(len(au_names))
    loss_sum = torch.zeros(2, dtype=torch.float64)
    for batch in _my_batches(shard.iter_torch_batches(batch_size=int(config["eval_batch_size"]))):
        x, _ = gdata.center_crop(batch["image"], batch["landmarks"])  # Sec. IV-B: centre crop
        labels = batch["labels"].to(device)
        initial, final = model(x.to(device), batch["expression"].to(device))
        acc.update(final.cpu(), labels.cpu())
        n = len(labels)
        loss_sum += torch.tensor(
            [au_loss(initial, final, labels, weights).item() * n, n], dtype=torch.float64
        )
    state = _all_reduce(acc.state().clone())
    _all_reduce(loss_sum)
    total = F1Accumulator(len(au_names))
    total.merge(state)
    f1 = total.f1()
    out: dict[str, Any] = {
        "val_loss": float(loss_sum[0] / loss_sum[1].clamp(min=1)),
        "val_mean_f1": float(f1.mean()),
        "val_count": int(loss_sum[1]),
    }
    out.update({f"val_f1_{name}": float(v) for name, v in zip(au_names, f1)})
    return out


# =========================================================================== driver side


@dataclass
class RunResult:
    """A finished Train run: its folder, latest checkpoint folder and metric history."""

    name: str
    path: Path
    checkpoint: Path
    history: list[dict[str, Any]]
    reused: bool = False
    seconds: float = 0.0

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1]


@dataclass
class FinetuneResult:
    au_names: list[str]
    folds: dict[int, RunResult]
    per_fold_f1: dict[int, np.ndarray]
    baseline_f1: dict[int, np.ndarray] = field(default_factory=dict)  # always-present

    @property
    def mean_f1(self) -> np.ndarray:
        return fold_average(list(self.per_fold_f1.values()))

    def table(self):
        rows = {f"fold{k}": v for k, v in sorted(self.per_fold_f1.items())}
        rows["mean"] = self.mean_f1
        return f1_table(rows, self.au_names)


_connected_to: str | None = None  # the address ensure_ray connected to; "local": started here


def ensure_ray(num_cpus: int | None = None, address: str | None = None) -> None:
    """Connect to Ray once: `address` ("auto", "ray://host:10001", "host:6379"), else
    RAY_ADDRESS; "local" or neither starts a local Ray with `num_cpus` (None: all cores).
    A session that is already running is used as it is."""
    global _connected_to
    import ray
    import ray.data

    if not ray.is_initialized():
        target = (address or os.environ.get("RAY_ADDRESS") or "local").strip()
        if target == "local":
            ray.init(address="local", num_cpus=num_cpus)  # with the dashboard: Train's state API
        else:
            ray.init(address=target)
        _connected_to = target
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def _use_gpu(cfg: ExperimentConfig) -> bool:
    import ray

    if cfg.resources.use_gpu == "auto":
        return ray.cluster_resources().get("GPU", 0) >= 1
    return bool(cfg.resources.use_gpu)


def on_cluster() -> bool:
    """Whether Ray runs on a cluster (which may autoscale) rather than on this machine only."""
    target = _connected_to or os.environ.get("RAY_ADDRESS") or "local"
    return target != "local"


def _check_resources(cfg: ExperimentConfig, use_gpu: bool) -> None:
    import ray

    have = ray.cluster_resources().get("CPU", 0)
    need = cfg.resources.num_workers * cfg.resources.cpus_per_worker
    if need > have and not on_cluster():
        raise ConfigError(
            f"resources: {cfg.resources.num_workers} workers x {cfg.resources.cpus_per_worker} "
            f"CPUs = {need} CPUs but this Ray cluster has {have:g}: lower "
            "resources.num_workers or resources.cpus_per_worker"
        )


def model_config(cfg: ExperimentConfig, num_aus: int) -> GLEEConfig:
    """GLEEConfig of the experiment: preset, then overrides, then the ablation (Table V)."""
    base = GLEEConfig.paper(num_aus) if cfg.model.preset == "paper" else GLEEConfig.tiny(num_aus)
    try:
        d = base.to_dict()
        d.update(cfg.model.overrides)
        return GLEEConfig.from_dict(d).with_ablation(cfg.model.ablation)
    except ValueError as err:
        raise ConfigError(f"model: {err}") from None


def train_dir(cfg: ExperimentConfig, run: str, run_name: str | None = None) -> Path:
    """Ray Train's folder of a run (checkpoints): `<run dir>/<run>`, or
    `<run dir>/<run>/<run_name>` when the Train run is named (Tune trials)."""
    return cfg.run_dir / run / run_name if run_name else cfg.run_dir / run


def _train_config(
    cfg: ExperimentConfig, run: str, gcfg: GLEEConfig, run_name: str | None
) -> dict[str, Any]:
    fault = None
    if cfg.fault.enabled:
        fault = {
            "epoch": cfg.fault.epoch,
            "step": cfg.fault.step,
            "rank": cfg.fault.rank,
            "marker": str(cfg.run_dir / "fault-injected"),
        }
    return {
        "model": gcfg.to_dict(),
        "seed": cfg.seed,
        "threads": cfg.resources.cpus_per_worker,
        "tb_dir": str(cfg.run_dir / "tensorboard" / run),
        "csv_path": str(cfg.run_dir / run / "metrics.csv"),
        "checkpoint_root": str(train_dir(cfg, run, run_name)),
        "fault": fault,
        "prep": str(cfg.prep_dir),
    }


def _prepare_run_dir(path: Path, config_hash: str, reuse: bool) -> dict[str, Any] | None:
    """The done record of a finished run with this hash (if reuse); a folder of another
    config (or any, without reuse) is moved aside. An unfinished run of the same config
    stays: Ray Train resumes it from its latest checkpoint."""
    done = path / DONE_FILE
    if reuse and done.is_file():
        record = json.loads(done.read_text(encoding="utf-8"))
        if record.get("config_hash") == config_hash and Path(record["checkpoint"]).is_dir():
            return record
    if path.exists():
        marker = path / ".config_hash"
        if not reuse or not marker.is_file() or marker.read_text().strip() != config_hash:
            stale = path.with_name(f"{path.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
            print(f"[glee] {path} holds a run of another config: moved to {stale.name}")
            path.rename(stale)
    path.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path / ".config_hash", config_hash + "\n")
    return None


def _fit(
    cfg: ExperimentConfig,
    run: str,
    loop,
    loop_config: dict[str, Any],
    datasets: dict[str, Any],
    config_hash: str,
    run_name: str | None = None,
    callbacks: list[Any] | None = None,
) -> RunResult:
    import ray.train
    from ray.train.torch import TorchTrainer

    # Unnamed: the Train run is `run` under the experiment folder. Named (a Tune trial's id):
    # Ray Train knows it by that name, in a folder of that name inside `run`.
    storage = cfg.run_dir / run if run_name else cfg.run_dir

    use_gpu = _use_gpu(cfg)
    _check_resources(cfg, use_gpu)
    resources = {"CPU": cfg.resources.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.resources.num_workers,
            use_gpu=use_gpu,
            resources_per_worker=resources,
        ),
        run_config=ray.train.RunConfig(
            name=run_name or run,
            storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=cfg.resources.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            callbacks=list(callbacks or []),
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - t0
    # The newest complete checkpoint: a last one uploaded by a worker that then died is
    # newer than Ray's registered one (see the module docstring).
    registered = result.checkpoint.path if result.checkpoint is not None else None
    found = checkpoints_newest_first(train_dir(cfg, run, run_name), registered)
    if not found:
        raise RuntimeError(f"Train run {run} finished without a checkpoint in {storage}")
    checkpoint = found[0]
    state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)
    history = list(state["history"])
    write_json_atomic(
        cfg.run_dir / run / DONE_FILE,
        {"config_hash": config_hash, "checkpoint": str(checkpoint), "seconds": seconds},
    )
    return RunResult(run, cfg.run_dir / run, checkpoint, history, False, seconds)


def _reused(cfg: ExperimentConfig, run: str, record: dict[str, Any]) -> RunResult:
    path = cfg.run_dir / run
    history = [_numeric(r) for r in read_metrics_csv(path / "metrics.csv")]
    print(f"[glee] {run}: reusing the finished run in {path}")
    return RunResult(run, path, Path(record["checkpoint"]), history, True, 0.0)


def _numeric(row: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        try:
            out[k] = int(v)
        except ValueError:
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = v
    return out


def pretrain_hash(cfg: ExperimentConfig) -> str:
    """What determines a pretraining checkpoint: data, model, pretrain section, seed."""
    return cfg.hash("data", "model", "pretrain", "seed")


def run_pretrain(
    cfg: ExperimentConfig,
    reuse: bool = True,
    *,
    run_name: str | None = None,
    callbacks: list[Any] | None = None,
) -> RunResult:
    """Pretrain the global and local branches on FEC triplets (Sec. III-E) on Ray Train.

    `run_name` names the Ray Train run (e.g. from a Tune trial id); `callbacks` are Ray
    Train `UserCallback`s (e.g. `ray.tune.integration.ray_train.TuneReportCallback`).
    """
    ensure_ray()
    run = "pretrain"
    config_hash = pretrain_hash(cfg)
    record = _prepare_run_dir(cfg.run_dir / run, config_hash, reuse)
    if record is not None:
        return _reused(cfg, run, record)
    # The head is not pretrained; its size only has to match the finetuning dataset's.
    num_aus = 12
    if gdata.is_preprocessed(cfg.prep_dir, cfg.data.dataset):
        num_aus = len(gdata.read_manifest(cfg.prep_dir, cfg.data.dataset)["au_names"])
    gcfg = model_config(cfg, num_aus)
    if not gcfg.has_embedding:
        raise ConfigError(
            f"model.ablation={cfg.model.ablation!r} has no global or local branch: nothing "
            "to pretrain; set finetune.init=none"
        )
    p = cfg.pretrain
    margins = {
        "margin_one": p.margin_one,
        "margin_two_three": p.margin_two_three,
        "chain_mining": p.chain_mining,
    }
    train = gdata.load_triplets(
        cfg.prep_dir, split="train", max_triplets=p.max_triplets, seed=cfg.seed, **margins
    )
    test = gdata.load_triplets(
        cfg.prep_dir,
        split="test",
        chain_mining=False,
        max_triplets=p.max_triplets,
        margin_one=p.margin_one,
        margin_two_three=p.margin_two_three,
        seed=cfg.seed,
    )
    if train.num_rows < p.batch_size * cfg.resources.num_workers:
        raise ConfigError(
            f"pretrain.batch_size={p.batch_size}: only {train.num_rows} training triplets for "
            f"{cfg.resources.num_workers} worker(s); lower the batch size"
        )
    n_mined = int(np.sum(train["mined"].to_numpy()))
    print(
        f"[glee] pretrain: {train.num_rows} triplets ({n_mined} chain-mined), "
        f"{test.num_rows} held out"
    )
    datasets = {"train": gdata.triplet_dataset(train)}
    if test.num_rows:
        datasets["test"] = gdata.triplet_dataset(test)
    loop_config = _train_config(cfg, run, gcfg, run_name) | {
        "lr": p.lr,
        "momentum": p.momentum,
        "weight_decay": p.weight_decay,
        "batch_size": p.batch_size,
        "eval_batch_size": max(p.batch_size, 32),
        "epochs": p.epochs,
        "has_test": bool(test.num_rows),
    }
    result = _fit(cfg, run, pretrain_loop, loop_config, datasets, config_hash, run_name, callbacks)
    _write_experiment_metrics(cfg)
    return result


def finetune_hash(cfg: ExperimentConfig, fold: int, init: str) -> str:
    return cfg.hash("data", "model", "finetune", "seed")[:8] + f"-f{fold}-" + init[:12]


def training_au_weights(cfg: ExperimentConfig, fold: int) -> torch.Tensor:
    """Sec. IV-B: AU weights from the occurrence ratios of fold `fold`'s training parts only."""
    _, train_folds = gdata.fold_filter(fold, train=True)
    labels = gdata.label_matrix(cfg.prep_dir, cfg.data.dataset, train_folds, cfg.data.max_rows)
    return au_class_weights(labels)


def run_finetune_fold(
    cfg: ExperimentConfig,
    fold: int,
    init_checkpoint: Path | None,
    reuse: bool = True,
    *,
    run_name: str | None = None,
    callbacks: list[Any] | None = None,
) -> tuple[RunResult, np.ndarray]:
    """Finetune on the other two parts, evaluate per-AU F1 on part `fold` (or on all of
    `finetune.eval_dataset` for cross-dataset runs). Returns the run and the baseline F1
    of predicting every AU present on the same evaluation set.

    `run_name` and `callbacks` go to Ray Train as in `run_pretrain`."""
    ensure_ray()
    run = f"fold{fold}"
    ft = cfg.finetune
    init_key = "none"
    if init_checkpoint is not None:
        init_key = hashlib.sha256(str(init_checkpoint).encode()).hexdigest()
    config_hash = finetune_hash(cfg, fold, init_key)
    prep, dataset = cfg.prep_dir, cfg.data.dataset
    manifest = gdata.read_manifest(prep, dataset)
    au_names = list(manifest["au_names"])
    _, train_folds = gdata.fold_filter(fold, train=True)
    eval_dataset = ft.eval_dataset or dataset
    eval_folds = gdata.fold_filter(None if ft.eval_dataset else fold, train=False)[1]
    if eval_dataset != dataset:
        eval_names = list(gdata.read_manifest(prep, eval_dataset)["au_names"])
        if eval_names != au_names:
            raise ConfigError(
                f"finetune.eval_dataset={eval_dataset!r} codes AUs {eval_names}, but "
                f"{dataset} codes {au_names}: cross-dataset evaluation needs the same AU set"
            )
    train_labels = gdata.label_matrix(prep, dataset, train_folds, cfg.data.max_rows)
    eval_labels = gdata.label_matrix(prep, eval_dataset, eval_folds, cfg.data.max_rows)
    baseline = gdata.always_present_f1(eval_labels)
    record = _prepare_run_dir(cfg.run_dir / run, config_hash, reuse)
    if record is not None:
        return _reused(cfg, run, record), baseline
    if len(train_labels) < ft.batch_size * cfg.resources.num_workers:
        raise ConfigError(
            f"finetune.batch_size={ft.batch_size}: fold {fold} has {len(train_labels)} training "
            f"rows for {cfg.resources.num_workers} worker(s); lower the batch size"
        )
    weights = training_au_weights(cfg, fold)
    gcfg = model_config(cfg, len(au_names))
    datasets = {
        "train": gdata.face_dataset(
            prep, dataset, train_folds, max_rows=cfg.data.max_rows, shuffle_seed=cfg.seed
        ),
        "eval": gdata.face_dataset(prep, eval_dataset, eval_folds, max_rows=cfg.data.max_rows),
    }
    loop_config = _train_config(cfg, run, gcfg, run_name) | {
        "lr": ft.lr,
        "momentum": ft.momentum,
        "weight_decay": ft.weight_decay,
        "batch_size": ft.batch_size,
        "eval_batch_size": ft.eval_batch_size,
        "epochs": ft.epochs,
        "eval_every": ft.eval_every,
        "au_names": au_names,
        "au_weights": weights.tolist(),
        "expr_mirror": gdata.expression_mirror(
            gdata.expression_names(manifest), gcfg.expr_dim
        ).tolist(),
        "init_checkpoint": str(init_checkpoint) if init_checkpoint is not None else None,
    }
    result = _fit(cfg, run, finetune_loop, loop_config, datasets, config_hash, run_name, callbacks)
    _write_experiment_metrics(cfg)
    return result, baseline


def run_finetune(
    cfg: ExperimentConfig, init_checkpoint: Path | None, reuse: bool = True
) -> FinetuneResult:
    """All configured folds, then results.md / results.csv / config.yaml in the run folder."""
    au_names = list(gdata.read_manifest(cfg.prep_dir, cfg.data.dataset)["au_names"])
    if cfg.finetune.init == "none" or not model_config(cfg, len(au_names)).uses_pretraining:
        init_checkpoint = None
    folds: dict[int, RunResult] = {}
    f1: dict[int, np.ndarray] = {}
    baseline: dict[int, np.ndarray] = {}
    for k in cfg.finetune.folds:
        folds[k], baseline[k] = run_finetune_fold(cfg, k, init_checkpoint, reuse=reuse)
        f1[k] = np.array([folds[k].final[f"val_f1_{n}"] for n in au_names], np.float64)
        print(f"[glee] fold {k}: mean F1 {100 * f1[k].mean():.1f}")
    result = FinetuneResult(au_names, folds, f1, baseline)
    write_results(cfg, result)
    return result


def write_results(cfg: ExperimentConfig, result: FinetuneResult) -> Path:
    """results.md / results.csv (per fold + mean), config.yaml: the run folder's summary."""
    df = result.table()
    write_f1_table(df, cfg.run_dir / "results.csv")
    base = f1_table(
        {"always-present (mean)": fold_average(list(result.baseline_f1.values()))}, result.au_names
    )
    text = (
        f"# {cfg.name}: per-AU F1 (%) on {cfg.finetune.eval_dataset or cfg.data.dataset}\n\n"
        f"Trained on {cfg.data.dataset}; init: "
        f"{'pretraining' if cfg.finetune.init == 'pretrain' else 'none'}; "
        f"model: {cfg.model.preset} ({cfg.model.ablation}).\n\n"
        + to_markdown(df)
        + "\nBaseline (predict every AU present):\n\n"
        + to_markdown(base)
        + "\n## Config\n\n```yaml\n"
        + cfg.to_yaml()
        + "```\n"
    )
    write_text_atomic(cfg.run_dir / "results.md", text)
    write_config(cfg)
    return cfg.run_dir / "results.md"


def write_config(cfg: ExperimentConfig) -> None:
    write_text_atomic(cfg.run_dir / "config.yaml", cfg.to_yaml())
    write_json_atomic(cfg.run_dir / "config_flat.json", cfg.to_flat())


def _write_experiment_metrics(cfg: ExperimentConfig) -> None:
    """`<run>/metrics.csv`: every Train run's per-epoch metrics, with a `run` column."""
    rows: list[dict[str, Any]] = []
    for name in ["pretrain", *(f"fold{k}" for k in (1, 2, 3))]:
        path = cfg.run_dir / name / "metrics.csv"
        if path.is_file():
            rows += [{"run": name, **r} for r in read_metrics_csv(path)]
    if rows:
        write_metrics_csv(cfg.run_dir / "metrics.csv", rows)


def clear_run(path: Path) -> None:
    """Remove a Train run folder (tests, or a user restarting from scratch)."""
    shutil.rmtree(path, ignore_errors=True)
