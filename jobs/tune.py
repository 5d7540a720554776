"""Search GLEE-Net hyper-parameters with Ray Tune and Optuna; rerun to resume a stopped search.

python jobs/tune.py                                      # the demo search on synthetic data
python jobs/tune.py --config tune-smoke --set search.num_samples=2
ray job submit --working-dir . -- python jobs/tune.py --config my-search.yaml
"""

from __future__ import annotations

import argparse
import sys

from glee.datasets.errors import DatasetError
from glee_platform.config import ConfigError
from glee_platform.data import DataError
from glee_platform.preprocess import PreprocessError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tune-demo", help="YAML file or preset (tune-demo)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a value, e.g. search.num_samples=4 or finetune.epochs=1 (repeatable)",
    )
    args = parser.parse_args(argv)
    try:
        from glee_platform.tune import load_search_config, run_search

        search, cfg = load_search_config(args.config, args.set)
        result = run_search(search, cfg)
    except (ConfigError, DataError, DatasetError, PreprocessError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.summary())
    print(f"leaderboard: {result.path / 'leaderboard.md'}")
    if result.best is not None:
        print(f"best config: {result.path / 'best.yaml'}")
    print(f"tensorboard --logdir {result.path}")
    print(f"optuna-dashboard sqlite:///{result.path / 'optuna.db'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
