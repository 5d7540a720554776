"""Where an experiment's datasets come from, and making sure they are preprocessed.

Raw data is the user's (`data.raw.<dataset>`: the dataset's root folder) or, only when the
config asks for it (`data.synthetic: tiny|demo|large`), the synthetic world written into
`<data root>/raw`. Nothing is substituted: a missing raw folder is an error, never a
reason to fall back to synthetic data.

Preprocessed data (`<prep>/<dataset>/`) is reused only when its manifest says it was made
from the same raw root, with the same landmark backend and preprocessing settings; a
folder made otherwise stops the job with one line (preprocess into another `data.prep`,
or `--force` to redo it in place).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glee_platform.config import ConfigError, ExperimentConfig
from glee_platform.prepared import dataset_dir, is_preprocessed, read_manifest

# manifest["config"] keys that decide what a preprocessed folder holds
MATCHED_SETTINGS = (
    "landmarks", "align_size", "image_format", "jpeg_quality", "model_path", "fit_mode",
)  # fmt: skip
# what a manifest written before a setting existed was made with
MADE_BEFORE = {"fit_mode": "frame"}


def needed_datasets(cfg: ExperimentConfig) -> list[str]:
    names = [cfg.data.dataset]
    if cfg.finetune.eval_dataset and cfg.finetune.eval_dataset not in names:
        names.append(cfg.finetune.eval_dataset)
    if cfg.finetune.init == "pretrain":
        names.append("fec")
    return names


def raw_root(cfg: ExperimentConfig, dataset: str) -> Path:
    """The raw folder a dataset is read from: the user's, or the synthetic one asked for."""
    if dataset in cfg.data.raw:
        root = Path(cfg.data.raw[dataset]).expanduser().resolve()
        if not root.is_dir():
            raise ConfigError(
                f"data.raw.{dataset}={cfg.data.raw[dataset]!r} is not a folder: point it at "
                f"the {dataset} root (README, Datasets), or drop it and set data.synthetic"
            )
        return root
    if cfg.data.synthetic == "none":
        raise ConfigError(
            f"no raw folder for {dataset}: set data.raw.{dataset} to its root, or "
            "data.synthetic to a preset (tiny, demo, large) to use synthetic data"
        )
    return cfg.raw_dir / dataset  # glee.synthetic.writers.synthesize writes <raw>/<dataset>


def _mismatch(
    manifest: dict[str, Any], root: Path, wanted: Callable[[], dict[str, Any]]
) -> str | None:
    """Why a preprocessed folder does not hold what the config asks for (`wanted()`, the
    settings); None if it does."""
    made = {**MADE_BEFORE, **manifest.get("config", {})}
    if made.get("root") and Path(made["root"]).resolve() != root:
        return f"it was made from {made['root']}, not {root}"
    if not any(key in manifest.get("config", {}) for key in MATCHED_SETTINGS):
        return None
    settings = wanted()
    for key in MATCHED_SETTINGS:
        if key in made and key in settings and made[key] != settings[key]:
            return f"it was made with {key}={made[key]!r}, this config asks for {settings[key]!r}"
    return None


def ensure_preprocessed(cfg: ExperimentConfig, datasets: list[str], *, force: bool = False) -> None:
    """Preprocess every needed dataset whose Parquet folder is absent (or, with `force`,
    that was made otherwise); refuse to reuse one that was made from other inputs."""
    from glee.face.pipeline import PreprocessConfig
    from glee_platform.preprocess import preprocess_dataset, resolve_landmarks

    settings: dict[str, str] = {}

    def wanted() -> dict[str, str]:  # resolved on first need: 'auto' may probe a URL
        if not settings:
            settings["landmarks"] = resolve_landmarks(cfg.data.landmarks)
            settings["fit_mode"] = cfg.data.fit_mode
        return settings

    for name in datasets:
        root = raw_root(cfg, name) if name in cfg.data.raw or cfg.data.synthetic != "none" else None
        out = dataset_dir(cfg.prep_dir, name)
        if is_preprocessed(cfg.prep_dir, name):
            why = (
                None if root is None else _mismatch(read_manifest(cfg.prep_dir, name), root, wanted)
            )
            if why is None:
                continue
            if not force:
                raise ConfigError(
                    f"{out} does not hold this config's {name}: {why}; set data.prep to "
                    "another folder, or pass --force to preprocess it again there"
                )
            print(f"[glee] {name}: preprocessing again ({why})")
            shutil.rmtree(out)
        if root is None:
            root = raw_root(cfg, name)  # raises the one-line error
        if name not in cfg.data.raw:
            _write_synthetic(cfg, name)
        print(f"[glee] preprocessing {name}: {root} -> {out}")
        made = wanted()
        config = PreprocessConfig(landmarks=made["landmarks"], fit_mode=made["fit_mode"])
        summary = preprocess_dataset(
            name, root, out, config=config, num_gpus=cfg.resources.preprocess_gpus
        )
        print(f"[glee] {name}: {summary.line()}")


def _write_synthetic(cfg: ExperimentConfig, dataset: str) -> None:
    from glee.synthetic.writers import synthesize

    print(f"[glee] synthetic {dataset} ({cfg.data.synthetic} preset) -> {cfg.raw_dir}")
    synthesize(
        cfg.raw_dir,
        preset=cfg.data.synthetic,
        seed=cfg.data.synthetic_seed,
        datasets=[dataset],
        progress=True,
    )
