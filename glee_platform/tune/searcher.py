"""Optuna TPE as a Ray Tune searcher whose trials report once per fold.

Written on the public APIs of both libraries (`ray.tune.search.Searcher`; Optuna's
ask-and-tell: `study.ask`, `trial.report`, `study.tell`, `study.enqueue_trial`): an
intermediate value per fold (step = folds done, the running mean F1), a trial that ASHA
stopped before its last fold told as PRUNED (not COMPLETE), and the Tune trial id kept
as the Optuna trial's user attribute `tune_trial_id`, so the SQLite study reads in
optuna-dashboard beside Tune's trial folders.

Restoring a search (`Tuner.restore`): the study lives in its SQLite file; a trial that
was running when the driver died is told FAIL, and when Tune runs it again its results go
to a new Optuna trial with the same parameters.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

TUNE_TRIAL_ID = "tune_trial_id"


class FoldOptunaSearch(Searcher):
    """Define-by-run Optuna search; `space(trial)` draws a trial's parameters."""

    def __init__(
        self,
        space: Callable[[optuna.Trial], Any],
        metric: str,
        mode: str,
        *,
        time_attr: str,
        num_folds: int,
        sampler: optuna.samplers.BaseSampler | None = None,
        study_name: str | None = None,
        storage: str | None = None,
        points_to_evaluate: list[Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self.space = space
        self.time_attr = time_attr
        self.num_folds = num_folds
        self.sampler = sampler
        self.study_name = study_name
        self.storage = storage  # a database URL (sqlite:///...) or None: in memory
        self.points = [dict(p) for p in points_to_evaluate or []]
        self._study: optuna.Study | None = None
        self._trials: dict[str, optuna.Trial] = {}
        self._params: dict[str, dict[str, Any]] = {}
        self._done: set[str] = set()

    # An in-memory study cannot travel with Tune's pickle of the searcher; the SQLite one
    # is reopened from its file.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_study"] = None if self.storage else state["_study"]
        state["_trials"] = {} if self.storage else state["_trials"]
        return state

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            direction = "maximize" if self.mode == "max" else "minimize"
            self._study = optuna.create_study(
                study_name=self.study_name,
                storage=self.storage,
                sampler=self.sampler,
                direction=direction,
                load_if_exists=True,
            )
        return self._study

    def _ask(self, trial_id: str, params: Mapping[str, Any] | None) -> optuna.Trial:
        if params is not None:
            self.study.enqueue_trial(dict(params))
        trial = self.study.ask()
        self.space(trial)  # define-by-run: the enqueued values, else the sampler's
        trial.set_user_attr(TUNE_TRIAL_ID, trial_id)
        self._trials[trial_id] = trial
        self._params[trial_id] = dict(trial.params)
        return trial

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        trial = self._ask(trial_id, self.points.pop(0) if self.points else None)
        return dict(trial.params)

    def _trial(self, trial_id: str) -> optuna.Trial | None:
        """This Tune trial's Optuna trial; a new one with its parameters after a restore."""
        if trial_id in self._done:
            return None
        if trial_id not in self._trials and trial_id in self._params:
            self._ask(trial_id, self._params[trial_id])
        return self._trials.get(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        trial = self._trial(trial_id)
        if trial is not None and self.metric in result:
            trial.report(float(result[self.metric]), int(result[self.time_attr]))

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        trial = self._trial(trial_id)
        if trial is None:
            return
        self._done.add(trial_id)
        done = int(result.get(self.time_attr, 0)) if result else 0
        if error or not result or self.metric not in result:
            self.study.tell(trial, state=TrialState.FAIL)
        elif done < self.num_folds:  # ASHA stopped it after `done` folds
            trial.report(float(result[self.metric]), done)  # the result it was judged on
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            self.study.tell(trial, float(result[self.metric]))

    def save(self, checkpoint_path: str) -> None:
        state = {"params": self._params, "done": sorted(self._done), "points": self.points}
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(state, fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            state = pickle.load(fh)
        self._params = dict(state["params"])
        self._done = set(state["done"])
        self.points = list(state["points"])
        self._trials = {}
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            self.study.tell(frozen.number, state=TrialState.FAIL)  # its driver died
