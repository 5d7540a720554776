"""Experiment configuration: typed sections, loaded from YAML, validated once at the edge.

A config file is nested YAML with the sections below; every key is optional and
defaults to the paper's setting where the paper gives one (Sec. IV-B). Command-line
overrides use dotted keys: ``--set finetune.lr=1e-3``. `ExperimentConfig.to_flat()`
gives the flat dict logged with every run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from glee.datasets.records import AU_DATASETS
from glee.datasets.registry import DATASETS
from glee.face.fitting import DEFAULT_FIT_MODE, FIT_MODES
from glee.face.landmarks import BACKENDS as LANDMARK_BACKENDS
from glee.typed_config import ConfigError, at_least, choice, from_mapping, in_range, positive

MODEL_PRESETS = ("tiny", "paper")
INIT_CHOICES = ("pretrain", "none")
SYNTHETIC_PRESETS = ("none", "tiny", "demo", "large")
GPU_CHOICES = ("auto", True, False)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class DataSection:
    root: str = ""  # base folder of raw/ and prep/; "" -> $GLEE_DATA or ./data
    synthetic: str = "none"  # a synthetic preset to write when no data.raw is given; none: real
    synthetic_seed: int = 0
    raw: dict[str, str] = field(default_factory=dict)  # dataset -> raw root (real data)
    prep: str = ""  # preprocessed Parquet folder; "" -> <root>/prep
    landmarks: str = "auto"  # landmark backend of the preprocessing (glee.face.landmarks)
    fit_mode: str = DEFAULT_FIT_MODE  # 3DMM fit of the preprocessing (glee.face.fitting)
    dataset: str = "bp4d"  # the AU dataset to finetune on
    max_rows: int = 0  # > 0: use at most this many rows per split (smoke runs)

    def check(self) -> None:
        choice("data.dataset", self.dataset, AU_DATASETS)
        choice("data.synthetic", self.synthetic, SYNTHETIC_PRESETS)
        at_least("data.max_rows", self.max_rows, 0)
        choice("data.landmarks", self.landmarks, LANDMARK_BACKENDS)
        choice("data.fit_mode", self.fit_mode, FIT_MODES)
        for name in self.raw:
            choice("data.raw key", name, DATASETS)


@dataclass
class ModelSection:
    preset: str = "tiny"  # GLEEConfig.tiny / GLEEConfig.paper
    ablation: str = "full"  # GLEEConfig.with_ablation name (Table V)
    overrides: dict[str, Any] = field(default_factory=dict)  # GLEEConfig fields
    # The paper preset's global branch starts from VGGFace2 (Sec. III-A); without the file
    # it refuses to train unless this is true.
    allow_random_init: bool = False

    def check(self) -> None:
        choice("model.preset", self.preset, MODEL_PRESETS)


@dataclass
class PretrainSection:
    # Sec. IV-B: SGD momentum 0.9, lr 2e-4, batch 30, margins 0.1 / 0.2.
    lr: float = 2e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 30
    epochs: int = 10
    margin_one: float = 0.1  # one-class triplets
    margin_two_three: float = 0.2  # two- and three-class triplets
    chain_mining: bool = True  # Sec. III-E hard sample mining
    max_triplets: int = 0  # > 0: use at most this many triplets per epoch source

    def check(self) -> None:
        positive("pretrain.lr", self.lr)
        in_range("pretrain.momentum", self.momentum, 0.0, 1.0)
        at_least("pretrain.weight_decay", self.weight_decay, 0.0)
        at_least("pretrain.batch_size", self.batch_size, 2)
        at_least("pretrain.epochs", self.epochs, 1)
        at_least("pretrain.margin_one", self.margin_one, 0.0)
        at_least("pretrain.margin_two_three", self.margin_two_three, 0.0)
        at_least("pretrain.max_triplets", self.max_triplets, 0)


@dataclass
class FinetuneSection:
    # Sec. IV-B: SGD momentum 0.9, lr 2e-3, 10 epochs.
    lr: float = 2e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    eval_batch_size: int = 64
    epochs: int = 10
    eval_every: int = 1  # evaluate every n epochs (the last epoch always)
    folds: list[int] = field(default_factory=lambda: [1, 2, 3])
    init: str = "pretrain"  # "pretrain": start from the pretraining checkpoint; "none"
    eval_dataset: str = ""  # cross-dataset: evaluate on all of this dataset
    # Not in the paper: also weigh each AU's positives against its negatives in the loss
    # (glee.training.losses.au_balance_weights); false is Sec. IV-B's loss.
    class_balance: bool = False

    def check(self) -> None:
        positive("finetune.lr", self.lr)
        in_range("finetune.momentum", self.momentum, 0.0, 1.0)
        at_least("finetune.weight_decay", self.weight_decay, 0.0)
        at_least("finetune.batch_size", self.batch_size, 1)
        at_least("finetune.eval_batch_size", self.eval_batch_size, 1)
        at_least("finetune.epochs", self.epochs, 1)
        at_least("finetune.eval_every", self.eval_every, 1)
        choice("finetune.init", self.init, INIT_CHOICES)
        if not self.folds:
            raise ConfigError("finetune.folds is empty: list folds among 1, 2, 3")
        for k in self.folds:
            choice("finetune.folds entry", k, (1, 2, 3))
        if len(set(self.folds)) != len(self.folds):
            raise ConfigError(f"finetune.folds={self.folds} repeats a fold: list each once")
        if self.eval_dataset:
            choice("finetune.eval_dataset", self.eval_dataset, ("", *AU_DATASETS))


@dataclass
class ResourcesSection:
    num_workers: int = 1
    use_gpu: str | bool = "auto"  # glee_platform.resources.decide_gpu: auto, true, false
    cpus_per_worker: int = 2  # CPUs a Train worker reserves; leave some for the input pipeline
    threads_per_worker: int = 0  # torch threads of a Train worker; 0: cpus_per_worker
    storage_path: str = ""  # "" -> $GLEE_RUNS or ./runs; a shared FS path on a cluster
    max_failures: int = 2  # FailureConfig: restarts from the latest checkpoint
    precision: str = "auto"  # auto (bf16 on a GPU that has it, else fp32), fp32, bf16, fp16
    channels_last: bool = False  # NHWC convolutions (measure with bench/gpu_suite.py)
    compile: bool = False  # torch.compile the model (opt-in)
    gpu_wait_s: float = 900.0  # how long to wait for the autoscaler's GPU nodes
    # > 0: preprocessing's detection and landmarks on actors of this share of a GPU
    # (jobs/preprocess.py --num-gpus), its fit on CPU actors; 0: CPU actors only. Here, not
    # in `data`: it changes where the rows are computed, not the rows (nor the run hashes).
    preprocess_gpus: float = 0.0
    # A training split whose decoded faces fit this many MiB is decoded once into Ray's
    # object store and read from there every epoch; a larger one streams from its Parquet
    # shards each epoch (glee_platform.training_data). 0: always stream. At the demo's size
    # a new streaming read per epoch cost about 5 s an epoch (bench/train_throughput.py);
    # streaming keeps a worker's own memory nearly flat as data grows (bench/data_memory.py).
    decoded_once_mib: int = 512

    def check(self) -> None:
        at_least("resources.num_workers", self.num_workers, 1)
        choice("resources.use_gpu", self.use_gpu, GPU_CHOICES)
        at_least("resources.cpus_per_worker", self.cpus_per_worker, 1)
        at_least("resources.threads_per_worker", self.threads_per_worker, 0)
        at_least("resources.max_failures", self.max_failures, -1)
        choice("resources.precision", self.precision, PRECISIONS)
        at_least("resources.gpu_wait_s", self.gpu_wait_s, 0.0)
        at_least("resources.preprocess_gpus", self.preprocess_gpus, 0.0)
        at_least("resources.decoded_once_mib", self.decoded_once_mib, 0)

    @property
    def threads(self) -> int:
        return self.threads_per_worker or self.cpus_per_worker


@dataclass
class FaultSection:
    """Fault injection: worker `rank` exits at `step` of `epoch` (0-based), once."""

    epoch: int = -1  # -1 = off
    step: int = 0
    rank: int = 0

    def check(self) -> None:
        at_least("fault.epoch", self.epoch, -1)
        at_least("fault.step", self.step, 0)
        at_least("fault.rank", self.rank, 0)

    @property
    def enabled(self) -> bool:
        return self.epoch >= 0


@dataclass
class ExperimentConfig:
    name: str = "demo"
    seed: int = 0
    log_every: int = 20  # optimiser steps between progress lines (the only host syncs)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    pretrain: PretrainSection = field(default_factory=PretrainSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    resources: ResourcesSection = field(default_factory=ResourcesSection)
    fault: FaultSection = field(default_factory=FaultSection)

    def check(self) -> ExperimentConfig:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError(
                f"name={self.name!r} is not a folder name: use letters, digits, '-' or '_'"
            )
        at_least("log_every", self.log_every, 1)
        for section in (
            self.data,
            self.model,
            self.pretrain,
            self.finetune,
            self.resources,
            self.fault,
        ):
            section.check()
        if self.fault.enabled and self.fault.rank >= self.resources.num_workers:
            raise ConfigError(
                f"fault.rank={self.fault.rank} but resources.num_workers="
                f"{self.resources.num_workers}: pick a rank below the number of workers"
            )
        return self

    # --- paths -------------------------------------------------------------------------

    @property
    def data_root(self) -> Path:
        return Path(self.data.root or os.environ.get("GLEE_DATA", "data")).expanduser().resolve()

    @property
    def raw_dir(self) -> Path:
        return self.data_root / "raw"

    @property
    def prep_dir(self) -> Path:
        if self.data.prep:
            return Path(self.data.prep).expanduser().resolve()
        return self.data_root / "prep"

    @property
    def storage_path(self) -> str:
        """Where Train runs go: a local or shared-filesystem folder, made absolute."""
        path = self.resources.storage_path or os.environ.get("GLEE_RUNS", "runs")
        if "://" in path:
            raise ConfigError(
                f"resources.storage_path={path!r}: use a local or shared-filesystem path "
                "(every node mounts it), not a URI"
            )
        return str(Path(path).expanduser().resolve())

    @property
    def run_dir(self) -> Path:
        """`<storage>/<name>/`: holds pretrain/, fold1..3/, results, config, metrics."""
        return Path(self.storage_path) / self.name

    # --- serialisation -----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_flat(self) -> dict[str, Any]:
        """One level, dotted keys: `{"finetune.lr": 0.002, ...}` (nested dicts kept as JSON)."""
        flat: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            if isinstance(value, dict) and key in _SECTIONS:
                for sub, v in value.items():
                    flat[f"{key}.{sub}"] = json.dumps(v) if isinstance(v, dict | list) else v
            else:
                flat[key] = value
        return flat

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def hash(self, *sections: str) -> str:
        """Short stable hash of the named sections (all if none), for reusing finished runs."""
        d = self.to_dict()
        keys = sections or tuple(d)
        text = json.dumps({k: d[k] for k in keys}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExperimentConfig:
        return from_mapping(cls, d).check()


_SECTIONS = ("data", "model", "pretrain", "finetune", "resources", "fault")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping of a YAML config file or shipped preset name; {} for an empty file."""
    file = resolve_preset(path)
    try:
        loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"config {file} is not valid YAML: {err}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"config {file} must hold a mapping of sections, not {loaded!r}")
    return loaded or {}


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", value read as YAML)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. finetune.lr=1e-3)")
    return key.strip(), yaml.safe_load(text) if text.strip() else ""


def load_config(
    path: str | Path | None = None, overrides: Sequence[str] = (), **sections: Any
) -> ExperimentConfig:
    """The config of a YAML preset (defaults if None), then `a.b=value` overrides.

    A name without a folder or suffix is looked up in the shipped `configs/` folder
    (`load_config("demo")`).
    """
    d = read_config_file(path) if path is not None else {}
    for key, value in sections.items():
        set_dotted(d, key, value)
    for item in overrides:
        set_dotted(d, *parse_override(item))
    return ExperimentConfig.from_dict(d)


CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


def resolve_preset(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if p.is_file():
        return p
    shipped = CONFIGS_DIR / f"{path}.yaml"
    if p.suffix == "" and shipped.is_file():
        return shipped
    names = sorted(f.stem for f in CONFIGS_DIR.glob("*.yaml"))
    raise ConfigError(
        f"config {str(path)!r} not found: give a YAML file path or a preset name ({', '.join(names)})"
    )


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = d
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value
