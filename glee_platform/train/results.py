"""What an experiment folder says when its runs are done: the per-fold F1 tables beside
the always-present baseline, the config, and every run's metrics in one CSV."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glee.evaluation.metrics import f1_table, fold_average, to_markdown, write_f1_table
from glee.files import write_json_atomic, write_text_atomic
from glee_platform.config import ExperimentConfig
from glee_platform.tracking import read_metrics_csv, write_metrics_csv
from glee_platform.train.runs import RunResult


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


def write_experiment_metrics(cfg: ExperimentConfig) -> None:
    """`<run>/metrics.csv`: every Train run's per-epoch metrics, with a `run` column."""
    rows: list[dict[str, Any]] = []
    for name in ["pretrain", *(f"fold{k}" for k in (1, 2, 3))]:
        path = cfg.run_dir / name / "metrics.csv"
        if path.is_file():
            rows += [{"run": name, **r} for r in read_metrics_csv(path)]
    if rows:
        write_metrics_csv(cfg.run_dir / "metrics.csv", rows)
