"""GLEE-Net (Sec. III): E_exp = G_exp + L_exp from the global and local branches, then an
AU classifier over concat(E_exp, f_exp).

Two seams, as timm's forward_features / forward_head: `embed(images)` is the L2-normalised
E_exp that pretraining trains with the triplet loss; `forward_head(e_exp, f_exp)` is the AU
head finetuning adds; `forward(images, f_exp)` is both.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from glee.model.classifier import build_classifier
from glee.model.config import RESNET_BACKBONES, GLEEConfig
from glee.model.global_branch import GlobalBranch, ResNetEncoder
from glee.model.local_branch import LocalBranch
from glee.model.weights import vggface2_weights


def facenet_normalise(images: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] -> FaceNet's input range: (x * 255 - 127.5) / 128."""
    return (images * 255.0 - 127.5) / 128.0


class GLEENet(nn.Module):
    """GLEE-Net and its Table V variants, selected by `GLEEConfig`.

    images: (B, 3, H, W) float RGB in [0, 1] (H = W = cfg.input_size); f_exp: (B, expr_dim)
    3DMM expression coefficients. Variants:
      w/o 3DGB: the head sees E_exp only (f_exp may be None).
      w/o GB&LB: no embedding; the head sees f_exp only (images may be None) and
        `embed` raises, so this variant cannot be pretrained.
      fixed GB&LB: branch weights frozen (requires_grad False) and their BN kept in eval.
      ResNet instead of GB&LB: one torchvision ResNet gives E_exp.
    Training needs batches of at least 2 (the face model's BatchNorm1d).
    """

    def __init__(self, cfg: GLEEConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        # The weights file the frozen identity network was loaded from (build_glee_net);
        # None: its weights exist only in this model (random init), so checkpoints keep them.
        self.identity_weights: str | None = None
        self.global_branch: nn.Module | None = None
        self.local_branch: LocalBranch | None = None
        if cfg.use_global:
            if cfg.backbone in RESNET_BACKBONES:
                self.global_branch = ResNetEncoder(cfg)
            else:
                self.global_branch = GlobalBranch(cfg)
        if cfg.use_local:
            self.local_branch = LocalBranch(cfg)
        self.classifier = build_classifier(cfg, cfg.head_input_dim)
        if cfg.freeze_branches:
            for p in self.branch_parameters(trainable_only=False):
                p.requires_grad_(False)
            self._branches_eval()

    # ------------------------------------------------------------------ modes

    def _branches(self) -> list[nn.Module]:
        return [b for b in (self.global_branch, self.local_branch) if b is not None]

    def _branches_eval(self) -> None:
        for b in self._branches():
            b.eval()

    def train(self, mode: bool = True) -> GLEENet:
        super().train(mode)
        if self.cfg.freeze_branches:
            self._branches_eval()  # "fixed GB&LB": BN statistics stay fixed too
        return self

    def branch_parameters(self, trainable_only: bool = True) -> Iterator[nn.Parameter]:
        """Parameters of the global / local branches (the embedding)."""
        for b in self._branches():
            for p in b.parameters():
                if p.requires_grad or not trainable_only:
                    yield p

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the AU classifier."""
        yield from self.classifier.parameters()

    # ---------------------------------------------------------------- forward

    def _check_images(self, images: torch.Tensor | None) -> torch.Tensor:
        if images is None or images.dim() != 4 or images.shape[1] != 3:
            shape = None if images is None else tuple(images.shape)
            raise ValueError(f"images must be (B, 3, H, W) RGB in [0, 1], got {shape}")
        return images

    def forward_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The branch outputs this variant has, G_exp and L_exp (B, embed_dim), and
        E_exp = normalise(G_exp + L_exp) (Sec. III-B), under "g_exp", "l_exp", "e_exp"."""
        if not self.cfg.has_embedding:
            raise ValueError(
                "this GLEE-Net variant has no global or local branch (w/o GB&LB): there is "
                "no expression embedding to compute or pretrain; use the full model"
            )
        x = facenet_normalise(self._check_images(images))
        out: dict[str, torch.Tensor] = {}
        if self.global_branch is not None:
            out["g_exp"] = self.global_branch(x)
        if self.local_branch is not None:
            out["l_exp"] = self.local_branch(x)
        out["e_exp"] = F.normalize(sum(out.values()), p=2, dim=1)
        return out

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised E_exp = G_exp + L_exp (Sec. III-B), (B, embed_dim)."""
        return self.forward_features(images)["e_exp"]

    def forward_head(
        self, e_exp: torch.Tensor | None, f_exp: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """AU head over concat(E_exp, f_exp) (Sec. III-D) -> (initial, final) (B, N_au)."""
        parts = []
        if self.cfg.has_embedding:
            if e_exp is None or e_exp.dim() != 2 or e_exp.shape[1] != self.cfg.embed_dim:
                shape = None if e_exp is None else tuple(e_exp.shape)
                raise ValueError(f"e_exp must be (B, {self.cfg.embed_dim}), got {shape}")
            parts.append(e_exp)
        if self.cfg.use_3d:
            if f_exp is None or f_exp.dim() != 2 or f_exp.shape[1] != self.cfg.expr_dim:
                shape = None if f_exp is None else tuple(f_exp.shape)
                raise ValueError(
                    f"f_exp must be (B, {self.cfg.expr_dim}) 3DMM expression coefficients, "
                    f"got {shape}"
                )
            dtype = parts[0].dtype if parts else f_exp.dtype
            parts.append(f_exp.to(dtype))
        return self.classifier(torch.cat(parts, dim=1))

    def forward(
        self, images: torch.Tensor | None, f_exp: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        e_exp = self.embed(images) if self.cfg.has_embedding else None
        return self.forward_head(e_exp, f_exp)


def build_glee_net(cfg: GLEEConfig, weights_path: str | Path | None = None) -> GLEENet:
    """GLEE-Net with VGGFace2 FaceNet weights where the config uses InceptionResnetV1.

    Weights come from `weights_path`, else `cfg.weights_path`, else the standard cache
    path, downloaded on first use (weights.vggface2_weights). When they cannot be had the
    build stops with one line, unless `cfg.allow_random_init` (then one warning and random
    init). Other backbones (the tiny preset's "small", the ResNets) start from random
    initialisation and need no file.
    """
    model = GLEENet(cfg)
    if isinstance(model.global_branch, GlobalBranch) and cfg.backbone == "inception_resnet_v1":
        path = vggface2_weights(
            weights_path if weights_path is not None else cfg.weights_path,
            allow_random_init=cfg.allow_random_init,
        )
        if path is not None:
            model.global_branch.load_backbone_weights(path)
            model.identity_weights = str(path)
    elif weights_path is not None:
        raise ValueError(
            f"weights_path is VGGFace2 InceptionResnetV1 weights, but this config has "
            f"backbone {cfg.backbone!r} (use_global={cfg.use_global}); leave it unset"
        )
    return model


IDENTITY_PREFIX = "global_branch.identity."  # the frozen identity network (Sec. III-A)


def checkpoint_state(net: GLEENet) -> dict[str, torch.Tensor]:
    """What a checkpoint of `net` holds: its state dict, less the frozen identity network
    when that came from a weights file (23.5M parameters that training never changes)."""
    state = net.state_dict()
    if net.identity_weights is None:
        return state
    return {k: v for k, v in state.items() if not k.startswith(IDENTITY_PREFIX)}


def load_checkpoint_state(net: GLEENet, state: dict[str, torch.Tensor]) -> None:
    """Load a `checkpoint_state` into `net` (strictly): a state without the identity network
    needs a net whose identity network came from its weights file (build_glee_net)."""
    missing = [k for k in net.state_dict() if k not in state]
    if missing and all(k.startswith(IDENTITY_PREFIX) for k in missing):
        if net.identity_weights is None:
            raise ValueError(
                "this checkpoint leaves out the frozen identity network (it came from the "
                "VGGFace2 file): build the model with build_glee_net so it loads that file"
            )
        net.load_state_dict(state, strict=False)
        return
    net.load_state_dict(state)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = [
    "IDENTITY_PREFIX",
    "GLEENet",
    "build_glee_net",
    "checkpoint_state",
    "count_parameters",
    "facenet_normalise",
    "load_checkpoint_state",
]
