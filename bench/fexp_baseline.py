"""How much of the demo's AU F1 the 3DMM expression coefficients carry on their own.

    python jobs/finetune.py --compare-no-pretrain     # first: the demo's data and runs
    python bench/fexp_baseline.py                      # then this (seconds)
    python bench/fexp_baseline.py --prep /data/prep --dataset bp4d --runs runs/paper-bp4d

Why (issue: training): on the demo, GLEE-Net with FEC pretraining scores what it scores
without it. This script measures the alternative explanation: that the AU head needs
nothing from the image branches because f_exp (Sec. III-C), which it receives directly,
already holds the AU evidence. For each fold k of the prepared dataset it runs the f_exp
probe (`glee.evaluation.probe`, which the finetuning job also prints beside GLEE-Net): one
logistic regression per AU on the fitted f_exp of the other two parts (balanced class
weights, like the weighted BCE of Sec. IV-B; unknown labels left out), per-AU F1 on part
k, with the same F1 and fold average as the training job. When the raw dataset's
`truth.parquet` is there (synthetic data), the same is done on the rendered, true f_exp,
the ceiling of what a perfect 3DMM fit could give. Printed beside them: the always-present
baseline, and the run's GLEE-Net folds from `<runs>/results.csv` (with and without
pretraining) when the run exists.

Then, for each finished fold of each run folder given with --runs (the demo's, and its
"w/o pretrain" twin), how much the trained AU head uses each of its two inputs: the fold's
checkpoint is evaluated on its test part as the training job does, then again with E_exp,
or f_exp, permuted across the test faces (each face gets another face's vector; the other
input is left as is). A head that ignores an input loses nothing when it is permuted.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from glee.evaluation.metrics import f1_table, fold_average, to_markdown
from glee.evaluation.probe import fexp_probe_f1
from glee_platform.evaluate import EvaluationError, input_reliance
from glee_platform.prepared import DataError, always_present_f1, read_manifest
from glee_platform.run_folder import RunFolderError, finished_folds

FOLDS = (1, 2, 3)
KEY = ["subject", "task", "frame"]


def load_rows(prep: Path, dataset: str) -> tuple[pd.DataFrame, list[str]]:
    """The prepared faces (key, fold, f_exp, labels) and the AU names of the manifest."""
    manifest = read_manifest(prep, dataset)
    table = pq.read_table(prep / dataset / "faces", columns=[*KEY, "fold", "expression", "labels"])
    return table.to_pandas(), list(manifest["au_names"])


def true_expressions(raw: Path, rows: pd.DataFrame) -> np.ndarray | None:
    """(N, 51) rendered f_exp of each prepared row from `truth.parquet`, None if absent."""
    path = raw / "truth.parquet"
    if not path.is_file():
        return None
    truth = pq.read_table(path, columns=[*KEY, "expression"]).to_pandas()
    truth["frame"] = truth["frame"].astype(rows["frame"].dtype)
    joined = rows[KEY].merge(truth, on=KEY, how="left", validate="one_to_one")
    missing = joined["expression"].isna().sum()
    if missing:
        raise DataError(f"{missing} prepared rows have no row in {path}: wrong --raw folder?")
    return np.stack(joined["expression"].to_numpy()).astype(np.float32)


def glee_mean(run: Path) -> dict[str, np.ndarray]:
    """{"GLEE-Net (<run>)": per-AU 3-fold mean F1 as fractions} from the run's results.csv."""
    path = run / "results.csv"
    if not path.is_file():
        return {}
    df = pd.read_csv(path, index_col=0)
    if "mean" not in df.index:
        return {}
    return {f"GLEE-Net ({run.name})": df.loc["mean"].drop("Avg").to_numpy(float) / 100.0}


def main() -> None:
    root = Path(os.environ.get("GLEE_DATA", "data"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prep", type=Path, default=root / "prep", help="preprocessed data root")
    ap.add_argument("--raw", type=Path, default=root / "raw", help="raw data root (truth)")
    ap.add_argument("--dataset", default="bp4d")
    runs = Path(os.environ.get("GLEE_RUNS", "runs"))
    ap.add_argument(
        "--runs",
        type=Path,
        nargs="*",
        default=[runs / "demo", runs / "demo-no-pretrain"],
        help="finetune run folders to show and probe (default: the demo and its twin)",
    )
    ap.add_argument("--seed", type=int, default=0, help="of the permutations")
    args = ap.parse_args()
    try:
        rows, au_names = load_rows(args.prep, args.dataset)
        true_f = true_expressions(args.raw / args.dataset, rows)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    labels = np.stack(rows["labels"].to_numpy()).astype(np.int64)
    folds = rows["fold"].to_numpy()
    fitted = np.stack(rows["expression"].to_numpy()).astype(np.float32)
    print(f"{args.dataset}: {len(rows)} rows, folds {np.bincount(folds)[1:].tolist()}")

    features = {"logistic regression on fitted f_exp": fitted}
    if true_f is not None:
        features["logistic regression on true f_exp"] = true_f
    per_method: dict[str, list[np.ndarray]] = {}
    for name, x in features.items():
        per_method[name] = [fexp_probe_f1(x, labels, folds, k) for k in FOLDS]
    per_method["always present"] = [always_present_f1(labels[folds == k]) for k in FOLDS]

    print("\nmean F1 per fold (%):")
    for name, per_fold in per_method.items():
        cells = " / ".join(f"{100 * f.mean():.1f}" for f in per_fold)
        print(f"  {name}: {cells}  (mean {100 * fold_average(per_fold).mean():.1f})")
    rows_3fold = {name: fold_average(per_fold) for name, per_fold in per_method.items()}
    for run in args.runs:
        rows_3fold.update(glee_mean(run))
    print("\n3-fold average, per AU (%):\n")
    print(to_markdown(f1_table(rows_3fold, au_names)))

    for run in args.runs:
        if not run.is_dir() or not finished_folds(run):
            print(f"{run}: no finished fold, skipped")
            continue
        try:
            reliance = input_reliance(run, args.seed)
        except (EvaluationError, RunFolderError) as exc:
            print(f"{run}: skipped ({exc})")
            continue
        print(f"{run.name}: mean F1 per fold (%) of the trained head")
        for name, values in reliance.items():
            cells = " / ".join(f"{v:.1f}" for v in values)
            print(f"  {name}: {cells}  (mean {np.mean(values):.1f})")


if __name__ == "__main__":
    main()
