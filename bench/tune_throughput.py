"""Search throughput: trials per hour of a search, and the share of pretraining runs the
pretraining cache skipped. Runs the search in a fresh storage folder (a cold cache), after
the data is ready, so the numbers cover the search alone.

python bench/tune_throughput.py                          # the demo search (configs/tune-demo.yaml)
python bench/tune_throughput.py --config tune-smoke --set search.num_samples=4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from glee_platform.session import ensure_ray
from glee_platform.sources import ensure_preprocessed, needed_datasets
from glee_platform.tune import load_search_config, run_search


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tune-demo")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--storage", default="runs/bench-tune", help="parent of the fresh folder")
    args = parser.parse_args(argv)
    storage = Path(args.storage).resolve() / time.strftime("%Y%m%d-%H%M%S")
    search, cfg = load_search_config(args.config, [*args.set, f"resources.storage_path={storage}"])
    ensure_ray()
    t0 = time.perf_counter()
    ensure_preprocessed(cfg, needed_datasets(cfg))
    data_seconds = time.perf_counter() - t0
    result = run_search(search, cfg)
    search_seconds = result.seconds  # includes Ray Tune start-up, excludes data preparation
    rows = result.rows
    folds = sum(r["folds_done"] for r in rows)
    complete = sum(r["status"] == "complete" for r in rows)
    pruned = sum(r["status"] == "pruned" for r in rows)
    needed = result.pretrain_runs + result.pretrain_reused
    print(f"config {args.config}: {len(rows)} trials ({complete} complete, {pruned} pruned)")
    print(f"data ready in {data_seconds:.0f}s; search {search_seconds:.0f}s")
    print(f"trials per hour      {3600 * len(rows) / search_seconds:.1f}")
    print(f"fold runs per hour   {3600 * folds / search_seconds:.1f}")
    print(
        f"folds ASHA skipped   {len(rows) * result.num_folds - folds} of {len(rows) * result.num_folds}"
    )
    share = result.pretrain_reused / needed if needed else 0.0
    print(
        f"pretraining: {result.pretrain_runs} run, {result.pretrain_reused} reused from the "
        f"cache = {100 * share:.0f}% of {needed} trials' pretraining skipped"
    )
    print(result.summary())
    print(f"leaderboard: {result.path / 'leaderboard.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
