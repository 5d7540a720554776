"""Evaluate a finetune run folder: F1 tables beside the paper's, F1 bars, t-SNE, Ave-Var.

python jobs/evaluate.py --run runs/demo                         # each fold on its test part
python jobs/evaluate.py --run runs/paper-bp4d --eval-dataset bp4dplus   # cross-dataset
python jobs/evaluate.py --run runs/ablation-tiny/full --folds 1 --out docs/eval
"""

from __future__ import annotations

import argparse
import sys

from glee_platform import cli


def _folds(text: str) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(k) for k in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"folds are a list like 1,2,3, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__)
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

    def body() -> int:
        from glee_platform.evaluate import evaluate_run
        from glee_platform.session import say

        with cli.console(args.out or args.run, "evaluate", args.verbose):
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
            say(result.files["f1_md"].read_text(encoding="utf-8"))
            for name, path in sorted(result.files.items()):
                say(f"{name}: {path}")
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
