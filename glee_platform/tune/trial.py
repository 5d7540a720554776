"""One trial of a search (a Tune function trainable): its config, the shared pretraining
cache, and the folds it finetunes in turn, reporting after each."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from glee_platform.config import ExperimentConfig
from glee_platform.prepared import read_manifest
from glee_platform.train import (
    DONE_FILE,
    FinetuneResult,
    RunResult,
    checkpoint_epoch,
    checkpoints_newest_first,
    model_config,
    pretrain_hash,
    run_finetune_fold,
    run_pretrain,
    write_results,
)
from glee_platform.tune.space import HEAD_FIELDS, PARAMS

METRIC = "mean_f1"  # running mean over the finished folds of the per-fold mean F1
TIME_ATTR = "folds_done"
TRIALS_DIR = "trials"
CACHE_DIR = "pretrain-cache"
STARTS_FILE = "starts.txt"  # one line per start of a trial (a restored search restarts some)
# The probe depends on the data and folds only, the same for every trial: a trial's
# results.md says so rather than fitting it again per trial.
TRIAL_PROBE = "not run per search trial (the same for every trial; jobs/finetune.py runs it)"


def pinned_paths(cfg: ExperimentConfig) -> dict[str, Any]:
    """`cfg` as a dict with its data and storage paths made absolute where the driver runs.

    A trial runs in a working directory of Tune's (and, under `ray job submit`, in the
    unpacked working_dir): a relative `data/prep` there is another, empty folder."""
    d = cfg.to_dict()
    d["data"]["root"] = str(cfg.data_root)
    d["data"]["prep"] = str(cfg.prep_dir)
    d["resources"]["storage_path"] = cfg.storage_path
    return d


def trial_config(
    base: ExperimentConfig, params: Mapping[str, Any], name: str, storage: str | Path
) -> ExperimentConfig:
    """The base config with a trial's parameters applied, named `name` under `storage`."""
    d = base.to_dict()
    for key, value in params.items():
        if key not in PARAMS or value is None:  # None: a conditional parameter not drawn
            continue
        section, fld = PARAMS[key]
        if section == "model":
            d["model"]["overrides"][fld] = value
        else:
            d[section][fld] = value
    d["name"] = name
    d["resources"]["storage_path"] = str(storage)
    return ExperimentConfig.from_dict(d)


def pretraining_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """`cfg` as pretraining sees it: the head fields dropped from model.overrides, so trials
    that differ only in the classifier or finetuning hash to the same pretraining."""
    d = cfg.to_dict()
    d["model"]["overrides"] = {
        k: v for k, v in d["model"]["overrides"].items() if k not in HEAD_FIELDS
    }
    return ExperimentConfig.from_dict(d)


def unfinished_pretraining(folder: Path) -> str | None:
    """The Train run name of a pretraining in `folder` (`<cache>/<hash>/pretrain`) that an
    earlier trial started and did not finish (its trial died), if it left a checkpoint:
    the newest such run. None when the folder's pretraining is done or never checkpointed."""
    if (folder / DONE_FILE).is_file():
        return None
    newest: tuple[int, str] | None = None
    for run in folder.glob("*_pretrain"):
        found = checkpoints_newest_first(run)
        if found and (newest is None or checkpoint_epoch(found[0]) > newest[0]):
            newest = (checkpoint_epoch(found[0]), run.name)
    return newest[1] if newest else None


def cached_pretrain(
    cfg: ExperimentConfig, cache_dir: Path, trial_id: str | None = None
) -> RunResult:
    """Pretrain into `<cache_dir>/<pretrain hash>/pretrain`, or reuse the finished run there.

    A lock per hash makes a concurrent trial of the same pretraining config wait and then
    reuse the run instead of pretraining a second time; `.reused` says which happened.
    The Train run is named `<trial_id>_pretrain` after the trial that ran it; a run that a
    dead trial left unfinished is resumed from its last checkpoint, under its own name,
    by the next trial of the same pretraining config.
    """
    pcfg = pretraining_config(cfg)
    key = pretrain_hash(pcfg)
    pcfg.name = key
    pcfg.resources.storage_path = str(cache_dir)
    name = f"{trial_id}_pretrain" if trial_id else None
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    # filelock's FileLock is an flock on Linux: the kernel releases it if its holder dies
    with FileLock(Path(cache_dir) / f"{key}.lock"):
        earlier = unfinished_pretraining(pcfg.run_dir / "pretrain")
        if earlier is not None and earlier != name:
            print(f"[glee] trial {trial_id}: resuming the unfinished pretraining {earlier}")
            name = earlier
        return run_pretrain(pcfg, run_name=name)


def run_trial(
    config: dict[str, Any], base: dict[str, Any], experiment_dir: str, cache_dir: str
) -> None:
    """One trial (a Tune function trainable): pretrain (or reuse), then every fold in turn."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    exp = Path(experiment_dir)
    cfg = trial_config(ExperimentConfig.from_dict(base), config, trial_id, exp / TRIALS_DIR)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    with open(cfg.run_dir / STARTS_FILE, "a", encoding="utf-8") as fh:
        fh.write(time.strftime("%Y-%m-%d %H:%M:%S\n"))
    au_names = list(read_manifest(cfg.prep_dir, cfg.data.dataset)["au_names"])
    gcfg = model_config(cfg, len(au_names))
    pre = None
    if cfg.finetune.init == "pretrain" and gcfg.uses_pretraining and gcfg.has_embedding:
        pre = cached_pretrain(cfg, Path(cache_dir), trial_id)
    folds: dict[int, RunResult] = {}
    f1: dict[int, np.ndarray] = {}
    baseline: dict[int, np.ndarray] = {}
    for k in cfg.finetune.folds:
        # each fold is a Train run named from the trial id: `<trial_id>_fold<k>` in the
        # Ray dashboard, in <trial folder>/fold<k>/<trial_id>_fold<k>/ on disk
        folds[k], baseline[k] = run_finetune_fold(
            cfg, k, pre.checkpoint if pre else None, run_name=f"{trial_id}_fold{k}"
        )
        f1[k] = np.array([folds[k].final[f"val_f1_{n}"] for n in au_names], np.float64)
        if len(f1) == len(cfg.finetune.folds):  # before the last report: Tune stops the trial
            result = FinetuneResult(au_names, folds, f1, baseline, probe_skipped=TRIAL_PROBE)
            write_results(cfg, result)
        tune.report(
            {
                TIME_ATTR: len(f1),
                METRIC: float(np.mean([v.mean() for v in f1.values()])),
                **{f"f1_fold{j}": float(v.mean()) for j, v in f1.items()},
                "pretrained": pre is not None,
                "pretrain_reused": bool(pre is not None and pre.reused),
                "pretrain_seconds": pre.seconds if pre is not None else 0.0,
            }
        )
