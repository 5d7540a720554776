"""Evaluate a finetune run folder: F1 tables beside the paper's, F1 bars, t-SNE, Ave-Var.

python jobs/evaluate.py --run runs/demo                         # each fold on its test part
python jobs/evaluate.py --run runs/paper-bp4d --eval-dataset bp4dplus   # cross-dataset
python jobs/evaluate.py --run runs/ablation-tiny/full --folds 1 --out docs/eval
"""

from __future__ import annotations

import argparse
import sys

from glee.datasets.errors import DatasetError
from glee_platform.config import ConfigError
from glee_platform.data import DataError


def _folds(text: str) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(k) for k in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"folds are a list like 1,2,3, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run folder (runs/<name>)")
    parser.add_argument(
        "--eval-dataset",
        default="",
        help="evaluate every fold's model on all of this dataset (bp4d, bp4dplus, disfa)",
    )
    parser.add_argument("--folds", type=_folds, default=None, help="e.g. 1,2 (default: all)")
    parser.add_argument("--prep", default="", help="preprocessed data folder (default: the run's)")
    parser.add_argument("--out", default="", help="output folder (default: <run>/evaluation/..)")
    parser.add_argument("--max-rows", type=int, default=None, help="evaluate the first N faces")
    parser.add_argument("--cpus-per-task", type=int, default=1, help="CPUs per fold task")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    try:
        from glee_platform.evaluate import EvaluationError, evaluate_run

        try:
            result = evaluate_run(
                args.run,
                eval_dataset=args.eval_dataset or None,
                folds=args.folds,
                prep=args.prep or None,
                out=args.out or None,
                max_rows=args.max_rows,
                cpus_per_task=args.cpus_per_task,
                plots=not args.no_plots,
            )
        except EvaluationError as err:
            raise ConfigError(str(err)) from None
    except (ConfigError, DataError, DatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.files["f1_md"].read_text(encoding="utf-8"))
    for name, path in sorted(result.files.items()):
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
