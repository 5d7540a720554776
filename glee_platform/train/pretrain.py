"""Driver of triplet pretraining on FEC (Sec. III-E, IV-B): one Ray Train run, reused when
its config hash matches a finished one."""

from __future__ import annotations

from typing import Any

import numpy as np

from glee_platform.config import ConfigError, ExperimentConfig
from glee_platform.prepared import is_preprocessed, read_manifest
from glee_platform.resources import per_worker_batch
from glee_platform.session import ensure_ray
from glee_platform.train.loops import pretrain_loop
from glee_platform.train.results import write_experiment_metrics
from glee_platform.train.runs import (
    RunResult,
    fit,
    loop_config,
    model_config,
    prepare_run_dir,
    reused,
)
from glee_platform.training_data import load_triplets, triplet_dataset


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
    record = prepare_run_dir(cfg.run_dir / run, config_hash, reuse)
    if record is not None:
        return reused(cfg, run, record)
    # The head is not pretrained; its size only has to match the finetuning dataset's.
    num_aus = 12
    if is_preprocessed(cfg.prep_dir, cfg.data.dataset):
        num_aus = len(read_manifest(cfg.prep_dir, cfg.data.dataset)["au_names"])
    gcfg = model_config(cfg, num_aus)
    if not gcfg.has_embedding:
        raise ConfigError(
            f"model.ablation={cfg.model.ablation!r} has no global or local branch: nothing "
            "to pretrain; set finetune.init=none"
        )
    p = cfg.pretrain
    batch = per_worker_batch("pretrain.batch_size", p.batch_size, cfg.resources.num_workers)
    margins = {"margin_one": p.margin_one, "margin_two_three": p.margin_two_three}
    train = load_triplets(
        cfg.prep_dir,
        split="train",
        max_triplets=p.max_triplets,
        seed=cfg.seed,
        chain_mining=p.chain_mining,
        **margins,
    )
    test = load_triplets(
        cfg.prep_dir,
        split="test",
        chain_mining=False,
        max_triplets=p.max_triplets,
        seed=cfg.seed,
        **margins,
    )
    if train.num_rows < p.batch_size:
        raise ConfigError(
            f"pretrain.batch_size={p.batch_size}: only {train.num_rows} training triplets; "
            "lower the batch size"
        )
    n_mined = int(np.sum(train["mined"].to_numpy()))
    print(
        f"[glee] pretrain: {train.num_rows} triplets ({n_mined} chain-mined), "
        f"{test.num_rows} held out"
    )
    datasets = {
        "train": triplet_dataset(train, cfg.prep_dir, train=True, batch_size=batch, seed=cfg.seed)
    }
    if test.num_rows:
        datasets["eval"] = triplet_dataset(test, cfg.prep_dir, train=False, batch_size=32)
    loop_cfg = loop_config(cfg, run, gcfg, run_name) | {
        "lr": p.lr,
        "momentum": p.momentum,
        "weight_decay": p.weight_decay,
        "batch_size": batch,
        "eval_batch_size": 32,
        "epochs": p.epochs,
        "has_eval": bool(test.num_rows),
    }
    result = fit(cfg, run, pretrain_loop, loop_cfg, datasets, config_hash, run_name, callbacks)
    write_experiment_metrics(cfg)
    return result
