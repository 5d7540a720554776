"""Inside a Ray Train worker: the epoch loop that pretraining and finetuning share.

`run_epochs` takes a `Loop` (the model, its optimiser, how a batch becomes a loss, how an
evaluation runs) and does the rest the same way for both: resume from the newest
checkpoint, DDP (`ray.train.torch.prepare_model`: gloo on CPU, NCCL on GPU), the epochs
over this rank's shard of the training set, a progress line every `log_every` steps (the
loop's only host sync), the all-reduced epoch metrics, and `ray.train.report` with rank 0's
checkpoint.

Every tensor handed to a collective goes through `Collectives`, which refuses one that is
not on the training device: NCCL takes CUDA tensors only, so a CPU tensor there would fail
every GPU run at the end of its first epoch. A CPU run checks the same rule.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from glee.files import write_text_atomic
from glee.model.glee_net import GLEENet, checkpoint_state, load_checkpoint_state
from glee.training.optimisation import Optimisation, batch_to_device
from glee_platform.tracking import EpochLogger, MemoryPeaks, peak_rss_bytes
from glee_platform.train.checkpoints import checkpoint_name, newest_readable_state, save_state


@dataclass(frozen=True)
class Worker:
    rank: int
    world: int
    device: torch.device


STEP_LINES_AFTER_S = 60.0  # an epoch longer than this shows its step lines


def _say(text: str) -> None:
    """A line to the job's terminal from a Train worker. Straight to the process's stdout:
    Ray Train 2.60 patches print() on its workers to log the line *and*, where Ray has
    wrapped sys.stdout, print it as well, so every line reached the driver twice."""
    print(text, file=sys.__stdout__, flush=True)


def start_worker(config: dict[str, Any]) -> Worker:
    """This worker's rank, world size and device; torch threads and seed from the config."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(config["threads"])))
    torch.manual_seed(int(config["seed"]) * 1000 + rank)
    return Worker(rank, world, torch.device(ray.train.torch.get_device()))


class Collectives:
    """The process group's all_reduce and broadcast, for tensors on the training device
    only (NCCL's rule, checked on every backend). Without a process group: no-ops."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)

    @staticmethod
    def active() -> bool:
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    def _check(self, t: torch.Tensor, what: str) -> None:
        if t.device != self.device:
            raise RuntimeError(
                f"{what} got a tensor on {t.device} while training runs on {self.device}: "
                "NCCL takes only CUDA tensors; create it on the training device"
            )

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum `t` over the ranks, in place."""
        self._check(t, "all_reduce")
        if self.active():
            torch.distributed.all_reduce(t)
        return t

    def broadcast_buffers(self, module: nn.Module, src: int = 0) -> None:
        """Rank `src`'s buffers (batch-norm running statistics) on every rank.

        Evaluation runs on the module without its DDP wrapper: ranks evaluate different
        numbers of batches, and a DDP forward broadcasts buffers, a collective that every
        rank must join, so uneven forwards through DDP hang. Each rank's running statistics
        drift from rank 0's during training; this makes every rank evaluate the model that
        rank 0 checkpoints."""
        for buf in module.buffers():
            self._check(buf, "broadcast")
            if self.active():
                torch.distributed.broadcast(buf, src=src)


class Sums:
    """Named float64 sums on the training device, all-reduced at the end of an epoch."""

    def __init__(self, names: Iterable[str], device: torch.device) -> None:
        self.names = list(names)
        self.values = torch.zeros(len(self.names), dtype=torch.float64, device=device)

    def add(self, **values: torch.Tensor | float) -> None:
        for name, value in values.items():
            self.values[self.names.index(name)] += value

    def reduced(self, collectives: Collectives) -> dict[str, float]:
        collectives.all_reduce(self.values)
        return dict(zip(self.names, self.values.tolist()))  # host sync: once per epoch


@dataclass
class Loop:
    """What pretraining or finetuning brings to `run_epochs`."""

    name: str  # run name in progress lines ("pretrain", "fold1")
    net: GLEENet  # what the checkpoint holds and evaluation runs
    model: nn.Module  # what DDP wraps for the training forward (net, or a part of it)
    optimizer: Callable[[GLEENet], torch.optim.Optimizer]  # built once the net is on its device
    train_shard: Any  # ray.train.get_dataset_shard("train")
    batch_size: int  # per worker
    loss: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]  # mean over the batch
    evaluate: Callable[[int, Optimisation], dict[str, Any]] | None = None  # epoch -> metrics
    unit: str = "img"  # what `loss` counts: images or triplets
    # numpy batch, generator -> numpy batch: the Sec. IV-B crop and flip, in this worker
    augment: Callable[[dict[str, np.ndarray], np.random.Generator], dict] | None = None


def to_device(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """A numpy batch as tensors on `device` (pinned, non-blocking copies to a GPU)."""
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
    return batch_to_device(tensors, device)


def _maybe_fail(fault: dict[str, Any] | None, epoch: int, step: int, rank: int) -> None:
    """Fault injection: the configured worker exits at (epoch, step) once per experiment."""
    if not fault or (epoch, step, rank) != (fault["epoch"], fault["step"], fault["rank"]):
        return
    marker = Path(fault["marker"])
    if marker.exists():
        return
    write_text_atomic(marker, f"worker rank {rank} exited at epoch {epoch} step {step}\n")
    os._exit(1)


def restore(
    loop: Loop,
    config: dict[str, Any],
    device: torch.device,
    registered: str | Path | None = None,
    rank: int = 0,
) -> tuple[Optimisation, int, int, list[dict]]:
    """The model on `device`, its optimisation, and (start epoch, global step, history)
    from the newest checkpoint of this run, if any: Ray Train's latest registered one
    (`registered`), or a newer one its controller had not collected.

    The model moves to the device first and the optimizer is built on its parameters
    there: the checkpoint (read onto the CPU) then loads into parameters already on the
    device, and the optimizer state follows them."""
    loop.net.to(device)
    opt = Optimisation(loop.net, loop.optimizer(loop.net), config["precision"], device)
    found = newest_readable_state(config["checkpoint_root"], registered)
    if found is None:
        return opt, 0, 0, []
    path, state = found
    if rank == 0 and (registered is None or Path(registered) != path):
        _say(f"[glee] {loop.name}: resuming from {path.name}, which Ray Train had not registered")
    load_checkpoint_state(loop.net, state["model"])
    opt.load_state_dict(state.get("optimisation") or {"optimizer": state["optimizer"]})
    return opt, int(state["epoch"]) + 1, int(state["global_step"]), list(state["history"])


def _report(metrics, worker: Worker, loop: Loop, opt: Optimisation, epoch, step, history):
    """ray.train.report on every rank; rank 0 attaches the checkpoint."""
    import ray.train

    if worker.rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as d:
        state = {
            "model": checkpoint_state(loop.net),  # without a file-backed identity network
            "optimisation": opt.state_dict(),
            "epoch": epoch,
            "global_step": step,
            "history": history,
        }
        save_state(Path(d), state)
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(d),
            checkpoint_dir_name=checkpoint_name(epoch),
        )


def run_epochs(config: dict[str, Any], worker: Worker, loop: Loop) -> None:
    """Resume, then train and report every epoch of `config["epochs"]` (see the module)."""
    import ray.train
    import ray.train.torch

    device = worker.device
    registered = ray.train.get_checkpoint()
    context = registered.as_directory() if registered else contextlib.nullcontext(None)
    with context as reg_dir:
        opt, start_epoch, step, history = restore(loop, config, device, reg_dir, worker.rank)
    logger = EpochLogger(config["tb_dir"], config["csv_path"], history, step, worker.rank == 0)
    memory = MemoryPeaks().start()  # private against mapped (object store) memory
    # Every parameter that requires a gradient takes part in the forward of every variant
    # (tests/glee/model: test_every_variant_uses_all_its_trainable_parameters), so DDP need
    # not search the graph for unused ones.
    model = ray.train.torch.prepare_model(
        loop.model, parallel_strategy_kwargs={"find_unused_parameters": False}
    )
    if config.get("compile"):
        model = torch.compile(model)
    collectives = Collectives(device)
    rng = np.random.default_rng(int(config["seed"]) * 7919 + worker.rank)  # augmentation
    log_every = int(config["log_every"])
    if worker.rank == 0:
        _say(
            f"[glee] {loop.name}: {worker.world} worker(s) on {device.type}, "
            f"{opt.precision}, batch {loop.batch_size} per worker, from epoch {start_epoch}"
        )
    for epoch in range(start_epoch, config["epochs"]):
        model.train()
        t0 = time.perf_counter()
        sums = Sums(["loss", "samples"], device)
        window_t, window_n = time.perf_counter(), 0
        batches = loop.train_shard.iter_batches(
            batch_size=loop.batch_size,
            batch_format="numpy",
            drop_last=True,
            local_shuffle_buffer_size=loop.batch_size * int(config["shuffle_batches"]),
            local_shuffle_seed=int(config["seed"]) + 1009 * epoch + worker.rank,
            prefetch_batches=int(config["prefetch_batches"]),
        )
        for i, batch in enumerate(batches):
            _maybe_fail(config.get("fault"), epoch, i, worker.rank)
            tensors = to_device(loop.augment(batch, rng) if loop.augment else batch, device)
            loss = opt.step(lambda b=tensors: loop.loss(model, b))
            sums.add(loss=loss.double() * loop.batch_size, samples=float(loop.batch_size))
            step += 1
            window_n += loop.batch_size
            if step % log_every == 0:
                value = loss.item()  # the loop's only host sync, once per log interval
                rate = window_n * worker.world / max(time.perf_counter() - window_t, 1e-9)
                logger.step("loss/train_step", value, step)
                if worker.rank == 0:
                    # on the terminal once an epoch makes a person wait; always in the log
                    mark = "[glee] " if time.perf_counter() - t0 > STEP_LINES_AFTER_S else ""
                    _say(
                        f"{mark}{loop.name} epoch {epoch + 1} step {step}: loss {value:.4f}, "
                        f"{rate:.1f} {loop.unit}/s"
                    )
                window_t, window_n = time.perf_counter(), 0
        epoch_sums = sums.reduced(collectives)
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": epoch_sums["loss"] / max(epoch_sums["samples"], 1.0),
            "lr": opt.optimizer.param_groups[0]["lr"],
            "epoch_seconds": time.perf_counter() - t0,
            f"{loop.unit}_per_s": epoch_sums["samples"] / max(time.perf_counter() - t0, 1e-9),
            "start_epoch": start_epoch,  # > 0: this attempt resumed from a checkpoint
        }
        if loop.evaluate is not None:
            collectives.broadcast_buffers(loop.net)
            loop.net.eval()
            with torch.no_grad(), opt.autocast():
                metrics.update(loop.evaluate(epoch, opt))
        metrics["peak_rss_mb"] = peak_rss_bytes() / 2**20  # this worker process so far
        metrics.update(memory.metrics())  # the same peak by kind, since training began
        logger.epoch(metrics, step)
        if worker.rank == 0:
            _say(f"[glee] {loop.name} epoch {epoch + 1}/{config['epochs']}: {_summary(metrics)}")
        _report(metrics, worker, loop, opt, epoch, step, history)
    logger.close()
    memory.stop()


def _summary(metrics: dict[str, Any]) -> str:
    parts = [f"train loss {metrics['train_loss']:.4f}"]
    if "val_mean_f1" in metrics:
        parts.append(f"val F1 {100 * metrics['val_mean_f1']:.1f}")
    if "val_triplet_acc" in metrics:
        parts.append(f"val triplet accuracy {100 * metrics['val_triplet_acc']:.1f}")
    rate = next(v for k, v in metrics.items() if k.endswith("_per_s"))
    return ", ".join(parts) + f", {rate:.1f}/s, {metrics['epoch_seconds']:.1f} s"
