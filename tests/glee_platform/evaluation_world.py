"""Shared, once-per-session artefacts of the evaluate / predict / ablate tests.

The tiny synthetic world (tests/conftest.py) preprocessed once and a Table V ablation on
its BP4D (fold 1, one epoch) of the variants in `RUN`, whose `full` run is the model the
evaluate and predict tests use: the only Ray Train runs of the three test files. Built on
first use by whichever test module asks first; the module-level cache makes the three test
files share them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_CACHE: dict[str, Any] = {}

# Three of Table V's nine variants, in the paper's row order: each is a Train run of ~30 s.
# w/o pretrain is the full model when nothing is pretrained (same first loss); w/o TC is
# another architecture (another first loss). Every variant's network is built, trained a
# step and checked in tests/glee/model; the runner treats all variants alike.
RUN = ("wo_pretrain", "wo_tc", "full")


def prep_dir(tiny_world: dict[str, Path], tmp_path_factory) -> Path:
    """bp4d and bp4dplus of the tiny world, preprocessed with their landmarks, each frame
    fitted alone (fit mode photo): predict fits a folder of frames so, and
    test_predict compares its outputs with evaluation's on the same frames."""
    if "prep" not in _CACHE:
        from glee.face.pipeline import PreprocessConfig
        from glee_platform.preprocess import preprocess_dataset

        prep = tmp_path_factory.mktemp("eval_prep")
        for name in ("bp4d", "bp4dplus"):
            preprocess_dataset(
                name,
                tiny_world[name],
                prep / name,
                num_cpus=2,
                progress=False,
                config=PreprocessConfig(landmarks="provided", fit_mode="photo"),
            )
        _CACHE["prep"] = prep
    return _CACHE["prep"]


def ablation(tiny_world, tmp_path_factory):
    """The `RUN` variants of Table V on the tiny BP4D: fold 1 (48 training faces, 24 test
    faces), one epoch, no pretraining (AblationResult, config)."""
    if "ablation" not in _CACHE:
        from glee_platform.ablate import run_ablation
        from glee_platform.config import load_config

        prep = prep_dir(tiny_world, tmp_path_factory)
        runs = tmp_path_factory.mktemp("eval_runs")
        cfg = load_config(
            "ablation-tiny",
            [
                "name=abl",
                f"data.prep={prep}",
                f"data.raw.bp4d={tiny_world['bp4d']}",  # the preprocessed folder's source
                "data.landmarks=provided",  # as prep_dir made it: the renders' exact landmarks
                "data.fit_mode=photo",
                f"resources.storage_path={runs}",
                "finetune.init=none",  # pretraining is tested in test_train; time
                "finetune.epochs=1",
                "finetune.eval_every=1",
                "finetune.folds=[1]",
            ],
        )
        _CACHE["ablation"] = (run_ablation(cfg, list(RUN)), cfg)
    return _CACHE["ablation"]
