"""Search GLEE-Net hyper-parameters with Ray Tune and Optuna; rerun to resume a stopped search.

python jobs/tune.py                                      # the demo search on synthetic data
python jobs/tune.py --config tune-smoke --set search.num_samples=2
ray job submit --working-dir . -- python jobs/tune.py --config my-search.yaml
"""

from __future__ import annotations

import sys

from glee_platform import cli


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__, default_config="tune-demo")
    args = parser.parse_args(argv)

    def body() -> int:
        from glee_platform.session import say
        from glee_platform.tune import load_search_config, run_search

        search, cfg = load_search_config(args.config, args.set)
        with cli.console(cfg.run_dir, "tune", args.verbose):
            result = run_search(search, cfg)
            say(result.summary())
            say(f"leaderboard: {result.path / 'leaderboard.md'}")
            if result.best is not None:
                say(f"best config: {result.path / 'best.yaml'}")
            say(f"dashboards: python jobs/dashboards.py {result.path}")
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
