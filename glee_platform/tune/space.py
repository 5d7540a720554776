"""The search config: which parameters a search draws, from what ranges (the `search:`
section of a search YAML; the other sections are the base experiment), and the
define-by-run space Optuna samples (Sec. III-D: depth and heads only for the Transformer).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from glee.model.config import CLASSIFIERS
from glee.typed_config import at_least, coerce, from_mapping
from glee_platform.config import (
    ConfigError,
    ExperimentConfig,
    load_config,
    parse_override,
    read_config_file,
    set_dotted,
)
from glee_platform.train import model_config

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
    """`value` as `kind`; integers of a search range are positive, numbers finite."""
    value = coerce(kind, value, where)
    if kind is int and value <= 0:
        raise ConfigError(f"{where}={value!r} must be a positive integer")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{where}={value!r} must be a finite number")
    return value


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
    space: dict[str, Any] = field(default_factory=dict)  # name -> ParamSpec

    def check(self, cfg: ExperimentConfig) -> SearchSection:
        for name, low in (
            ("num_samples", 1),
            ("max_concurrent_trials", 0),
            ("grace_period", 1),
            ("startup_trials", 0),
            ("trial_cpus", 0),
            ("reduction_factor", 2),
        ):
            at_least(f"search.{name}", getattr(self, name), low)
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
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "space"}
        out["space"] = {name: _spec_dict(spec) for name, spec in self.space.items()}
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchSection:
        if not isinstance(d, Mapping):
            raise ConfigError(f"search must be a mapping, got {d!r}")
        rest = {k: v for k, v in d.items() if k != "space"}
        section = from_mapping(cls, rest, prefix="search.")
        space = d.get("space", {})
        if not isinstance(space, Mapping):
            raise ConfigError("search.space must map parameter names to ranges or choices")
        section.space = {n: ParamSpec.parse(n, s) for n, s in space.items()}
        return section


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
    d = read_config_file(path) if path is not None else {}
    search_d = d.pop("search", None) or {}
    rest = []
    for item in overrides:
        if not item.startswith("search."):
            rest.append(item)
            continue
        key, value = parse_override(item)
        set_dotted(search_d, key.removeprefix("search."), value)
    cfg = load_config(None, rest, **d)
    return SearchSection.from_dict(search_d).check(cfg), cfg


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
