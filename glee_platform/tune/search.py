"""A hyper-parameter search on Ray Tune: Optuna TPE over the triplet margins, both
learning rates and the Transformer classifier; a trial's score is its mean F1 over the folds.

A trial (`glee_platform.tune.trial.run_trial`) pretrains the global and local branches
unless the shared cache already holds a pretraining of the same config, then finetunes
fold 1, 2, 3 in turn (each a Ray Train run) and reports `folds_done` and the running mean
F1 after every fold. `FoldASHA` stops poor trials after a fold; `FoldOptunaSearch` (TPE,
define-by-run space) keeps its study in SQLite. Running the same search again resumes it
with `Tuner.restore`: finished trials are not run again.

Experiment folder (`<storage>/<name>/`):

    tuner.pkl, experiment_state-*.json   Tune's state (resume), search.yaml (what was asked)
    run_trial_<trial id>_.../            Tune's trial folders: params, progress, TensorBoard
    trials/<trial id>/                   the trial's Train runs fold1/, fold2/, ..., results.md
    optuna.db                            the study: optuna-dashboard sqlite:///<...>/optuna.db
    leaderboard.md, leaderboard.csv      every trial: parameters, per-fold F1, mean, status
    best.yaml                            the best trial's config (jobs/finetune.py --config)

Pretraining runs are cached beside it, in `<storage>/pretrain-cache/<hash>/pretrain/`: every
trial of every search in that storage whose pretraining config hashes the same reuses them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from glee.files import write_text_atomic
from glee_platform.config import ConfigError, ExperimentConfig
from glee_platform.resources import gpu_decision, run_cpus
from glee_platform.session import ensure_ray, on_cluster
from glee_platform.sources import ensure_preprocessed, needed_datasets
from glee_platform.train import model_config
from glee_platform.tune.leaderboard import fmt, leaderboard_rows, write_leaderboard
from glee_platform.tune.scheduler import FoldASHA
from glee_platform.tune.searcher import FoldOptunaSearch
from glee_platform.tune.space import PARAMS, SearchSection, SearchSpace, base_values
from glee_platform.tune.trial import (
    CACHE_DIR,
    METRIC,
    TIME_ATTR,
    pinned_paths,
    run_trial,
    trial_config,
)

TRIAL_MEMORY = 256 * 2**20  # bytes reserved for a trial's own actor (it drives Train runs)


def trial_concurrency(search: SearchSection, cfg: ExperimentConfig) -> int:
    """search.max_concurrent_trials, or as many trials as the cluster's CPUs (GPUs) fit."""
    import ray

    if search.max_concurrent_trials:
        return search.max_concurrent_trials
    have = ray.cluster_resources()
    n = int(have.get("CPU", 0) // trial_cpus(search, cfg))
    if gpu_decision(cfg.resources).use_gpu:
        n = min(n, int(have.get("GPU", 0) // cfg.resources.num_workers))
    return max(1, n)


def trial_cpus(search: SearchSection, cfg: ExperimentConfig) -> float:
    """CPUs one running trial holds: its Train workers, its own actor, and one for the
    input pipeline that streams its data."""
    return run_cpus(cfg.resources) + search.trial_cpus


def experiment_dir(cfg: ExperimentConfig) -> Path:
    """`<storage>/<name>/`: Tune's experiment folder of the search."""
    return cfg.run_dir


def cache_dir(cfg: ExperimentConfig) -> Path:
    """`<storage>/pretrain-cache/`: pretraining runs shared by every search in the storage."""
    return Path(cfg.storage_path) / CACHE_DIR


@dataclass
class SearchResult:
    path: Path
    rows: list[dict[str, Any]]  # leaderboard order: complete by mean F1, then pruned, errors
    best: ExperimentConfig | None
    num_folds: int
    seconds: float

    @property
    def pretrain_runs(self) -> int:
        return sum(1 for r in self.rows if r["pretrained"] and not r["pretrain_reused"])

    @property
    def pretrain_reused(self) -> int:
        return sum(1 for r in self.rows if r["pretrained"] and r["pretrain_reused"])

    def summary(self) -> str:
        done = sum(r["status"] == "complete" for r in self.rows)
        pruned = sum(r["status"] == "pruned" for r in self.rows)
        lines = [
            f"{len(self.rows)} trials ({done} complete, {pruned} pruned) in {self.seconds:.0f}s; "
            f"pretraining cache: {self.pretrain_runs} run, {self.pretrain_reused} reused",
        ]
        if self.rows and self.rows[0]["status"] == "complete":
            top = self.rows[0]
            params = ", ".join(f"{k}={fmt(top[k])}" for k in PARAMS if top.get(k) is not None)
            lines.append(f"best: trial {top['trial_id']} mean F1 {top['mean_f1']:.1f} ({params})")
        return "\n".join(lines)


def run_search(search: SearchSection, cfg: ExperimentConfig) -> SearchResult:
    """Run (or resume) the search; write the leaderboard and best.yaml in its folder."""
    import optuna
    from ray import tune

    ensure_ray()
    t0 = time.perf_counter()
    ensure_preprocessed(cfg, needed_datasets(cfg))
    exp = experiment_dir(cfg)
    _check_same_search(exp, search, cfg)
    folds = len(cfg.finetune.folds)
    r = cfg.resources
    if not on_cluster() and trial_cpus(search, cfg) > _local_cpus():
        raise ConfigError(
            f"a trial needs {r.num_workers} x {r.cpus_per_worker} + {search.trial_cpus:g} "
            f"CPUs and one for its input pipeline, but this machine's Ray has "
            f"{_local_cpus():g}: lower resources.num_workers, resources.cpus_per_worker or "
            "search.trial_cpus"
        )
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            base=pinned_paths(cfg),
            experiment_dir=str(exp),
            cache_dir=str(cache_dir(cfg)),
        ),
        # A placement group needs some resource: memory stands in when trial_cpus is 0.
        {"CPU": search.trial_cpus, "memory": TRIAL_MEMORY},
    )
    if tune.Tuner.can_restore(str(exp)):
        print(f"[glee] resuming the search in {exp}")
        tuner = tune.Tuner.restore(str(exp), trainable)
    else:
        exp.mkdir(parents=True, exist_ok=True)
        head = model_config(cfg, 12)
        searcher = FoldOptunaSearch(
            space=SearchSpace(search.space, head.classifier),
            metric=METRIC,
            mode="max",
            time_attr=TIME_ATTR,
            num_folds=folds,
            sampler=optuna.samplers.TPESampler(
                seed=search.seed, n_startup_trials=search.startup_trials
            ),
            study_name=cfg.name,
            storage=f"sqlite:///{exp / 'optuna.db'}",
            points_to_evaluate=[base_values(search, cfg)] if search.start_from_base else None,
        )
        scheduler = FoldASHA(
            folds=cfg.finetune.folds,
            time_attr=TIME_ATTR,
            grace_period=search.grace_period,
            reduction_factor=search.reduction_factor,
        )
        concurrency = trial_concurrency(search, cfg)
        print(f"[glee] search {cfg.name}: {search.num_samples} trials, {concurrency} at a time")
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode="max",
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=search.num_samples,
                max_concurrent_trials=concurrency,
            ),
            run_config=tune.RunConfig(
                name=cfg.name,
                storage_path=cfg.storage_path,
                verbose=1,
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
    grid = tuner.fit()
    rows = leaderboard_rows(grid, exp, folds)
    best = None
    if rows and rows[0]["status"] == "complete":
        best = trial_config(cfg, rows[0], f"{cfg.name}-best", cfg.resources.storage_path)
    write_leaderboard(exp, rows, cfg.finetune.folds, best)
    return SearchResult(exp, rows, best, folds, time.perf_counter() - t0)


def _local_cpus() -> float:
    import ray

    return ray.cluster_resources().get("CPU", 0)


def _check_same_search(exp: Path, search: SearchSection, cfg: ExperimentConfig) -> None:
    """search.yaml records what the folder searches; a different config is refused."""
    text = yaml.safe_dump({"search": search.to_dict(), **cfg.to_dict()}, sort_keys=False)
    record = exp / "search.yaml"
    if record.is_file() and record.read_text(encoding="utf-8") != text:
        raise ConfigError(
            f"{exp} holds a search of another config (see its search.yaml): resume it with "
            "the same config, or give this one another name (--set name=...)"
        )
    write_text_atomic(record, text)
