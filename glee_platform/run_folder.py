"""A run folder as `jobs/finetune.py` and `jobs/ablate.py` write it, read back: the config
it was trained with and the final checkpoint of each fold.

    <storage>/<name>/config.yaml          the experiment config
    <storage>/<name>/fold<k>/done.json    the config hash and final checkpoint of fold k
    <storage>/<name>/fold<k>/checkpoint_epochNNNN/state.pt
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from glee_platform.config import ExperimentConfig, load_config
from glee_platform.train.checkpoints import DONE_FILE, STATE_FILE, checkpoints_newest_first

FOLDS = (1, 2, 3)


class RunFolderError(ValueError):
    """A folder is not a run folder, or lacks what is asked of it; the message says what to do."""


def load_run_config(run_dir: str | os.PathLike) -> ExperimentConfig:
    """The experiment config a run folder was trained with (its config.yaml)."""
    run = Path(run_dir).expanduser().resolve()
    path = run / "config.yaml"
    if not path.is_file():
        raise RunFolderError(
            f"{run} is not a finetune run folder (no config.yaml): pass runs/<name> as "
            "written by jobs/finetune.py or jobs/ablate.py"
        )
    return load_config(path)


def fold_checkpoint(run_dir: str | os.PathLike, fold: int) -> Path:
    """The final checkpoint folder of fold `fold`: the one done.json names (found beside
    it when the run folder has moved, e.g. fetched from a cluster), else the latest
    complete one (a state.pt cut short by a crash is left out)."""
    folder = Path(run_dir).expanduser().resolve() / f"fold{fold}"
    done = folder / DONE_FILE
    if done.is_file():
        named = Path(json.loads(done.read_text(encoding="utf-8"))["checkpoint"])
        for candidate in (folder / named.name, named):  # beside it first: a moved run
            if (candidate / STATE_FILE).is_file():
                return candidate
    found = checkpoints_newest_first(folder)
    if not found:
        raise RunFolderError(
            f"fold {fold} of {folder.parent} has no checkpoint ({folder}/checkpoint_epoch*/"
            f"{STATE_FILE}): finetune that fold first or leave it out"
        )
    return found[0]


def finished_folds(run_dir: str | os.PathLike) -> list[int]:
    """The folds of a run folder that have a final or at least one complete checkpoint."""
    run = Path(run_dir).expanduser().resolve()
    return [
        k
        for k in FOLDS
        if (run / f"fold{k}" / DONE_FILE).is_file() or checkpoints_newest_first(run / f"fold{k}")
    ]
