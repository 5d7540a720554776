"""Finetune GLEE-Net on the folds of an AU dataset (runs pretraining first if it needs it).

python jobs/finetune.py                                  # the embedded demo
python jobs/finetune.py --config paper-bp4d --set finetune.epochs=5
ray job submit --working-dir . -- python jobs/finetune.py --config paper-disfa
"""

from __future__ import annotations

import argparse
import sys

from glee.datasets.errors import DatasetError
from glee_platform.config import ConfigError, load_config
from glee_platform.data import DataError
from glee_platform.preprocess import PreprocessError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo", help="YAML file or preset name (demo)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. finetune.lr=1e-3 (repeatable)",
    )
    parser.add_argument(
        "--compare-no-pretrain",
        action="store_true",
        help="also run the same folds without pretraining (ablation)",
    )
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
        from glee_platform.demo import run_demo

        result = run_demo(cfg, compare_no_pretrain=args.compare_no_pretrain)
    except (ConfigError, DataError, DatasetError, PreprocessError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.summary())
    print(f"results: {cfg.run_dir / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
