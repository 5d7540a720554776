"""Asynchronous successive halving over folds, on Ray Tune's public scheduler API.

A trial reports once per fold (`time_attr` = folds done, metric = the running mean F1).
At each rung (grace_period * reduction_factor^k folds, below the number of folds) a trial
goes on only if its metric is in the best 1/reduction_factor of the trials that reached
that rung before it (ASHA, Li et al. 2020, one bracket).

Tune does not save schedulers with a search, so a restored search starts with empty
rungs; `on_trial_add` refills them from the per-fold F1 (`f1_fold<k>`) of trials restored
as finished, so trials after a restore are judged against the same history.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler


class FoldASHA(FIFOScheduler):
    def __init__(
        self,
        *,
        folds: Sequence[int],
        time_attr: str,
        grace_period: int = 1,
        reduction_factor: int = 2,
        metric: str | None = None,
        mode: str | None = None,
    ) -> None:
        super().__init__()
        if grace_period < 1 or reduction_factor < 2:
            raise ValueError("grace_period must be >= 1 and reduction_factor >= 2")
        self.folds = list(folds)
        self.time_attr = time_attr
        self.reduction_factor = reduction_factor
        self.fold_metric, self.fold_mode = metric, mode
        self.rungs: dict[int, dict[str, float]] = {}  # milestone -> trial id -> score
        milestone = grace_period
        while milestone < len(self.folds):
            self.rungs[milestone] = {}
            milestone *= reduction_factor

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        self.fold_metric = self.fold_metric or metric
        self.fold_mode = self.fold_mode or mode
        return True

    def _score(self, value: float) -> float:
        return float(value) if self.fold_mode == "max" else -float(value)

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        result = trial.last_result or {}
        done = int(result.get(self.time_attr, 0))
        if trial.status != Trial.TERMINATED or not done:
            return  # a resumed trial reports its folds again and is judged then
        f1 = [float(result[f"f1_fold{k}"]) for k in self.folds[:done]]
        for milestone, recorded in self.rungs.items():
            if milestone <= done:
                recorded[trial.trial_id] = self._score(np.mean(f1[:milestone]))

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        done = int(result.get(self.time_attr, 0))
        recorded = self.rungs.get(done)
        if recorded is None or self.fold_metric not in result:
            return TrialScheduler.CONTINUE
        score = self._score(result[self.fold_metric])
        others = [v for k, v in recorded.items() if k != trial.trial_id]
        recorded[trial.trial_id] = score
        if not others:
            return TrialScheduler.CONTINUE
        cutoff = np.percentile(others + [score], 100 * (1 - 1 / self.reduction_factor))
        return TrialScheduler.STOP if score < cutoff else TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        sizes = ", ".join(f"{m} fold(s): {len(r)}" for m, r in self.rungs.items())
        return f"FoldASHA rungs ({sizes})"
