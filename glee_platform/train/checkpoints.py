"""Train checkpoints: what a checkpoint folder holds, finding the newest complete one, and
loading it onto whatever device the loading process trains on.

A checkpoint is a folder `checkpoint_epochNNNN/` (the state after epoch NNNN) holding
`state.pt`: the model, the optimisation state (optimizer, and the GradScaler in fp16), the
epoch, the global step and the metric history. It is read onto the CPU
(`map_location="cpu"`, `weights_only=True`) whichever device wrote it; loading it into a
model that already sits on its device puts every tensor there, optimizer state included
(`glee.training.optimisation.Optimisation.load_state_dict`).

Resuming takes the newest complete checkpoint in the run folder, not only the one Ray
Train's controller registered: the controller collects reports when it polls the workers
(every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s), so a worker that dies just after `report`
has uploaded its checkpoint would otherwise restart from the one before. A checkpoint
whose upload was cut short has a truncated state.pt, which is not a readable zip archive,
and is left out.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from glee.model.glee_net import GLEENet
from glee.model.inference import STATE_FILE
from glee.training.optimisation import read_checkpoint

DONE_FILE = "done.json"  # beside the checkpoints of a finished run: its config hash
CHECKPOINT_PREFIX = "checkpoint_epoch"  # checkpoint_epoch0003: the state after epoch 3
BRANCH_PREFIXES = ("global_branch.", "local_branch.")  # what pretraining trains (Sec. III-E)


def checkpoint_name(epoch: int) -> str:
    return f"{CHECKPOINT_PREFIX}{epoch:04d}"


def checkpoint_epoch(path: str | Path) -> int:
    """The epoch a `checkpoint_epochNNNN` folder holds; -1 for another name."""
    name = Path(path).name
    digits = name[len(CHECKPOINT_PREFIX) :]
    return int(digits) if name.startswith(CHECKPOINT_PREFIX) and digits.isdigit() else -1


def checkpoints_newest_first(train_dir: str | Path, registered: str | Path | None = None):
    """The complete checkpoints of a Train run folder, newest epoch first, plus `registered`
    (Ray Train's latest)."""
    found = set()
    root = Path(train_dir)
    if root.is_dir():
        found = {
            p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if zipfile.is_zipfile(p / STATE_FILE)
        }
    if registered is not None:
        found.add(Path(registered))
    return sorted(found, key=checkpoint_epoch, reverse=True)


def read_state(checkpoint_dir: str | Path) -> dict[str, Any]:
    """The state.pt of a checkpoint folder, on the CPU."""
    return read_checkpoint(Path(checkpoint_dir) / STATE_FILE)


def newest_readable_state(
    train_dir: str | Path, registered: str | Path | None = None
) -> tuple[Path, dict[str, Any]] | None:
    """(folder, state) of the newest checkpoint that reads; None when there is none."""
    for path in checkpoints_newest_first(train_dir, registered):
        try:
            return path, read_state(path)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
            continue  # unreadable: fall back to the one before
    return None


def save_state(folder: Path, state: dict[str, Any]) -> Path:
    """state.pt into a fresh folder that Ray Train then uploads whole (so no rename)."""
    path = Path(folder) / STATE_FILE
    torch.save(state, path)
    return path


def load_pretrained_branches(net: GLEENet, checkpoint_dir: str | Path) -> int:
    """Copy the pretrained global/local branch weights into `net`; returns how many tensors."""
    state = read_state(checkpoint_dir)
    own = net.state_dict()
    picked = {
        k: v
        for k, v in state["model"].items()
        if k.startswith(BRANCH_PREFIXES) and k in own and own[k].shape == v.shape
    }
    if not picked:
        raise ValueError(
            f"the pretraining checkpoint {checkpoint_dir} has no branch weights that fit this "
            "model: pretrain with the same model preset, or set finetune.init=none"
        )
    net.load_state_dict(picked, strict=False)
    return len(picked)
