"""Finetune GLEE-Net on the folds of an AU dataset (runs pretraining first if it needs it).

python jobs/finetune.py                                  # the embedded demo
python jobs/finetune.py --config paper-bp4d --set finetune.epochs=5
ray job submit --working-dir . -- python jobs/finetune.py --config paper-disfa
"""

from __future__ import annotations

import sys

from glee_platform import cli


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__, default_config="demo")
    parser.add_argument(
        "--compare-no-pretrain",
        action="store_true",
        help="also run the same folds without pretraining (ablation)",
    )
    parser.add_argument(
        "--force", action="store_true", help="preprocess again a data folder made otherwise"
    )
    args = parser.parse_args(argv)

    def body() -> int:
        from glee_platform.config import load_config
        from glee_platform.experiment import run_experiment
        from glee_platform.session import say

        cfg = load_config(args.config, args.set)
        with cli.console(cfg.run_dir, "finetune", args.verbose):
            result = run_experiment(
                cfg, compare_no_pretrain=args.compare_no_pretrain, force_preprocess=args.force
            )
            say(result.summary())
            say(f"results: {cfg.run_dir / 'results.md'}")
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
