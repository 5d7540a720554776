"""Inference with a finetuned GLEE-Net: load a checkpoint's weights, run aligned faces
through the network, keep the per-AU probabilities and, on request, the branch outputs
(G_exp, L_exp, E_exp) that the t-SNE and Ave-Var figures need (Fig. 2, 5, 6).

Faces are the 200x200 aligned crops of the preprocessing; evaluation takes the centre
176x176 crop (Sec. IV-B), exactly as the training loop's validation does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from glee.model.glee_net import IDENTITY_PREFIX, GLEENet, load_checkpoint_state
from glee.training.augmentation import center_crop, to_model_input

STATE_FILE = "state.pt"  # the file a Ray Train checkpoint folder holds (glee_platform.train)
THRESHOLD = 0.5  # Sec. IV-A: an AU is present if p > 0.5


def load_model_weights(net: GLEENet, checkpoint: str | os.PathLike) -> GLEENet:
    """Load a training checkpoint (its folder or its state.pt) into `net`, in eval mode.

    A paper-preset checkpoint leaves out the frozen identity network: build `net` with
    `build_glee_net`, which loads it from the VGGFace2 file."""
    path = Path(checkpoint)
    if path.is_dir():
        path = path / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint file {path}: point at a checkpoint_epochNNNN folder"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    weights = state["model"] if isinstance(state, dict) and "model" in state else state
    own = net.state_dict()
    missing = [k for k in own if k not in weights]
    if net.identity_weights is not None:  # left out of checkpoints: it is the file's
        missing = [k for k in missing if not k.startswith(IDENTITY_PREFIX)]
    unexpected = [k for k in weights if k not in own]
    resized = [k for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
    bad = missing or unexpected or resized
    if bad:
        raise ValueError(
            f"checkpoint {path} does not fit this model ({len(bad)} tensors missing, extra or "
            f"of another shape, e.g. {bad[0]}): build the model from the config of the run "
            "that wrote it"
        )
    load_checkpoint_state(net, weights)
    return net.eval()


@dataclass
class Outputs:
    """Per-face results of one batch (numpy, float32 unless noted)."""

    logits: np.ndarray  # (B, n_au) final predictions before the sigmoid
    e_exp: np.ndarray | None = None  # (B, embed_dim) L2-normalised (None: w/o GB&LB)
    g_exp: np.ndarray | None = None  # (B, embed_dim) global branch (None: w/o GB)
    l_exp: np.ndarray | None = None  # (B, embed_dim) local branch (None: w/o LB)

    @property
    def probs(self) -> np.ndarray:
        """(B, n_au) float64 probabilities (sigmoid in float64, as F1Accumulator does)."""
        return torch.sigmoid(torch.from_numpy(np.array(self.logits, np.float64))).numpy()

    @property
    def occurrences(self) -> np.ndarray:
        """(B, n_au) int8: 1 where p > 0.5."""
        return (self.probs > THRESHOLD).astype(np.int8)

    @staticmethod
    def concat(parts: list[Outputs]) -> Outputs:
        def cat(name: str) -> np.ndarray | None:
            vals = [getattr(p, name) for p in parts]
            return None if any(v is None for v in vals) else np.concatenate(vals)

        if not parts:
            raise ValueError("no outputs to concatenate")
        return Outputs(cat("logits"), cat("e_exp"), cat("g_exp"), cat("l_exp"))


@torch.no_grad()
def infer(
    net: GLEENet,
    faces: np.ndarray | torch.Tensor,
    f_exp: np.ndarray | torch.Tensor,
    *,
    device: str | torch.device = "cpu",
) -> Outputs:
    """Aligned faces (B, 200, 200, 3) uint8 and 3DMM coefficients (B, expr_dim) -> Outputs.

    The same computation as `GLEENet.forward` in eval mode, split so the branch outputs can
    be kept: E_exp = normalise(G_exp + L_exp) (Sec. III-B), then the head over
    concat(E_exp, f_exp) (Sec. III-D).
    """
    net.eval()
    cfg = net.cfg
    crops, _ = center_crop(np.asarray(faces), size=cfg.input_size)  # Sec. IV-B
    x = to_model_input(crops, device)
    f = torch.as_tensor(np.asarray(f_exp, np.float32)).to(device)
    out = net.forward_features(x) if cfg.has_embedding else {}
    _, final = net.forward_head(out.get("e_exp"), f if cfg.use_3d else None)
    return Outputs(
        logits=final.float().cpu().numpy(),
        **{k: v.float().cpu().numpy() for k, v in out.items()},
    )


__all__ = [
    "STATE_FILE",
    "THRESHOLD",
    "Outputs",
    "infer",
    "load_model_weights",
]
