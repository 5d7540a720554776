"""Driver side of a Train run: its folder, reuse by config hash, and the TorchTrainer.

A run folder (`<experiment>/<run>/`) holds Ray Train's checkpoints, the run's metrics.csv,
`.config_hash` and, once finished, `done.json` (config hash, final checkpoint, seconds). A
finished run whose hash matches is reused; an unfinished one of the same config is resumed
by Ray Train from its latest checkpoint; a folder of another config is moved aside.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glee.files import write_json_atomic, write_text_atomic
from glee.model.config import GLEEConfig
from glee_platform.config import ConfigError, ExperimentConfig
from glee_platform.resources import gpu_decision, run_cpus, wait_for_gpus, worker_bundle
from glee_platform.session import on_cluster
from glee_platform.tracking import read_metrics_csv
from glee_platform.train.checkpoints import DONE_FILE, checkpoints_newest_first, read_state

SHUFFLE_BATCHES = 20  # a worker's local shuffle buffer, in batches (training_data)
PREFETCH_BATCHES = 2  # batches the input pipeline keeps ready per worker


_DECISIONS_SAID: set[str] = set()  # GPU decisions this process has printed


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


def model_config(cfg: ExperimentConfig, num_aus: int) -> GLEEConfig:
    """GLEEConfig of the experiment: preset, then overrides, then the ablation (Table V)."""
    base = GLEEConfig.paper(num_aus) if cfg.model.preset == "paper" else GLEEConfig.tiny(num_aus)
    try:
        d = base.to_dict()
        d.update(cfg.model.overrides)
        d["allow_random_init"] = cfg.model.allow_random_init or d["allow_random_init"]
        return GLEEConfig.from_dict(d).with_ablation(cfg.model.ablation)
    except ValueError as err:
        raise ConfigError(f"model: {err}") from None


def train_dir(cfg: ExperimentConfig, run: str, run_name: str | None = None) -> Path:
    """Ray Train's folder of a run (checkpoints): `<run dir>/<run>`, or
    `<run dir>/<run>/<run_name>` when the Train run is named (Tune trials)."""
    return cfg.run_dir / run / run_name if run_name else cfg.run_dir / run


def loop_config(cfg: ExperimentConfig, run: str, gcfg: GLEEConfig, run_name: str | None):
    """What both worker loops read from their config dict (the loop adds its own)."""
    fault = None
    if cfg.fault.enabled:
        fault = {
            "epoch": cfg.fault.epoch,
            "step": cfg.fault.step,
            "rank": cfg.fault.rank,
            "marker": str(cfg.run_dir / "fault-injected"),
        }
    r = cfg.resources
    return {
        "run": run,
        "model": gcfg.to_dict(),
        "seed": cfg.seed,
        "threads": r.threads,
        "precision": r.precision,
        "channels_last": r.channels_last,
        "compile": r.compile,
        "log_every": cfg.log_every,
        "shuffle_batches": SHUFFLE_BATCHES,
        "prefetch_batches": PREFETCH_BATCHES,
        "tb_dir": str(cfg.run_dir / "tensorboard" / run),
        "csv_path": str(cfg.run_dir / run / "metrics.csv"),
        "checkpoint_root": str(train_dir(cfg, run, run_name)),
        "fault": fault,
    }


def prepare_run_dir(path: Path, config_hash: str, reuse: bool) -> dict[str, Any] | None:
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


def check_local_cpus(cfg: ExperimentConfig) -> None:
    """On this machine: the Train workers must leave a CPU to the input pipeline."""
    import ray

    if on_cluster():
        return  # the autoscaler adds nodes
    have = ray.cluster_resources().get("CPU", 0)
    r = cfg.resources
    if run_cpus(r) > have:
        raise ConfigError(
            f"resources: {r.num_workers} workers x {r.cpus_per_worker} CPUs and one for the "
            f"input pipeline need {run_cpus(r):g} of this machine's {have:g}: lower "
            "resources.cpus_per_worker (resources.threads_per_worker sets torch's threads)"
        )


def fit(
    cfg: ExperimentConfig,
    run: str,
    loop,
    loop_cfg: dict[str, Any],
    datasets: dict[str, Any],
    config_hash: str,
    run_name: str | None = None,
    callbacks: list[Any] | None = None,
) -> RunResult:
    """Run `loop` on a TorchTrainer; record done.json; return the run's result."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from glee_platform.training_data import eval_split_config

    # Unnamed: the Train run is `run` under the experiment folder. Named (a Tune trial's id):
    # Ray Train knows it by that name, in a folder of that name inside `run`.
    storage = cfg.run_dir / run if run_name else cfg.run_dir
    r = cfg.resources
    gpu = gpu_decision(r)
    check_local_cpus(cfg)
    if gpu.wait:
        wait_for_gpus(r.num_workers, r.cpus_per_worker, r.gpu_wait_s)
    line = f"{'GPU' if gpu.use_gpu else 'CPU'} ({gpu.reason})"
    if line not in _DECISIONS_SAID:  # once per job: every fold decides the same
        _DECISIONS_SAID.add(line)
        print(f"[glee] {run}: {line}")
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_cfg,
        scaling_config=ray.train.ScalingConfig(
            num_workers=r.num_workers,
            use_gpu=gpu.use_gpu,
            resources_per_worker=worker_bundle(r, gpu.use_gpu),
        ),
        run_config=ray.train.RunConfig(
            name=run_name or run,
            storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=r.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            callbacks=list(callbacks or []),
        ),
        datasets=datasets,
        dataset_config=eval_split_config(["train"]),
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - t0
    # The newest complete checkpoint: a last one uploaded by a worker that then died is
    # newer than Ray's registered one (glee_platform.train.checkpoints).
    registered = result.checkpoint.path if result.checkpoint is not None else None
    found = checkpoints_newest_first(train_dir(cfg, run, run_name), registered)
    if not found:
        raise RuntimeError(f"Train run {run} finished without a checkpoint in {storage}")
    checkpoint = found[0]
    history = list(read_state(checkpoint)["history"])
    write_json_atomic(
        cfg.run_dir / run / DONE_FILE,
        {"config_hash": config_hash, "checkpoint": str(checkpoint), "seconds": seconds},
    )
    return RunResult(run, cfg.run_dir / run, checkpoint, history, False, seconds)


def reused(cfg: ExperimentConfig, run: str, record: dict[str, Any]) -> RunResult:
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
