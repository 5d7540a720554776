"""What an experiment folder says when its runs are done: the per-fold F1 tables beside
the f_exp probe and the always-present baseline, the config, and every run's metrics in
one CSV."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

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
    probe_f1: dict[int, np.ndarray] = field(default_factory=dict)  # glee.evaluation.probe
    probe_skipped: str = ""  # why probe_f1 is empty, when the driver skipped it

    @property
    def mean_f1(self) -> np.ndarray:
        return fold_average(list(self.per_fold_f1.values()))

    def table(self) -> pd.DataFrame:
        rows = {f"fold{k}": v for k, v in sorted(self.per_fold_f1.items())}
        rows["mean"] = self.mean_f1
        return f1_table(rows, self.au_names)

    def comparison(self) -> pd.DataFrame:
        """GLEE-Net, the f_exp probe and always-present, each averaged over the folds."""
        rows = {"GLEE-Net (mean)": self.mean_f1}
        for name, per_fold in (
            ("f_exp probe (mean)", self.probe_f1),
            ("always-present (mean)", self.baseline_f1),
        ):
            if per_fold:
                rows[name] = fold_average(list(per_fold.values()))
        return f1_table(rows, self.au_names)

    def comparison_line(self) -> str:
        """One line: the Avg of each row of `comparison`, and what the network adds over
        the f_exp probe (difference of the unrounded means)."""
        avg = self.comparison()["Avg"]
        short = {"GLEE-Net (mean)": "GLEE-Net", "f_exp probe (mean)": "f_exp probe"}
        short["always-present (mean)"] = "always-present"
        line = "mean F1: " + ", ".join(f"{s} {avg[r]:.1f}" for r, s in short.items() if r in avg)
        if not self.probe_f1:
            return line + f"; f_exp probe not run: {self.probe_skipped or 'not computed'}"
        gain = self.mean_f1.mean() - fold_average(list(self.probe_f1.values())).mean()
        return line + f"; what GLEE-Net adds over the f_exp probe: {100 * gain:+.1f}"


def write_results(cfg: ExperimentConfig, result: FinetuneResult) -> Path:
    """results.md (per fold + mean, then GLEE-Net beside the f_exp probe and always-present),
    results.csv (per fold + mean), config.yaml: the run folder's summary."""
    df = result.table()
    write_f1_table(df, cfg.run_dir / "results.csv")
    ks = sorted(result.per_fold_f1)
    folds = f"fold {ks[0]}" if len(ks) == 1 else "folds " + ", ".join(str(k) for k in ks)
    text = (
        f"# {cfg.name}: per-AU F1 (%) on {cfg.finetune.eval_dataset or cfg.data.dataset}\n\n"
        f"Trained on {cfg.data.dataset}; init: "
        f"{'pretraining' if cfg.finetune.init == 'pretrain' else 'none'}; "
        f"model: {cfg.model.preset} ({cfg.model.ablation}).\n\n"
        + to_markdown(df)
        + f"\nGLEE-Net beside two baselines on the same rows, mean over {folds}. f_exp probe: "
        "a per-AU logistic regression on the fitted 3DMM expression coefficients (Sec. III-C) "
        "of each fold's training rows, scored on its test rows; always-present: every AU "
        "predicted present.\n\n"
        + to_markdown(result.comparison())
        + "\n"
        + result.comparison_line()
        + "\n"
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
