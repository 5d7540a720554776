"""Hyper-parameter search on Ray Tune: Optuna TPE over the triplet margins, both learning
rates and the Transformer classifier; a trial's score is its mean F1 over the folds.

A trial (`run_trial`, a Tune function trainable) pretrains the global and local branches
unless the shared cache already holds a pretraining of the same config, then finetunes
fold 1, 2, 3 in turn (each a Ray Train run) and reports `folds_done` and the running mean
F1 after every fold. ASHA (time_attr `folds_done`) stops poor trials after a fold;
`OptunaFoldSearch` (TPE, define-by-run space) keeps its study in SQLite. Running the same
search again resumes it with `Tuner.restore`: finished trials are not run again.

Experiment folder (`<storage>/<name>/`):

    tuner.pkl, experiment_state-*.json   Tune's state (resume), search.yaml (what was asked)
    run_trial_<trial id>_.../            Tune's trial folders: params, progress, TensorBoard
    trials/<trial id>/                   the trial's Train runs fold1/, fold2/, ..., results.md
    optuna.db                            the study: optuna-dashboard sqlite:///<...>/optuna.db
    leaderboard.md, leaderboard.csv      every trial: parameters, per-fold F1, mean, status
    best.yaml                            the best trial's config (jobs/finetune.py --config)

Pretraining runs are cached beside it, in `<storage>/pretrain-cache/<hash>/pretrain/`: every
trial of every search in that storage whose pretraining config hashes the same reuses them.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from optuna.trial import TrialState
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from glee.files import write_text_atomic
from glee.model.config import CLASSIFIERS
from glee_platform import data as gdata
from glee_platform.config import ConfigError, ExperimentConfig, load_config, resolve_preset
from glee_platform.demo import ensure_preprocessed, needed_datasets
from glee_platform.train import (
    DONE_FILE,
    FinetuneResult,
    RunResult,
    checkpoint_epoch,
    checkpoints_newest_first,
    ensure_ray,
    model_config,
    pretrain_hash,
    run_finetune_fold,
    run_pretrain,
    write_results,
)

METRIC = "mean_f1"  # running mean over the finished folds of the per-fold mean F1
TIME_ATTR = "folds_done"
TRIALS_DIR = "trials"
CACHE_DIR = "pretrain-cache"
STARTS_FILE = "starts.txt"  # one line per start of a trial (a restored search restarts some)
TRIAL_MEMORY = 256 * 2**20  # bytes reserved for a trial's own actor (it drives Train runs)

# Searchable parameters: name in the space -> (config section, field). Model fields go to
# model.overrides (GLEEConfig fields).
PARAMS: dict[str, tuple[str, str]] = {
    "margin_one": ("pretrain", "margin_one"),  # Sec. IV-B: 0.1
    "margin_two_three": ("pretrain", "margin_two_three"),  # Sec. IV-B: 0.2
    "pretrain_lr": ("pretrain", "lr"),  # Sec. IV-B: 2e-4
    "finetune_lr": ("finetune", "lr"),  # Sec. IV-B: 2e-3
    "classifier": ("model", "classifier"),  # Table V: Transformer or MLP
    "classifier_depth": ("model", "classifier_depth"),  # Sec. III-D: 3 encoder layers
    "classifier_heads": ("model", "classifier_heads"),
    "token_dim": ("model", "token_dim"),  # Sec. III-D: 32 on BP4D
}
PARAM_TYPES: dict[str, type] = {
    "margin_one": float,
    "margin_two_three": float,
    "pretrain_lr": float,
    "finetune_lr": float,
    "classifier": str,
    "classifier_depth": int,
    "classifier_heads": int,
    "token_dim": int,
}
TRANSFORMER_ONLY = ("classifier_depth", "classifier_heads")  # suggested only for "transformer"
# GLEEConfig fields of the AU head alone: pretraining trains the branches (Sec. III-E), so
# trials that differ only in these share one pretraining.
HEAD_FIELDS = (
    "num_aus",
    "classifier",
    "token_dim",
    "token_hidden",
    "classifier_depth",
    "classifier_heads",
    "classifier_ff_dim",
    "classifier_dropout",
    "mlp_hidden",
    "joint_fc",
)


# =========================================================================== search config


@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter: a range (low..high, optionally log scale or a step) or choices."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """The Optuna suggestion for this parameter on `trial` (define-by-run)."""
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if PARAM_TYPES[self.name] is int:
            step = int(self.step or 1)
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=step, log=self.log
            )
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)

    def candidates(self) -> list[Any] | None:
        """Every value it can take if finite (choices, integer ranges), else None."""
        if self.choices:
            return list(self.choices)
        if PARAM_TYPES[self.name] is int:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        return None

    def contains(self, value: Any) -> bool:
        if self.choices:
            return value in self.choices
        return self.low <= value <= self.high

    @classmethod
    def parse(cls, name: str, spec: Any) -> ParamSpec:
        where = f"search.space.{name}"
        if name not in PARAMS:
            raise ConfigError(f"{where}: unknown parameter; searchable are {', '.join(PARAMS)}")
        if not isinstance(spec, Mapping):
            raise ConfigError(
                f"{where}={spec!r}: give {{low: .., high: ..}} (log: true, step: ..) or "
                "{choices: [..]}; to fix a value, set it in its section instead"
            )
        kind = PARAM_TYPES[name]
        unknown = sorted(set(spec) - {"low", "high", "log", "step", "choices"})
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {unknown}: use low, high, log, step, choices"
            )
        if "choices" in spec:
            if set(spec) != {"choices"} or not isinstance(spec["choices"], list | tuple):
                raise ConfigError(f"{where}: choices is a list and takes no other keys")
            choices = tuple(_typed(f"{where}.choices", v, kind) for v in spec["choices"])
            if not choices:
                raise ConfigError(f"{where}.choices is empty: list at least one value")
            if name == "classifier":
                for c in choices:
                    if c not in CLASSIFIERS:
                        raise ConfigError(
                            f"{where}: {c!r} is not a classifier: {list(CLASSIFIERS)}"
                        )
            return cls(name, choices=choices)
        if kind is str:
            raise ConfigError(f"{where}: a {name} is searched over choices: [..]")
        if "low" not in spec or "high" not in spec:
            raise ConfigError(f"{where}: a range needs low and high")
        low = _typed(f"{where}.low", spec["low"], kind)
        high = _typed(f"{where}.high", spec["high"], kind)
        log = spec.get("log", False)
        step = spec.get("step")
        if not isinstance(log, bool):
            raise ConfigError(f"{where}.log={log!r} must be true or false")
        if step is not None:
            step = _typed(f"{where}.step", step, kind)
            if step <= 0 or log:
                raise ConfigError(f"{where}.step={step!r}: a step is > 0 and not on a log scale")
        if not low <= high:
            raise ConfigError(f"{where}: low={low} is above high={high}")
        floor = 0 if name.startswith("margin") else 1e-12
        if low < floor or (log and low <= 0):
            raise ConfigError(f"{where}.low={low} is too small: it must be > 0")
        return cls(name, low=low, high=high, log=log, step=step)


def _typed(where: str, value: Any, kind: type) -> Any:
    if kind is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}={value!r} must be a string")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        raise ConfigError(f"{where}={value!r} must be a positive integer")
    if isinstance(value, str):  # YAML reads 2e-4 (no dot) as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ConfigError(f"{where}={value!r} must be a number")


@dataclass
class SearchSection:
    """The `search:` section of a search config; the other sections are the base experiment."""

    num_samples: int = 8  # trials
    max_concurrent_trials: int = 0  # 0: as many as the cluster fits (Train workers' CPUs/GPUs)
    trial_cpus: float = 0.0  # the trial's own actor; its Train workers reserve their own
    seed: int = 0  # TPE sampler seed
    startup_trials: int = 4  # TPE samples at random for this many trials first
    grace_period: int = 1  # folds before ASHA may stop a trial
    reduction_factor: int = 2  # ASHA keeps the best 1/reduction_factor at each rung
    start_from_base: bool = True  # the first trial evaluates the base config's values
    space: dict[str, ParamSpec] = field(default_factory=dict)

    def check(self, cfg: ExperimentConfig) -> SearchSection:
        for name, low in (("num_samples", 1), ("max_concurrent_trials", 0), ("grace_period", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"search.{name}={getattr(self, name)} must be >= {low}")
        if self.startup_trials < 0 or self.trial_cpus < 0:
            raise ConfigError("search.startup_trials and search.trial_cpus must be >= 0")
        if self.reduction_factor < 2:
            raise ConfigError(f"search.reduction_factor={self.reduction_factor} must be >= 2")
        if not self.space:
            raise ConfigError("search.space is empty: list the parameters to search")
        if self.grace_period > len(cfg.finetune.folds):
            raise ConfigError(
                f"search.grace_period={self.grace_period} is more than the "
                f"{len(cfg.finetune.folds)} fold(s) of finetune.folds"
            )
        # every token size the search can draw must split into every head count it can draw
        head = model_config(cfg, 12)
        tokens = self._values("token_dim", head.token_dim)
        heads = self._values("classifier_heads", head.classifier_heads)
        if tokens is None or heads is None:
            raise ConfigError(
                "search.space: token_dim and classifier_heads need choices or int ranges"
            )
        bad = [(t, h) for t in tokens for h in heads if t % h]
        if bad:
            raise ConfigError(
                f"search.space: token_dim {bad[0][0]} is not divisible by classifier_heads "
                f"{bad[0][1]}: pick heads that divide every token size"
            )
        return self

    def _values(self, name: str, base: Any) -> list[Any] | None:
        return self.space[name].candidates() if name in self.space else [base]

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in SEARCH_KEYS if k != "space"}
        out["space"] = {name: _spec_dict(spec) for name, spec in self.space.items()}
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchSection:
        if not isinstance(d, Mapping):
            raise ConfigError(f"search must be a mapping, got {d!r}")
        unknown = sorted(set(d) - set(SEARCH_KEYS))
        if unknown:
            raise ConfigError(
                f"unknown key(s) search.{unknown[0]}: allowed {', '.join(SEARCH_KEYS)}"
            )
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key == "space":
                if not isinstance(value, Mapping):
                    raise ConfigError("search.space must map parameter names to ranges or choices")
                kwargs[key] = {n: ParamSpec.parse(n, s) for n, s in value.items()}
            elif key == "start_from_base":
                if not isinstance(value, bool):
                    raise ConfigError(f"search.start_from_base={value!r} must be true or false")
                kwargs[key] = value
            elif key == "trial_cpus":
                kwargs[key] = _typed("search.trial_cpus", value, float)
            elif isinstance(value, int) and not isinstance(value, bool):
                kwargs[key] = value
            else:
                raise ConfigError(f"search.{key}={value!r} must be an integer")
        return cls(**kwargs)


SEARCH_KEYS = (
    "num_samples",
    "max_concurrent_trials",
    "trial_cpus",
    "seed",
    "startup_trials",
    "grace_period",
    "reduction_factor",
    "start_from_base",
    "space",
)


def _spec_dict(spec: ParamSpec) -> dict[str, Any]:
    if spec.choices:
        return {"choices": list(spec.choices)}
    out: dict[str, Any] = {"low": spec.low, "high": spec.high}
    if spec.log:
        out["log"] = True
    if spec.step is not None:
        out["step"] = spec.step
    return out


def load_search_config(
    path: str | Path | None = None, overrides: Sequence[str] = ()
) -> tuple[SearchSection, ExperimentConfig]:
    """The search section and the base experiment of a search YAML, then `a.b=value`
    overrides (`search.num_samples=3`, `finetune.epochs=1`)."""
    d: dict[str, Any] = {}
    if path is not None:
        file = resolve_preset(path)
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ConfigError(f"config {file} is not valid YAML: {err}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config {file} must hold a mapping of sections, not {loaded!r}")
        d = loaded or {}
    search_d = d.pop("search", None) or {}
    rest = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not key.startswith("search."):
            rest.append(item)
            continue
        if not sep:
            raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. search.num_samples=4)")
        node = search_d
        parts = key.split(".")[1:]
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {part!r} is a value, not a section")
        node[parts[-1]] = yaml.safe_load(text) if text.strip() else ""
    cfg = load_config(None, rest, **d)
    return SearchSection.from_dict(search_d).check(cfg), cfg


# =========================================================================== trial side


class SearchSpace:
    """The define-by-run space: `space(trial)` suggests every parameter of the section;
    depth and heads only when the classifier is the Transformer (Sec. III-D)."""

    def __init__(self, specs: Mapping[str, ParamSpec], base_classifier: str) -> None:
        self.specs = dict(specs)
        self.base_classifier = base_classifier

    def __call__(self, trial: Any) -> None:
        for name in ("margin_one", "margin_two_three", "pretrain_lr", "finetune_lr"):
            if name in self.specs:
                self.specs[name].suggest(trial)
        classifier = self.base_classifier
        if "classifier" in self.specs:
            classifier = self.specs["classifier"].suggest(trial)
        if "token_dim" in self.specs:
            self.specs["token_dim"].suggest(trial)
        if classifier == "transformer":
            for name in TRANSFORMER_ONLY:
                if name in self.specs:
                    self.specs[name].suggest(trial)


def base_values(search: SearchSection, cfg: ExperimentConfig) -> dict[str, Any]:
    """The base config's value of every searched parameter the space can draw (trial 0)."""
    head = model_config(cfg, 12)
    current = {
        "margin_one": cfg.pretrain.margin_one,
        "margin_two_three": cfg.pretrain.margin_two_three,
        "pretrain_lr": cfg.pretrain.lr,
        "finetune_lr": cfg.finetune.lr,
        "classifier": head.classifier,
        "classifier_depth": head.classifier_depth,
        "classifier_heads": head.classifier_heads,
        "token_dim": head.token_dim,
    }
    out = {n: current[n] for n, spec in search.space.items() if spec.contains(current[n])}
    if out.get("classifier", head.classifier) != "transformer":
        for name in TRANSFORMER_ONLY:
            out.pop(name, None)
    return out


def pinned_paths(cfg: ExperimentConfig) -> dict[str, Any]:
    """`cfg` as a dict with its data and storage paths made absolute where the driver runs.

    A trial runs in a working directory of Tune's (and, under `ray job submit`, in the
    unpacked working_dir): a relative `data/prep` there is another, empty folder."""
    d = cfg.to_dict()
    d["data"]["root"] = str(cfg.data_root)
    d["data"]["prep"] = str(cfg.prep_dir)
    d["resources"]["storage_path"] = cfg.storage_path
    return d


def trial_config(
    base: ExperimentConfig, params: Mapping[str, Any], name: str, storage: str | Path
) -> ExperimentConfig:
    """The base config with a trial's parameters applied, named `name` under `storage`."""
    d = base.to_dict()
    for key, value in params.items():
        if key not in PARAMS or value is None:  # None: a conditional parameter not drawn
            continue
        section, fld = PARAMS[key]
        if section == "model":
            d["model"]["overrides"][fld] = value
        else:
            d[section][fld] = value
    d["name"] = name
    d["resources"]["storage_path"] = str(storage)
    return ExperimentConfig.from_dict(d)


def pretraining_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """`cfg` as pretraining sees it: the head fields dropped from model.overrides, so trials
    that differ only in the classifier or finetuning hash to the same pretraining."""
    d = cfg.to_dict()
    d["model"]["overrides"] = {
        k: v for k, v in d["model"]["overrides"].items() if k not in HEAD_FIELDS
    }
    return ExperimentConfig.from_dict(d)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock: released by the kernel if its holder dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def unfinished_pretraining(folder: Path) -> str | None:
    """The Train run name of a pretraining in `folder` (`<cache>/<hash>/pretrain`) that an
    earlier trial started and did not finish (its trial died), if it left a checkpoint:
    the newest such run. None when the folder's pretraining is done or never checkpointed."""
    if (folder / DONE_FILE).is_file():
        return None
    newest: tuple[int, str] | None = None
    for run in folder.glob("*_pretrain"):
        found = checkpoints_newest_first(run)
        if found and (newest is None or checkpoint_epoch(found[0]) > newest[0]):
            newest = (checkpoint_epoch(found[0]), run.name)
    return newest[1] if newest else None


def cached_pretrain(
    cfg: ExperimentConfig, cache_dir: Path, trial_id: str | None = None
) -> RunResult:
    """Pretrain into `<cache_dir>/<pretrain hash>/pretrain`, or reuse the finished run there.

    A lock per hash makes a concurrent trial of the same pretraining config wait and then
    reuse the run instead of pretraining a second time; `.reused` says which happened.
    The Train run is named `<trial_id>_pretrain` after the trial that ran it; a run that a
    dead trial left unfinished is resumed from its last checkpoint, under its own name,
    by the next trial of the same pretraining config.
    """
    pcfg = pretraining_config(cfg)
    key = pretrain_hash(pcfg)
    pcfg.name = key
    pcfg.resources.storage_path = str(cache_dir)
    name = f"{trial_id}_pretrain" if trial_id else None
    with _file_lock(Path(cache_dir) / f"{key}.lock"):
        earlier = unfinished_pretraining(pcfg.run_dir / "pretrain")
        if earlier is not None and earlier != name:
            print(f"[glee] trial {trial_id}: resuming the unfinished pretraining {earlier}")
            name = earlier
        return run_pretrain(pcfg, run_name=name)


def run_trial(
    config: dict[str, Any], base: dict[str, Any], experiment_dir: str, cache_dir: str
) -> None:
    """One trial (a Tune function trainable): pretrain (or reuse), then every fold in turn."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    exp = Path(experiment_dir)
    cfg = trial_config(ExperimentConfig.from_dict(base), config, trial_id, exp / TRIALS_DIR)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    with open(cfg.run_dir / STARTS_FILE, "a", encoding="utf-8") as fh:
        fh.write(time.strftime("%Y-%m-%d %H:%M:%S\n"))
    au_names = list(gdata.read_manifest(cfg.prep_dir, cfg.data.dataset)["au_names"])
    gcfg = model_config(cfg, len(au_names))
    pre = None
    if cfg.finetune.init == "pretrain" and gcfg.uses_pretraining and gcfg.has_embedding:
        pre = cached_pretrain(cfg, Path(cache_dir), trial_id)
    folds: dict[int, RunResult] = {}
    f1: dict[int, np.ndarray] = {}
    baseline: dict[int, np.ndarray] = {}
    for k in cfg.finetune.folds:
        # each fold is a Train run named from the trial id: `<trial_id>_fold<k>` in the
        # Ray dashboard, in <trial folder>/fold<k>/<trial_id>_fold<k>/ on disk
        folds[k], baseline[k] = run_finetune_fold(
            cfg, k, pre.checkpoint if pre else None, run_name=f"{trial_id}_fold{k}"
        )
        f1[k] = np.array([folds[k].final[f"val_f1_{n}"] for n in au_names], np.float64)
        if len(f1) == len(cfg.finetune.folds):  # before the last report: Tune stops the trial
            write_results(cfg, FinetuneResult(au_names, folds, f1, baseline))
        tune.report(
            {
                TIME_ATTR: len(f1),
                METRIC: float(np.mean([v.mean() for v in f1.values()])),
                **{f"f1_fold{j}": float(v.mean()) for j, v in f1.items()},
                "pretrained": pre is not None,
                "pretrain_reused": bool(pre is not None and pre.reused),
                "pretrain_seconds": pre.seconds if pre is not None else 0.0,
            }
        )


# =========================================================================== driver side


class OptunaFoldSearch(OptunaSearch):
    """OptunaSearch whose intermediate values are per fold (step = folds done) and which
    records a trial ASHA stopped before its last fold as PRUNED, not COMPLETE."""

    def __init__(self, *args: Any, num_folds: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._num_folds = num_folds

    def suggest(self, trial_id: str) -> dict | None:
        params = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr("tune_trial_id", trial_id)
        return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        self._ot_trials[trial_id].report(result[self.metric], int(result[TIME_ATTR]))

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        done = int(result.get(TIME_ATTR, 0)) if result else 0
        pruned = result and not error and 0 < done < self._num_folds
        if not pruned or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        ot_trial = self._ot_trials[trial_id]
        ot_trial.report(result[self.metric], done)  # the result ASHA stopped it on
        self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)


class FoldASHA(ASHAScheduler):
    """ASHA over folds whose rungs survive a restore: Tune does not save the scheduler, so
    the rung values of finished trials are rebuilt from their per-fold F1 (the running mean
    at each rung) when the restored trials are added. Uses ASHA's bracket internals
    (`_trial_info`, `_rungs`) of Ray 2.60."""

    def __init__(self, *, folds: Sequence[int], **kwargs: Any) -> None:
        super().__init__(time_attr=TIME_ATTR, max_t=len(folds), **kwargs)
        self._folds = list(folds)

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)
        result = trial.last_result or {}
        done = int(result.get(TIME_ATTR, 0))
        if trial.status != Trial.TERMINATED or not done:
            return  # a resumed trial reports its folds again and is judged then
        f1 = [float(result[f"f1_fold{k}"]) for k in self._folds[:done]]
        for milestone, recorded in self._trial_info[trial.trial_id]._rungs:
            if milestone <= done:
                recorded[trial.trial_id] = self._metric_op * float(np.mean(f1[: int(milestone)]))


def trial_concurrency(search: SearchSection, cfg: ExperimentConfig) -> int:
    """search.max_concurrent_trials, or as many trials as the cluster's CPUs (GPUs) fit."""
    import ray

    if search.max_concurrent_trials:
        return search.max_concurrent_trials
    have = ray.cluster_resources()
    r = cfg.resources
    per_trial = r.num_workers * r.cpus_per_worker + search.trial_cpus
    n = int(have.get("CPU", 0) // per_trial)
    gpus = have.get("GPU", 0)
    if r.use_gpu is True or (r.use_gpu == "auto" and gpus >= 1):
        n = min(n, int(gpus // r.num_workers))
    return max(1, n)


def experiment_dir(cfg: ExperimentConfig) -> Path:
    """`<storage>/<name>/`: Tune's experiment folder of the search."""
    return cfg.run_dir


def cache_dir(cfg: ExperimentConfig) -> Path:
    """`<storage>/pretrain-cache/`: pretraining runs shared by every search in the storage."""
    return Path(cfg.storage_path) / CACHE_DIR


@dataclass
class SearchResult:
    path: Path
    rows: list[dict[str, Any]]  # leaderboard order: complete by mean F1, then pruned, errors
    best: ExperimentConfig | None
    num_folds: int
    seconds: float

    @property
    def pretrain_runs(self) -> int:
        return sum(1 for r in self.rows if r["pretrained"] and not r["pretrain_reused"])

    @property
    def pretrain_reused(self) -> int:
        return sum(1 for r in self.rows if r["pretrained"] and r["pretrain_reused"])

    def summary(self) -> str:
        done = sum(r["status"] == "complete" for r in self.rows)
        pruned = sum(r["status"] == "pruned" for r in self.rows)
        lines = [
            f"{len(self.rows)} trials ({done} complete, {pruned} pruned) in {self.seconds:.0f}s; "
            f"pretraining cache: {self.pretrain_runs} run, {self.pretrain_reused} reused",
        ]
        if self.rows and self.rows[0]["status"] == "complete":
            top = self.rows[0]
            params = ", ".join(f"{k}={_fmt(top[k])}" for k in PARAMS if top.get(k) is not None)
            lines.append(f"best: trial {top['trial_id']} mean F1 {top['mean_f1']:.1f} ({params})")
        return "\n".join(lines)


def run_search(search: SearchSection, cfg: ExperimentConfig) -> SearchResult:
    """Run (or resume) the search; write the leaderboard and best.yaml in its folder."""
    import optuna
    from ray import tune

    ensure_ray()
    t0 = time.perf_counter()
    ensure_preprocessed(cfg, needed_datasets(cfg))
    exp = experiment_dir(cfg)
    _check_same_search(exp, search, cfg)
    folds = len(cfg.finetune.folds)
    r = cfg.resources
    if r.num_workers * r.cpus_per_worker + search.trial_cpus > _cluster_cpus():
        raise ConfigError(
            f"a trial needs {r.num_workers} x {r.cpus_per_worker} + {search.trial_cpus:g} "
            f"CPUs but this Ray cluster has {_cluster_cpus():g}: lower resources.num_workers, "
            "resources.cpus_per_worker or search.trial_cpus"
        )
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            base=pinned_paths(cfg),
            experiment_dir=str(exp),
            cache_dir=str(cache_dir(cfg)),
        ),
        # A placement group needs some resource: memory stands in when trial_cpus is 0.
        {"CPU": search.trial_cpus, "memory": TRIAL_MEMORY},
    )
    if tune.Tuner.can_restore(str(exp)):
        print(f"[glee] resuming the search in {exp}")
        tuner = tune.Tuner.restore(str(exp), trainable)
    else:
        exp.mkdir(parents=True, exist_ok=True)
        storage = optuna.storages.RDBStorage(f"sqlite:///{exp / 'optuna.db'}")
        head = model_config(cfg, 12)
        searcher = OptunaFoldSearch(
            space=SearchSpace(search.space, head.classifier),
            metric=METRIC,
            mode="max",
            sampler=optuna.samplers.TPESampler(
                seed=search.seed, n_startup_trials=search.startup_trials
            ),
            study_name=cfg.name,
            storage=storage,
            points_to_evaluate=[base_values(search, cfg)] if search.start_from_base else None,
            num_folds=folds,
        )
        scheduler = FoldASHA(
            folds=cfg.finetune.folds,
            grace_period=search.grace_period,
            reduction_factor=search.reduction_factor,
        )
        concurrency = trial_concurrency(search, cfg)
        print(f"[glee] search {cfg.name}: {search.num_samples} trials, {concurrency} at a time")
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode="max",
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=search.num_samples,
                max_concurrent_trials=concurrency,
            ),
            run_config=tune.RunConfig(
                name=cfg.name,
                storage_path=cfg.storage_path,
                verbose=1,
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
    grid = tuner.fit()
    rows = leaderboard_rows(grid, exp, folds)
    best = None
    if rows and rows[0]["status"] == "complete":
        best = trial_config(cfg, rows[0], f"{cfg.name}-best", cfg.resources.storage_path)
    write_leaderboard(exp, rows, cfg.finetune.folds, best)
    return SearchResult(exp, rows, best, folds, time.perf_counter() - t0)


def _cluster_cpus() -> float:
    import os

    import ray

    if os.environ.get("RAY_ADDRESS", "local") != "local":  # a cluster may autoscale: no refusal
        return math.inf
    return ray.cluster_resources().get("CPU", 0)


def _check_same_search(exp: Path, search: SearchSection, cfg: ExperimentConfig) -> None:
    """search.yaml records what the folder searches; a different config is refused."""
    text = yaml.safe_dump({"search": search.to_dict(), **cfg.to_dict()}, sort_keys=False)
    record = exp / "search.yaml"
    if record.is_file() and record.read_text(encoding="utf-8") != text:
        raise ConfigError(
            f"{exp} holds a search of another config (see its search.yaml): resume it with "
            "the same config, or give this one another name (--set name=...)"
        )
    write_text_atomic(record, text)


def leaderboard_rows(grid: Any, exp: Path, num_folds: int) -> list[dict[str, Any]]:
    """One row per trial: parameters, per-fold and mean F1 (%), status, pretraining, starts."""
    rows = []
    for result in grid:
        m = result.metrics or {}
        trial_id = m.get("trial_id") or Path(result.path).name
        done = int(m.get(TIME_ATTR, 0))
        status = "complete" if done == num_folds else "pruned" if done else "not run"
        if result.error is not None:
            status = "error"
        starts = exp / TRIALS_DIR / trial_id / STARTS_FILE
        row: dict[str, Any] = {
            "trial_id": trial_id,
            "status": status,
            "folds_done": done,
            "mean_f1": 100 * m[METRIC] if METRIC in m else None,
            "pretrained": bool(m.get("pretrained", False)),
            "pretrain_reused": bool(m.get("pretrain_reused", False)),
            "starts": len(starts.read_text().splitlines()) if starts.is_file() else 0,
        }
        row.update({k: result.config.get(k) for k in PARAMS})
        for key, value in m.items():
            if key.startswith("f1_fold"):
                row[key] = 100 * value
        rows.append(row)
    order = {"complete": 0, "pruned": 1, "error": 2, "not run": 3}
    rows.sort(key=lambda r: (order[r["status"]], -(r["mean_f1"] or 0.0), r["trial_id"]))
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def write_leaderboard(
    exp: Path, rows: list[dict[str, Any]], folds: Sequence[int], best: ExperimentConfig | None
) -> None:
    """leaderboard.md / leaderboard.csv (F1 in %), and best.yaml when a trial completed."""
    params = [k for k in PARAMS if any(r.get(k) is not None for r in rows)]
    fold_cols = [f"f1_fold{k}" for k in folds]
    cols = ["trial_id", "status", *params, *fold_cols, "mean_f1", "pretrain_reused", "starts"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: _cell(r.get(c)) for c in cols})
    write_text_atomic(exp / "leaderboard.csv", buf.getvalue())
    head = ["rank", *cols]
    lines = [
        f"# Search {exp.name}: mean F1 (%) over folds {', '.join(map(str, folds))}",
        "",
        "Pruned: ASHA stopped the trial after the folds shown; - : not drawn (conditional) or "
        "not run.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for i, r in enumerate(rows, 1):
        cells = [str(i)] + [
            f"{r[c]:.1f}"
            if c in fold_cols + ["mean_f1"] and r.get(c) is not None
            else _fmt(r.get(c))
            for c in cols
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if best is not None:
        lines += [
            "",
            f"Best config: best.yaml (`python jobs/finetune.py --config {exp / 'best.yaml'}`)",
        ]
    write_text_atomic(exp / "leaderboard.md", "\n".join(lines) + "\n")
    if best is not None:
        write_text_atomic(exp / "best.yaml", best.to_yaml())


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value
