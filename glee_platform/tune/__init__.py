"""Hyper-parameter search on Ray Tune with Optuna (see glee_platform.tune.search).

space.py        the search config: parameters, ranges, the define-by-run space
searcher.py     Optuna TPE as a Tune searcher, a report per fold, pruned trials marked
scheduler.py    ASHA over folds, its rungs rebuilt when a search is restored
trial.py        one trial: its config, the shared pretraining cache, its folds
search.py       the driver: run or resume a search
leaderboard.py  leaderboard.md / .csv and best.yaml
"""

from glee_platform.tune.leaderboard import leaderboard_rows, write_leaderboard
from glee_platform.tune.scheduler import FoldASHA
from glee_platform.tune.search import SearchResult, cache_dir, run_search, trial_concurrency
from glee_platform.tune.searcher import FoldOptunaSearch
from glee_platform.tune.space import (
    PARAMS,
    SearchSection,
    SearchSpace,
    base_values,
    load_search_config,
)
from glee_platform.tune.trial import (
    CACHE_DIR,
    METRIC,
    TIME_ATTR,
    TRIALS_DIR,
    cached_pretrain,
    pinned_paths,
    pretraining_config,
    run_trial,
    trial_config,
    unfinished_pretraining,
)

__all__ = [
    "CACHE_DIR",
    "METRIC",
    "PARAMS",
    "TIME_ATTR",
    "TRIALS_DIR",
    "FoldASHA",
    "FoldOptunaSearch",
    "SearchResult",
    "SearchSection",
    "SearchSpace",
    "base_values",
    "cache_dir",
    "cached_pretrain",
    "leaderboard_rows",
    "load_search_config",
    "pinned_paths",
    "pretraining_config",
    "run_search",
    "run_trial",
    "trial_concurrency",
    "trial_config",
    "unfinished_pretraining",
    "write_leaderboard",
]
