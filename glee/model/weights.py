"""Where model weights come from, kept apart from the architecture (a model builds the same
with or without them).

VGGFace2 InceptionResnetV1 weights are facenet-pytorch's `20180402-114759-vggface2.pt`,
looked for where facenet-pytorch caches it. facenet-pytorch's own `pretrained=` argument
downloads; this module never does: absent weights give one warning and random init.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

VGGFACE2_FILE = "20180402-114759-vggface2.pt"


def default_torch_home() -> Path:
    """$TORCH_HOME, else $XDG_CACHE_HOME/torch, else ~/.cache/torch (as torch.hub)."""
    env = os.environ.get("TORCH_HOME")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "~/.cache")
    return Path(cache).expanduser() / "torch"


def vggface2_path(torch_home: str | Path | None = None) -> Path:
    """Standard cache path of the VGGFace2 weights: <torch home>/checkpoints/<file>."""
    home = Path(torch_home).expanduser() if torch_home is not None else default_torch_home()
    return home / "checkpoints" / VGGFACE2_FILE


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return obj


def load_facenet_weights(module: nn.Module, path: str | Path | None) -> bool:
    """Load an InceptionResnetV1 state dict from `path` into `module`; False if absent.

    The VGGFace2 file also holds the 8631-way classification layer (`logits.weight`,
    `logits.bias`); the embedding model has no such layer, so those keys are dropped and
    every other key must match exactly (a wrong file raises ValueError naming the keys).
    When the file is absent: one warning saying where to put it, the module keeps its
    random initialisation, and the function returns False.
    """
    p = Path(path).expanduser() if path is not None else vggface2_path()
    if not p.is_file():
        warnings.warn(
            f"VGGFace2 weights not found at {p}: the global branch starts from random "
            f"initialisation. To use them, place {VGGFACE2_FILE} (facenet-pytorch release "
            f"v2.2.9) there, or set the model's weights_path.",
            UserWarning,
            stacklevel=2,
        )
        return False
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
    return True


def save_state_dict(module: nn.Module, path: str | Path) -> Path:
    """Write `module.state_dict()` atomically (temp file then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(module.state_dict(), tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_state_dict(
    module: nn.Module, path: str | Path, prefixes: Iterable[str] | None = None
) -> list[str]:
    """Load a checkpoint written by `save_state_dict` (weights_only); returns the loaded keys.

    With `prefixes` (e.g. ("global_branch.", "local_branch.") to finetune from a pretrained
    embedding) only keys starting with one of them are loaded, and each of the module's
    keys under those prefixes must be present.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    state = _read_state_dict(p)
    if prefixes is None:
        module.load_state_dict(state, strict=True)
        return sorted(state)
    pre = tuple(prefixes)
    state = {k: v for k, v in state.items() if k.startswith(pre)}
    wanted = {k for k in module.state_dict() if k.startswith(pre)}
    missing = sorted(wanted - set(state))
    unexpected = sorted(set(state) - wanted)
    if missing or unexpected:
        raise ValueError(
            f"{p} does not match this model under {list(pre)}: missing keys {missing[:5]}, "
            f"unexpected keys {unexpected[:5]} (was it saved from the same model config?)"
        )
    module.load_state_dict(state, strict=False)
    return sorted(state)


__all__ = [
    "VGGFACE2_FILE",
    "load_facenet_weights",
    "load_state_dict",
    "save_state_dict",
    "default_torch_home",
    "vggface2_path",
]
