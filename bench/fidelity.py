"""Does GLEE-Net learn from faces? The five numbers of the GLEE-Net issue, on the demo
world read by a real detector (dlib's or FAN's landmarks, never the rendered ones).

    python bench/fidelity.py                                 # configs/fidelity.yaml
    python bench/fidelity.py --seeds 0,1,2,3,4 --set pretrain.epochs=20   # on a GPU

One command, through the platform's own jobs (`glee_platform.ablate.run_ablation`, Ray
Train per fold), in `<storage>/<name>-seed<s>/`:
- seed 0: every Table V variant on the three folds (Sec. IV-D);
- every other seed: the full model and "w/o pretrain", each with its own pretraining.

Then, from those runs:
1. image_only:    mean F1 (%) of "w/o 3DGB" (no f_exp: the image branches alone), seed 0;
2. full / probe:  the full model, mean over seeds, and the f_exp probe on the same rows
                  (`glee.evaluation.probe`, a logistic regression on the fitted f_exp);
3. perm_cost:     the full model's F1 lost when E_exp is permuted across the test faces
                  (`glee_platform.evaluate.input_reliance`), mean over seeds and folds;
4. pretrain_gain: full minus "w/o pretrain" per seed, its mean and sample sd (gain_sd);
5. table5:        how many of the paper's 35 strict pairwise orderings of Table V hold.

Goals (the issue): image_only >= 70, full >= probe + 3, perm_cost >= 5, pretrain_gain >= 2
and > 2 gain_sd, table5 >= 25/35. The report (`fidelity.md`, `fidelity.json` in the
seed-0 folder) has per-seed and per-fold tables; the last line printed is
`image_only=<> full=<> probe=<> perm_cost=<> pretrain_gain=<> gain_sd=<> table5=<k>/35`.
Finished folds are kept: run it again after an interruption and it goes on.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time

import numpy as np

from glee.evaluation.metrics import fold_average
from glee.evaluation.paper_results import TABLE_V_LABELS
from glee.files import write_text_atomic
from glee_platform.ablate import VARIANTS, AblationResult, paper_orderings, run_ablation
from glee_platform.config import ConfigError, ExperimentConfig, load_config
from glee_platform.evaluate import input_reliance
from glee_platform.run_folder import RunFolderError

GAIN_PAIR = ("full", "wo_pretrain")


def seed_config(base: ExperimentConfig, seed: int) -> ExperimentConfig:
    """`base` with its training seed set and its own folder `<storage>/<name>-seed<s>/`."""
    cfg = copy.deepcopy(base)
    cfg.seed = seed
    cfg.name = f"{base.name}-seed{seed}"
    return cfg.check()


def mean_pct(per_fold: dict[int, np.ndarray]) -> float:
    """Mean F1 (%) over AUs of the fold average (the tables' Avg)."""
    return 100.0 * float(fold_average(list(per_fold.values())).mean())


def summarize(
    ablations: dict[int, AblationResult], reliance: dict[int, dict[str, list[float]]]
) -> dict:
    """The five numbers and their parts from the seed runs (seed 0 has every variant)."""
    avgs = {s: a.avg() for s, a in ablations.items()}  # seed -> variant -> Avg
    first = min(ablations)
    full = {s: avg["full"] for s, avg in avgs.items()}
    gains = {s: avg["full"] - avg["wo_pretrain"] for s, avg in avgs.items()}
    costs = {
        s: float(np.mean(r["intact"]) - np.mean(r["E_exp permuted"])) for s, r in reliance.items()
    }
    full_result = ablations[first].variants["full"]
    orderings = paper_orderings(avgs[first])
    return {
        "image_only": avgs[first]["wo_3dgb"],
        "full": float(np.mean(list(full.values()))),
        "probe": mean_pct(full_result.probe_f1),
        "always_present": mean_pct(full_result.baseline_f1),
        "perm_cost": float(np.mean(list(costs.values()))),
        "pretrain_gain": float(np.mean(list(gains.values()))),
        "gain_sd": statistics.stdev(gains.values()) if len(gains) > 1 else float("nan"),
        "table5": sum(o.reproduced for o in orderings),
        "table5_of": len(orderings),
        "per_seed": {
            s: {
                "full": full[s],
                "wo_pretrain": avgs[s]["wo_pretrain"],
                "gain": gains[s],
                "perm_cost": costs[s],
                "full_folds": {
                    k: 100.0 * float(v.mean())
                    for k, v in ablations[s].variants["full"].per_fold_f1.items()
                },
                "e_exp_permuted_folds": reliance[s]["E_exp permuted"],
                "f_exp_permuted_folds": reliance[s]["f_exp permuted"],
            }
            for s in ablations
        },
        "table_v": avgs[first],
        "probe_folds": {k: 100.0 * float(v.mean()) for k, v in full_result.probe_f1.items()},
    }


GOALS = (
    ("image_only", "image-only (w/o 3DGB) >= 70", lambda r: r["image_only"] >= 70),
    ("full", "full >= probe + 3", lambda r: r["full"] >= r["probe"] + 3),
    ("perm_cost", "E_exp permuted costs >= 5", lambda r: r["perm_cost"] >= 5),
    (
        "pretrain_gain",
        "pretraining gains >= 2 and > 2 sd",
        lambda r: r["pretrain_gain"] >= 2 and r["pretrain_gain"] > 2 * r["gain_sd"],
    ),
    ("table5", "Table V orderings >= 25/35", lambda r: r["table5"] >= 25),
)


def report(r: dict, cfg: ExperimentConfig, seconds: float) -> str:
    """Markdown: the goals, per-seed numbers and seed 0's Table V averages."""
    lines = [
        f"# {cfg.name}: does GLEE-Net learn from faces?",
        "",
        f"Config `{cfg.name}` on {cfg.data.dataset} (synthetic {cfg.data.synthetic}, landmarks "
        f"{cfg.data.landmarks}), folds {cfg.finetune.folds}, seeds {sorted(r['per_seed'])}, "
        f"{cfg.pretrain.epochs} pretraining and {cfg.finetune.epochs} finetuning epochs, "
        f"class balance {cfg.finetune.class_balance}; {seconds / 60:.1f} min.",
        "",
        "| goal | measured | met |",
        "|---|---|---|",
    ]
    shown = {
        "image_only": f"{r['image_only']:.1f} (always-present {r['always_present']:.1f})",
        "full": f"{r['full']:.1f} against probe {r['probe']:.1f}",
        "perm_cost": f"{r['perm_cost']:.1f}",
        "pretrain_gain": f"{r['pretrain_gain']:+.1f} (sd {r['gain_sd']:.1f})",
        "table5": f"{r['table5']}/{r['table5_of']}",
    }
    for key, text, ok in GOALS:
        lines.append(f"| {text} | {shown[key]} | {'yes' if ok(r) else 'no'} |")
    lines += [
        "",
        "| seed | full (folds) | full | w/o pretrain | gain | E_exp permuted (folds) | "
        "f_exp permuted (folds) |",
        "|---|---|---|---|---|---|---|",
    ]
    for s, p in sorted(r["per_seed"].items()):
        folds = " / ".join(f"{v:.1f}" for _, v in sorted(p["full_folds"].items()))
        e_perm = " / ".join(f"{v:.1f}" for v in p["e_exp_permuted_folds"])
        f_perm = " / ".join(f"{v:.1f}" for v in p["f_exp_permuted_folds"])
        lines.append(
            f"| {s} | {folds} | {p['full']:.1f} | {p['wo_pretrain']:.1f} | {p['gain']:+.1f} | "
            f"{e_perm} | {f_perm} |"
        )
    probe = " / ".join(f"{v:.1f}" for _, v in sorted(r["probe_folds"].items()))
    lines += ["", f"f_exp probe per fold: {probe}.", "", "| Table V, seed 0 | Avg |", "|---|---|"]
    lines += [f"| {TABLE_V_LABELS[v]} | {a:.1f} |" for v, a in r["table_v"].items()]
    return "\n".join(lines) + "\n"


def last_line(r: dict) -> str:
    return (
        f"image_only={r['image_only']:.1f} full={r['full']:.1f} probe={r['probe']:.1f} "
        f"perm_cost={r['perm_cost']:.1f} pretrain_gain={r['pretrain_gain']:.1f} "
        f"gain_sd={r['gain_sd']:.1f} table5={r['table5']}/{r['table5_of']}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="fidelity", help="preset name or YAML path")
    ap.add_argument("--set", action="append", default=[], help="override, e.g. finetune.epochs=8")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds; the first runs Table V")
    args = ap.parse_args()
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        if len(seeds) < 2 or len(set(seeds)) != len(seeds):
            raise ConfigError(f"--seeds {args.seeds!r}: give at least two different seeds")
        base = load_config(args.config, args.set)
    except (ConfigError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    t0 = time.perf_counter()
    ablations: dict[int, AblationResult] = {}
    reliance: dict[int, dict[str, list[float]]] = {}
    for i, seed in enumerate(seeds):
        cfg = seed_config(base, seed)
        variants = list(VARIANTS) if i == 0 else list(GAIN_PAIR)
        print(f"[fidelity] seed {seed}: {', '.join(variants)} in {cfg.run_dir}", flush=True)
        ablations[seed] = run_ablation(cfg, variants)
        try:
            reliance[seed] = input_reliance(cfg.run_dir / "full", seed)
        except RunFolderError as exc:
            sys.exit(f"error: {exc}")
        print(f"[fidelity] seed {seed} done, {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    seconds = time.perf_counter() - t0
    r = summarize(ablations, reliance)
    first = seed_config(base, seeds[0]).run_dir
    text = report(r, base, seconds)
    write_text_atomic(first / "fidelity.md", text)
    write_text_atomic(first / "fidelity.json", json.dumps({**r, "seconds": seconds}, indent=2))
    print(text)
    print(f"report: {first / 'fidelity.md'}")
    print(last_line(r))


if __name__ == "__main__":
    main()
