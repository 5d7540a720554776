"""Table V on Ray: every ablation variant of GLEE-Net finetuned on the same dataset, folds
and seed, the variants in parallel where the cluster has room, then the table in the
paper's format with the paper's numbers beside ours.

Pretraining (Sec. III-E) runs once for the full model; every variant that keeps the
global or local branch starts from it (`load_pretrained_branches` copies the branches the
variant has). Variants without pretraining: "w/o pretrain" (by definition) and "w/o GB&LB"
(it has no branch to pretrain). "ResNet instead of GB&LB" replaces both branches by one
ResNet, which gets its own pretraining with the same settings, so it plays the same role.

Each variant is one Ray task that runs the ordinary finetuning driver
(`glee_platform.train.run_finetune`: one Ray Train run per fold); the task itself holds no
CPU, its Train workers do, so as many variants run at once as the cluster fits.

Output (`<storage>/<name>/`):
    <variant>/                one finetune run folder per variant (fold1/ .., results.md)
    full/pretrain/            the shared pretraining (resnet_gb_lb/pretrain/ its own)
    ablation.md, ablation.csv Table V: per-AU F1 (%) means over folds, Avg, paper's Avg,
                              and which of the paper's orderings this run reproduces
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from glee.evaluation.paper_results import TABLE_V, TABLE_V_LABELS
from glee.model.config import ABLATIONS
from glee_platform.config import ConfigError, ExperimentConfig
from glee_platform.evaluate import write_table
from glee_platform.prepared import read_manifest
from glee_platform.train import FinetuneResult, RunResult

# Table V rows in the paper's order (the full model last).
VARIANTS: tuple[str, ...] = tuple(TABLE_V_LABELS)
OWN_PRETRAINING = ("resnet_gb_lb",)  # a different embedding network: pretrained on its own
NO_PRETRAINING = ("wo_pretrain", "wo_gb_lb")

assert set(VARIANTS) == set(ABLATIONS), "Table V labels must cover every ablation"


def variant_config(base: ExperimentConfig, variant: str) -> ExperimentConfig:
    """The experiment config of one Table V variant: same data, folds, seed and training
    settings, its own run folder `<storage>/<base name>/<variant>/`."""
    if variant not in VARIANTS:
        raise ConfigError(f"ablation variant {variant!r} is not allowed: choose among {VARIANTS}")
    if base.model.ablation != "full":
        raise ConfigError(
            f"model.ablation={base.model.ablation!r}: an ablation study starts from the full "
            "model; set model.ablation=full"
        )
    cfg = copy.deepcopy(base)
    cfg.name = variant
    cfg.resources.storage_path = str(base.run_dir)
    cfg.model.ablation = variant
    if variant in NO_PRETRAINING:
        cfg.finetune.init = "none"
    return cfg.check()


def pretraining_plan(variants: list[str], init: str) -> dict[str, str | None]:
    """Which pretraining run each variant starts from ("full" or its own name), None for
    none: the full model's is shared (Sec. III-E); w/o pretrain and w/o GB&LB take none;
    the ResNet replacing both branches has its own. init "none" (finetune.init): none."""
    if init != "pretrain":
        return {v: None for v in variants}
    return {
        v: None if v in NO_PRETRAINING else v if v in OWN_PRETRAINING else "full" for v in variants
    }


@dataclass
class AblationResult:
    dataset: str
    au_names: list[str]
    variants: dict[str, FinetuneResult]
    run_dir: Path
    seconds: dict[str, float] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)

    def mean_f1(self, variant: str) -> np.ndarray:
        return self.variants[variant].mean_f1

    def avg(self) -> dict[str, float]:
        """Mean F1 (%) over AUs and folds per variant."""
        return {v: 100.0 * float(r.mean_f1.mean()) for v, r in self.variants.items()}


def _finetune_variant(cfg: ExperimentConfig, init: Path | None) -> FinetuneResult:
    """Runs inside a Ray task: the ordinary finetuning driver for one variant."""
    from glee_platform.train import run_finetune

    return run_finetune(cfg, init)


def _pretrain_variant(cfg: ExperimentConfig) -> RunResult:
    from glee_platform.train import run_pretrain

    return run_pretrain(cfg)


def _parallel_slots(base: ExperimentConfig) -> int:
    """How many Train runs of this config the cluster holds at once (at least one)."""
    import ray

    from glee_platform.resources import run_cpus

    return max(1, int(ray.cluster_resources().get("CPU", 1) // run_cpus(base.resources)))


def _run_limited(calls: dict[str, tuple], slots: int) -> dict[str, object]:
    """Run `name -> (remote function, *args)` with at most `slots` tasks in flight."""
    import ray

    pending = dict(calls)
    running: dict[object, str] = {}
    done: dict[str, object] = {}
    while pending or running:
        while pending and len(running) < slots:
            name = next(iter(pending))  # in the order given
            fn, *args = pending.pop(name)
            running[fn.remote(*args)] = name
        ready, _ = ray.wait(list(running), num_returns=1)
        for ref in ready:
            name = running.pop(ref)
            done[name] = ray.get(ref)  # a failed variant raises here with its cause
            print(f"[glee] ablation: {name} finished")
    return done


def run_ablation(
    base: ExperimentConfig, variants: list[str] | None = None, reuse: bool = True
) -> AblationResult:
    """Finetune every Table V variant on `base`'s dataset, folds and seed; write the table."""
    import ray

    from glee_platform.session import ensure_ray
    from glee_platform.sources import ensure_preprocessed, needed_datasets
    from glee_platform.train import write_config

    variants = list(variants or VARIANTS)
    for v in variants:
        variant_config(base, v)  # validate every name before any work
    t0 = time.perf_counter()
    ensure_ray()
    ensure_preprocessed(base, needed_datasets(base))
    write_config(base)
    seconds: dict[str, float] = {}
    configs = {v: variant_config(base, v) for v in variants}
    slots = _parallel_slots(base)
    pretrain_remote = ray.remote(num_cpus=0)(_pretrain_variant)
    finetune_remote = ray.remote(num_cpus=0)(_finetune_variant)

    # Sec. III-E: one pretraining of the full model (the ResNet variant pretrains its own).
    plan = pretraining_plan(variants, base.finetune.init)
    inits: dict[str, Path | None] = {v: None for v in variants}
    sources = sorted({s for s in plan.values() if s is not None})
    if sources:
        t = time.perf_counter()
        pre = _run_limited(
            {s: (pretrain_remote, configs.get(s) or variant_config(base, s)) for s in sources},
            slots,
        )
        seconds["pretrain"] = time.perf_counter() - t
        inits = {v: None if s is None else pre[s].checkpoint for v, s in plan.items()}

    t = time.perf_counter()
    results = _run_limited({v: (finetune_remote, configs[v], inits[v]) for v in variants}, slots)
    seconds["finetune"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    au_names = list(read_manifest(base.prep_dir, base.data.dataset)["au_names"])
    result = AblationResult(
        base.data.dataset,
        au_names,
        {v: results[v] for v in VARIANTS if v in results},
        base.run_dir,
        seconds,
    )
    write_ablation(base, result)
    return result


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Ordering:
    higher: str  # the variant the paper ranks higher
    lower: str
    paper: tuple[float, float]
    ours: tuple[float, float]

    @property
    def reproduced(self) -> bool:
        return self.ours[0] > self.ours[1]


def paper_orderings(avg: dict[str, float]) -> list[Ordering]:
    """Every pair of variants the paper ranks strictly (Table V), with our averages."""
    out = []
    names = [v for v in VARIANTS if v in avg]
    for a, b in combinations(names, 2):
        pa, pb = TABLE_V[a], TABLE_V[b]
        if pa == pb:
            continue
        hi, lo = (a, b) if pa > pb else (b, a)
        out.append(Ordering(hi, lo, (TABLE_V[hi], TABLE_V[lo]), (avg[hi], avg[lo])))
    return out


def ablation_table(result: AblationResult) -> pd.DataFrame:
    """Table V: one row per variant, per-AU F1 (%) averaged over folds, Avg, paper's Avg."""
    from glee.evaluation.metrics import f1_table

    rows = {TABLE_V_LABELS[v]: r.mean_f1 for v, r in result.variants.items()}
    df = f1_table(rows, result.au_names)
    df["Paper Avg"] = [TABLE_V[v] for v in result.variants]
    df["Folds"] = [
        ",".join(str(k) for k in sorted(r.per_fold_f1)) for r in result.variants.values()
    ]
    return df


def orderings_text(orderings: list[Ordering]) -> str:
    """Markdown: which of the paper's pairwise orderings this run reproduces."""
    if not orderings:
        return "No pair of variants to compare.\n"
    ok = [o for o in orderings if o.reproduced]
    lines = [
        f"Reproduced {len(ok)} of the paper's {len(orderings)} strict pairwise orderings "
        f"(Kendall-style agreement {(2 * len(ok) - len(orderings)) / len(orderings):+.2f}).",
        "",
    ]
    full = [o for o in orderings if o.higher == "full"]
    if full:
        below = [TABLE_V_LABELS[o.lower] for o in full if o.reproduced]
        above = [TABLE_V_LABELS[o.lower] for o in full if not o.reproduced]
        lines.append(
            f"- Full model above: {', '.join(below) or 'none'}; "
            f"not above: {', '.join(above) or 'none'}."
        )
    lines += [
        "",
        "| Paper: higher | > lower | Paper | Ours | Reproduced |",
        "|---|---|---|---|---|",
    ]
    for o in orderings:
        lines.append(
            f"| {TABLE_V_LABELS[o.higher]} | {TABLE_V_LABELS[o.lower]} | "
            f"{o.paper[0]:.1f} > {o.paper[1]:.1f} | {o.ours[0]:.1f} vs {o.ours[1]:.1f} | "
            f"{'yes' if o.reproduced else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def write_ablation(base: ExperimentConfig, result: AblationResult) -> dict[str, Path]:
    df = ablation_table(result)
    orderings = paper_orderings(result.avg())
    folds = ",".join(str(k) for k in base.finetune.folds)
    note = (
        f"Trained on {base.data.dataset} (folds {folds}, seed {base.seed}, model preset "
        f"{base.model.preset}, {base.finetune.epochs} finetuning epochs, init "
        f"{base.finetune.init}); per-AU cells and Avg are ours (mean over folds), "
        "Paper Avg is Table V (BP4D).\n\n"
        + orderings_text(orderings)
        + "\nTime: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
        + "\n"
    )
    files = write_table(
        df, base.run_dir / "ablation", f"{base.name}: Table V ablation on {base.data.dataset}", note
    )
    result.files.update(files)
    return files


__all__ = [
    "VARIANTS",
    "AblationResult",
    "Ordering",
    "ablation_table",
    "orderings_text",
    "paper_orderings",
    "pretraining_plan",
    "run_ablation",
    "variant_config",
    "write_ablation",
]
