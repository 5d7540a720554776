"""Driver of AU finetuning (Sec. III-D, IV-B): one Ray Train run per fold, then the
results tables of the experiment."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glee.evaluation.probe import logistic_probe_f1
from glee.training.augmentation import expression_mirror
from glee.training.losses import au_balance_weights, au_class_weights
from glee_platform.config import ConfigError, ExperimentConfig
from glee_platform.prepared import (
    FaceSplit,
    always_present_f1,
    expression_names,
    face_split,
    fold_filter,
    read_manifest,
    split_expressions,
)
from glee_platform.resources import per_worker_batch
from glee_platform.session import ensure_ray
from glee_platform.train.loops import finetune_loop
from glee_platform.train.results import FinetuneResult, write_experiment_metrics, write_results
from glee_platform.train.runs import (
    RunResult,
    fit,
    loop_config,
    model_config,
    prepare_run_dir,
    reused,
)
from glee_platform.training_data import decoded_once_if_small, face_dataset


def finetune_hash(cfg: ExperimentConfig, fold: int, init: str) -> str:
    return cfg.hash("data", "model", "finetune", "seed")[:8] + f"-f{fold}-" + init[:12]


def training_au_weights(cfg: ExperimentConfig, fold: int) -> torch.Tensor:
    """Sec. IV-B: AU weights from the occurrence ratios of fold `fold`'s training parts only."""
    _, train_folds = fold_filter(fold, train=True)
    split = face_split(cfg.prep_dir, cfg.data.dataset, train_folds, cfg.data.max_rows)
    return au_class_weights(split.labels)


def fold_splits(cfg: ExperimentConfig, fold: int) -> tuple[FaceSplit, FaceSplit]:
    """The rows fold `fold` trains on (the other two parts of `data.dataset`) and is
    evaluated on (part `fold`, or all of `finetune.eval_dataset`), each at most
    `data.max_rows`: what the Train run, the AU weights and both baselines see."""
    prep, dataset = cfg.prep_dir, cfg.data.dataset
    eval_dataset = cfg.finetune.eval_dataset or dataset
    if eval_dataset != dataset:
        au_names = list(read_manifest(prep, dataset)["au_names"])
        eval_names = list(read_manifest(prep, eval_dataset)["au_names"])
        if eval_names != au_names:
            raise ConfigError(
                f"finetune.eval_dataset={eval_dataset!r} codes AUs {eval_names}, but "
                f"{dataset} codes {au_names}: cross-dataset evaluation needs the same AU set"
            )
    _, train_folds = fold_filter(fold, train=True)
    eval_folds = fold_filter(None if cfg.finetune.eval_dataset else fold, train=False)[1]
    return (
        face_split(prep, dataset, train_folds, cfg.data.max_rows),
        face_split(prep, eval_dataset, eval_folds, cfg.data.max_rows),
    )


def probe_skip_reason(cfg: ExperimentConfig) -> str:
    """Why the f_exp probe cannot score this config's folds ("" when it can): a probe fitted
    on one dataset's f_exp reads another's only if both come from the same blendshapes."""
    dataset, eval_dataset = cfg.data.dataset, cfg.finetune.eval_dataset or cfg.data.dataset
    if eval_dataset == dataset:
        return ""
    train = expression_names(read_manifest(cfg.prep_dir, dataset))
    test = expression_names(read_manifest(cfg.prep_dir, eval_dataset))
    if train != test:
        return (
            f"{dataset} and {eval_dataset} were fitted with different 3DMM expression bases "
            f"({len(train)} and {len(test)} blendshapes, not the same names)"
        )
    return ""


def fold_probe_f1(cfg: ExperimentConfig, fold: int) -> np.ndarray:
    """(n_au,) F1 of the f_exp probe (`glee.evaluation.probe`) on fold `fold`: fitted on the
    f_exp and labels of the rows the fold trains on, scored on the rows it is evaluated on.
    Check `probe_skip_reason` first."""
    train, test = fold_splits(cfg, fold)
    return logistic_probe_f1(
        split_expressions(train), train.labels, split_expressions(test), test.labels
    )


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
    manifest = read_manifest(cfg.prep_dir, cfg.data.dataset)
    au_names = list(manifest["au_names"])
    train_split, eval_split = fold_splits(cfg, fold)
    baseline = always_present_f1(eval_split.labels)
    record = prepare_run_dir(cfg.run_dir / run, config_hash, reuse)
    if record is not None:
        return reused(cfg, run, record), baseline
    batch = per_worker_batch("finetune.batch_size", ft.batch_size, cfg.resources.num_workers)
    if train_split.num_rows < ft.batch_size:
        raise ConfigError(
            f"finetune.batch_size={ft.batch_size}: fold {fold} has {train_split.num_rows} "
            "training rows; lower the batch size"
        )
    gcfg = model_config(cfg, len(au_names))
    mirror = expression_mirror(expression_names(manifest), gcfg.expr_dim)
    datasets = {
        "train": decoded_once_if_small(
            face_dataset(train_split, train=True, seed=cfg.seed),
            train_split,
            f"{run} training",
            limit=cfg.resources.decoded_once_mib * 2**20,
        ),
        "eval": face_dataset(eval_split, train=False),
    }
    loop_cfg = loop_config(cfg, run, gcfg, run_name) | {
        "lr": ft.lr,
        "momentum": ft.momentum,
        "weight_decay": ft.weight_decay,
        "batch_size": batch,
        "eval_batch_size": ft.eval_batch_size,
        "epochs": ft.epochs,
        "eval_every": ft.eval_every,
        "au_names": au_names,
        "au_weights": au_class_weights(train_split.labels).tolist(),
        "au_balance": (
            au_balance_weights(train_split.labels).tolist() if ft.class_balance else None
        ),
        "expr_mirror": mirror.tolist(),
        "init_checkpoint": str(init_checkpoint) if init_checkpoint is not None else None,
    }
    result = fit(cfg, run, finetune_loop, loop_cfg, datasets, config_hash, run_name, callbacks)
    write_experiment_metrics(cfg)
    return result, baseline


def run_finetune(
    cfg: ExperimentConfig, init_checkpoint: Path | None, reuse: bool = True
) -> FinetuneResult:
    """All configured folds, each beside the f_exp probe on its own rows, then results.md /
    results.csv / config.yaml in the run folder."""
    au_names = list(read_manifest(cfg.prep_dir, cfg.data.dataset)["au_names"])
    if cfg.finetune.init == "none" or not model_config(cfg, len(au_names)).uses_pretraining:
        init_checkpoint = None
    folds: dict[int, RunResult] = {}
    f1: dict[int, np.ndarray] = {}
    baseline: dict[int, np.ndarray] = {}
    probe: dict[int, np.ndarray] = {}
    skipped = probe_skip_reason(cfg)
    if skipped:
        print(f"[glee] f_exp probe skipped: {skipped}")
    for k in cfg.finetune.folds:
        folds[k], baseline[k] = run_finetune_fold(cfg, k, init_checkpoint, reuse=reuse)
        f1[k] = np.array([folds[k].final[f"val_f1_{n}"] for n in au_names], np.float64)
        line = f"[glee] fold {k}: mean F1 {100 * f1[k].mean():.1f}"
        if not skipped:
            probe[k] = fold_probe_f1(cfg, k)
            line += f" (f_exp probe {100 * probe[k].mean():.1f})"
        print(line)
    result = FinetuneResult(au_names, folds, f1, baseline, probe, skipped)
    write_results(cfg, result)
    return result
