"""Global branch (Sec. III-A): the expression deviation of a face from its identity.

Two siamese face-recognition networks see the same face: the identity model is frozen
(no gradients, always in eval mode); the face model starts from the same weights with its
batch-norm parameters randomly re-initialised, so V_exp = V_face - V_id is not zero at the
start. A linear layer reduces V_exp to G_exp (16-d).

Also here: the small backbone of the CPU presets (same siamese structure) and the ResNet
encoder of Table V "ResNet instead of GB&LB".
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from glee.model.config import GLEEConfig
from glee.model.weights import load_facenet_weights


class SmallFaceNet(nn.Module):
    """A four-block CNN that ends like InceptionResnetV1 (linear, BatchNorm1d, L2 norm).

    The CPU stand-in for FaceNet in the `tiny` preset: (B, 3, H, W) -> (B, embed_dim).
    """

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128, 256), embed_dim: int = 128):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in channels:
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.last_linear = nn.Linear(c_in, embed_dim, bias=False)
        self.last_bn = nn.BatchNorm1d(embed_dim, eps=0.001)
        self.embed_dim = embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean(dim=(2, 3))  # (B, C)
        return F.normalize(self.last_bn(self.last_linear(x)), p=2, dim=1)


def make_face_backbone(cfg: GLEEConfig) -> tuple[nn.Module, int]:
    """The face-recognition network of the global branch and its embedding size."""
    if cfg.backbone == "inception_resnet_v1":
        # Imported here: facenet-pytorch pulls in cv2, PIL and requests, which the tiny
        # preset (and a GPU machine with torch alone) does without.
        from facenet_pytorch import InceptionResnetV1

        # pretrained=None: never let facenet-pytorch download; weights.py loads the file.
        return InceptionResnetV1(pretrained=None, classify=False), 512
    if cfg.backbone == "small":
        return SmallFaceNet(cfg.small_channels, cfg.small_embed_dim), cfg.small_embed_dim
    raise ValueError(
        f"the siamese global branch needs backbone 'inception_resnet_v1' or 'small', "
        f"got {cfg.backbone!r}"
    )


def reinit_batchnorm(module: nn.Module, std: float, generator: torch.Generator | None = None):
    """Sec. III-A: random BN re-initialisation of the face model.

    Every BatchNorm gets weight ~ N(1, std), bias ~ N(0, std) and fresh running statistics.
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            if m.affine:
                with torch.no_grad():
                    m.weight.copy_(1.0 + std * torch.randn(m.weight.shape, generator=generator))
                    m.bias.copy_(std * torch.randn(m.bias.shape, generator=generator))


class GlobalBranch(nn.Module):
    """(B, 3, H, W) FaceNet-normalised images -> G_exp (B, embed_dim)."""

    def __init__(self, cfg: GLEEConfig) -> None:
        super().__init__()
        self.identity, self.feature_dim = make_face_backbone(cfg)
        self.identity.requires_grad_(False)
        self.identity.eval()
        self.face = copy.deepcopy(self.identity)
        self.face.requires_grad_(True)
        self.bn_reinit_std = cfg.bn_reinit_std
        reinit_batchnorm(self.face, self.bn_reinit_std)
        self.reduce = nn.Linear(self.feature_dim, cfg.embed_dim)  # V_exp -> G_exp

    def train(self, mode: bool = True) -> GlobalBranch:
        super().train(mode)
        self.identity.eval()  # frozen identity model: eval whatever the parent's mode
        return self

    def load_backbone_weights(self, path: str | Path) -> None:
        """Load one FaceNet state dict file into both copies, then re-initialise the face BN."""
        load_facenet_weights(self.identity, path)
        self.face.load_state_dict(self.identity.state_dict())
        reinit_batchnorm(self.face, self.bn_reinit_std)

    def deviation(self, x: torch.Tensor) -> torch.Tensor:
        """V_exp = V_face - V_id (B, feature_dim); V_* are L2-normalised embeddings."""
        with torch.no_grad():
            v_id = self.identity(x)
        return self.face(x) - v_id

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduce(self.deviation(x))


class ResNetEncoder(nn.Module):
    """Table V "ResNet instead of GB&LB": a torchvision ResNet (no weights) -> (B, embed_dim)."""

    def __init__(self, cfg: GLEEConfig) -> None:
        super().__init__()
        import torchvision  # only this Table V variant needs it

        builders = {
            "resnet18": torchvision.models.resnet18,
            "resnet50": torchvision.models.resnet50,
        }
        if cfg.backbone not in builders:
            raise ValueError(
                f"ResNetEncoder needs backbone in {list(builders)}, got {cfg.backbone!r}"
            )
        self.resnet = builders[cfg.backbone](weights=None)
        self.resnet.fc = nn.Linear(self.resnet.fc.in_features, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnet(x)


__all__ = [
    "GlobalBranch",
    "ResNetEncoder",
    "SmallFaceNet",
    "make_face_backbone",
    "reinit_batchnorm",
]
