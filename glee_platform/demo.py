"""The end-to-end demo: synthesize (if absent) -> preprocess (if absent) -> pretrain on the
synthetic FEC -> finetune the three folds of the synthetic BP4D -> the F1 table.

Every step reuses finished work: synthesis and preprocessing skip complete datasets, and a
Train run whose config hash matches its `done.json` is not run again.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glee_platform import data as gdata
from glee_platform.config import ConfigError, ExperimentConfig
from glee_platform.train import (
    FinetuneResult,
    RunResult,
    ensure_ray,
    model_config,
    run_finetune,
    run_pretrain,
    write_config,
)


@dataclass
class DemoResult:
    finetune: FinetuneResult
    pretrain: RunResult | None
    no_pretrain: FinetuneResult | None
    seconds: dict[str, float]

    def summary(self) -> str:
        ft = self.finetune
        lines = [ft.table().to_string(), ""]
        base = np.mean([v.mean() for v in ft.baseline_f1.values()])
        lines.append(f"mean F1 {100 * ft.mean_f1.mean():.1f}   always-present {100 * base:.1f}")
        if self.no_pretrain is not None:
            lines.append(
                f"without pretraining: mean F1 {100 * self.no_pretrain.mean_f1.mean():.1f}"
            )
        lines.append("time: " + ", ".join(f"{k} {v:.0f}s" for k, v in self.seconds.items()))
        return "\n".join(lines)


def needed_datasets(cfg: ExperimentConfig) -> list[str]:
    names = [cfg.data.dataset]
    if cfg.finetune.eval_dataset and cfg.finetune.eval_dataset not in names:
        names.append(cfg.finetune.eval_dataset)
    if cfg.finetune.init == "pretrain":
        names.append("fec")
    return names


def raw_roots(cfg: ExperimentConfig, datasets: list[str]) -> dict[str, Path]:
    """Raw dataset folders: the user's (data.raw), else synthetic ones written if absent."""
    roots = {d: Path(cfg.data.raw[d]).expanduser() for d in datasets if d in cfg.data.raw}
    missing = [d for d in datasets if d not in roots]
    missing = [d for d in missing if not gdata.is_preprocessed(cfg.prep_dir, d)]
    if not missing:
        return roots
    if cfg.data.synthetic == "none":
        raise ConfigError(
            f"no raw folder for {', '.join(missing)}: set data.raw.<dataset> to its root, "
            "or data.synthetic to a preset (tiny, demo, large)"
        )
    from glee.synthetic.writers import synthesize

    print(f"[glee] synthetic data ({cfg.data.synthetic}) -> {cfg.raw_dir}")
    roots.update(
        synthesize(
            cfg.raw_dir,
            preset=cfg.data.synthetic,
            seed=cfg.data.synthetic_seed,
            datasets=missing,
            progress=True,
        )
    )
    return roots


def ensure_preprocessed(cfg: ExperimentConfig, datasets: list[str]) -> None:
    """Preprocess every needed dataset whose Parquet folder is not complete."""
    todo = [d for d in datasets if not gdata.is_preprocessed(cfg.prep_dir, d)]
    if not todo:
        return
    roots = raw_roots(cfg, todo)
    from glee_platform.preprocess import preprocess_dataset

    for name in todo:
        print(f"[glee] preprocessing {name}: {roots[name]} -> {cfg.prep_dir / name}")
        preprocess_dataset(name, roots[name], cfg.prep_dir / name, landmarks=cfg.data.landmarks)


def run_demo(cfg: ExperimentConfig, compare_no_pretrain: bool = False) -> DemoResult:
    """Synthesize -> preprocess -> pretrain -> finetune all folds; results in the run folder."""
    ensure_ray()
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    datasets = needed_datasets(cfg)
    ensure_preprocessed(cfg, datasets)
    seconds["data"] = time.perf_counter() - t0
    write_config(cfg)
    num_aus = len(gdata.read_manifest(cfg.prep_dir, cfg.data.dataset)["au_names"])
    gcfg = model_config(cfg, num_aus)
    pre = None
    if cfg.finetune.init == "pretrain" and gcfg.uses_pretraining and gcfg.has_embedding:
        t = time.perf_counter()
        pre = run_pretrain(cfg)
        seconds["pretrain"] = time.perf_counter() - t
    t = time.perf_counter()
    ft = run_finetune(cfg, pre.checkpoint if pre else None)
    seconds["finetune"] = time.perf_counter() - t
    none = None
    if compare_no_pretrain and pre is not None:
        t = time.perf_counter()
        other = copy.deepcopy(cfg)
        other.name = f"{cfg.name}-no-pretrain"
        other.finetune.init = "none"
        none = run_finetune(other, None)
        seconds["no-pretrain"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    return DemoResult(ft, pre, none, seconds)
