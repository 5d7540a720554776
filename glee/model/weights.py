"""Where model weights come from, kept apart from the architecture (a model builds the same
with or without them).

VGGFace2 InceptionResnetV1 weights are facenet-pytorch's `20180402-114759-vggface2.pt`
(glee.weights_cache.VGGFACE2), in the folder where facenet-pytorch caches it
(<torch home>/checkpoints). `vggface2_weights` finds it there, downloads it on first use,
and otherwise refuses to let the global branch start from random weights unless the
config allows it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from glee import weights_cache
from glee.weights_cache import MissingWeightsError, default_torch_home

VGGFACE2_FILE = weights_cache.VGGFACE2.name


def vggface2_path(torch_home: str | Path | None = None) -> Path:
    """Standard cache path of the VGGFace2 weights: <torch home>/checkpoints/<file>."""
    return weights_cache.VGGFACE2.path(torch_home)


def vggface2_weights(
    weights_path: str | Path | None = None,
    allow_random_init: bool = False,
    torch_home: str | Path | None = None,
) -> Path | None:
    """The VGGFace2 file to load into the global branch.

    `weights_path` given: that file, which must exist. Else the standard cache path,
    downloaded there when absent. When the file cannot be had: with `allow_random_init`
    one warning and None (the branch keeps its random initialisation); without it
    MissingWeightsError, one line saying how to get the file or how to allow random init.
    """
    if weights_path is not None:
        p = Path(weights_path).expanduser()
        if p.is_file():
            return p
        why = f"model.weights_path {p} does not exist: point it at a copy of {VGGFACE2_FILE}"
    else:
        try:
            return weights_cache.fetch_weights(weights_cache.VGGFACE2, torch_home)
        except MissingWeightsError as exc:
            why = str(exc)
    if not allow_random_init:
        raise MissingWeightsError(
            f"{why}, or set model.allow_random_init: true to train the global branch from "
            "random weights"
        )
    warnings.warn(
        f"the global branch starts from random initialisation (model.allow_random_init): {why}",
        UserWarning,
        stacklevel=2,
    )
    return None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return obj


def load_facenet_weights(module: nn.Module, path: str | Path) -> None:
    """Load an InceptionResnetV1 state dict from the file `path` into `module`.

    The VGGFace2 file also holds the 8631-way classification layer (`logits.weight`,
    `logits.bias`); the embedding model has no such layer, so those keys are dropped and
    every other key must match exactly (a wrong file raises ValueError naming the keys).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"FaceNet weights {p} do not exist")
    state = _read_state_dict(p)
    own = set(module.state_dict())
    state = {k: v for k, v in state.items() if not (k.startswith("logits.") and k not in own)}
    missing = sorted(own - set(state))
    unexpected = sorted(set(state) - own)
    if missing or unexpected:
        raise ValueError(
            f"{p} is not an InceptionResnetV1 state dict: missing keys {missing[:5]}, "
            f"unexpected keys {unexpected[:5]}"
        )
    module.load_state_dict(state, strict=True)


__all__ = [
    "VGGFACE2_FILE",
    "default_torch_home",
    "load_facenet_weights",
    "vggface2_path",
    "vggface2_weights",
]
