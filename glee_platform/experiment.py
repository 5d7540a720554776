"""An experiment end to end: its datasets (synthetic ones only when the config asks) ->
preprocessing (if absent) -> pretraining on FEC -> finetuning every fold -> the F1 table
beside the f_exp probe and the always-present baseline. `make demo` runs configs/demo.yaml
through it, a paper config the same way.

Every step reuses finished work: synthesis and preprocessing skip complete datasets, and a
Train run whose config hash matches its `done.json` is not run again.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

from glee_platform.config import ExperimentConfig
from glee_platform.prepared import read_manifest
from glee_platform.session import ensure_ray
from glee_platform.sources import ensure_preprocessed, needed_datasets
from glee_platform.train import (
    FinetuneResult,
    RunResult,
    model_config,
    run_finetune,
    run_pretrain,
    write_config,
)


@dataclass
class ExperimentResult:
    finetune: FinetuneResult
    pretrain: RunResult | None
    no_pretrain: FinetuneResult | None
    seconds: dict[str, float]

    def summary(self) -> str:
        """What the demo prints last: F1 per fold, then GLEE-Net beside the f_exp probe and
        always-present (means over the folds), what the network adds, and the times."""
        ft = self.finetune
        lines = [ft.table().to_string(), "", ft.comparison().to_string(), ft.comparison_line()]
        if self.no_pretrain is not None:
            lines.append(
                f"without pretraining: mean F1 {100 * self.no_pretrain.mean_f1.mean():.1f}"
            )
        lines.append("time: " + ", ".join(f"{k} {v:.0f}s" for k, v in self.seconds.items()))
        return "\n".join(lines)


def run_experiment(
    cfg: ExperimentConfig, compare_no_pretrain: bool = False, force_preprocess: bool = False
) -> ExperimentResult:
    """Data -> preprocess -> pretrain -> finetune all folds; results in the run folder."""
    ensure_ray()
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    ensure_preprocessed(cfg, needed_datasets(cfg), force=force_preprocess)
    seconds["data"] = time.perf_counter() - t0
    write_config(cfg)
    num_aus = len(read_manifest(cfg.prep_dir, cfg.data.dataset)["au_names"])
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
    return ExperimentResult(ft, pre, none, seconds)
