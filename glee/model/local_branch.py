"""Local branch (Sec. III-B): 16 crops of the aligned face by image area, each through its
own local extractor (four 3x3 convs, self-attention, average pooling); the concatenated
features go through an MLP to L_exp (16-d).

The 16 extractors run as one batched operation: grouped convolutions (groups = 16) and a
batched attention. `LocalExtractor` is the plain one-crop definition; `GroupedLocalExtractors.
extractor(i)` returns crop i's weights in that form, so the two can be checked equal.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from glee.model.config import GLEEConfig

# Sec. III-B: name -> (top, bottom, left, right) as fractions of the aligned face.
CROP_FRACTIONS: dict[str, tuple[float, float, float, float]] = {
    "L34": (0.0, 1.0, 0.0, 0.75),
    "R34": (0.0, 1.0, 0.25, 1.0),
    "T34": (0.0, 0.75, 0.0, 1.0),
    "B34": (0.25, 1.0, 0.0, 1.0),
    "L12": (0.0, 1.0, 0.0, 0.5),
    "R12": (0.0, 1.0, 0.5, 1.0),
    "T12": (0.0, 0.5, 0.0, 1.0),
    "B12": (0.5, 1.0, 0.0, 1.0),
    "TL34": (0.0, 0.75, 0.0, 0.75),
    "TR34": (0.0, 0.75, 0.25, 1.0),
    "TL12": (0.0, 0.5, 0.0, 0.5),
    "TR12": (0.0, 0.5, 0.5, 1.0),
    "BL34": (0.25, 1.0, 0.0, 0.75),
    "BR34": (0.25, 1.0, 0.25, 1.0),
    "BL12": (0.5, 1.0, 0.0, 0.5),
    "BR12": (0.5, 1.0, 0.5, 1.0),
}
CROP_NAMES: tuple[str, ...] = tuple(CROP_FRACTIONS)
NUM_CROPS = len(CROP_NAMES)
CONV_STRIDES: tuple[int, ...] = (2, 2, 2, 1)  # 96 -> 48 -> 24 -> 12 -> 12


def crop_boxes(height: int, width: int) -> list[tuple[int, int, int, int]]:
    """Pixel boxes (top, bottom, left, right), end-exclusive, in `CROP_NAMES` order."""
    return [
        (round(t * height), round(b * height), round(l * width), round(r * width))
        for t, b, l, r in CROP_FRACTIONS.values()
    ]


def extract_crops(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, 16, C, size, size): each crop resized (bilinear, antialiased)."""
    _, _, h, w = images.shape
    crops = [
        F.interpolate(
            images[:, :, t:b, l:r],
            size=(size, size),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        for t, b, l, r in crop_boxes(h, w)
    ]
    return torch.stack(crops, dim=1)


class SelfAttention2d(nn.Module):
    """Self-attention over the spatial positions of one feature map (SAGAN-style).

    y = x + gamma * V softmax(Q^T K / sqrt(d)); gamma starts at 0 so the extractor starts
    as a plain CNN and learns how much attention to mix in.
    """

    def __init__(self, channels: int, attn_dim: int) -> None:
        super().__init__()
        self.query = nn.Conv2d(channels, attn_dim, 1)
        self.key = nn.Conv2d(channels, attn_dim, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2)  # (B, A, N)
        k = self.key(x).flatten(2)
        v = self.value(x).flatten(2)  # (B, C, N)
        attn = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(q.shape[1]), dim=-1)  # (B, N, N)
        out = (v @ attn.transpose(1, 2)).view(b, c, h, w)
        return x + self.gamma * out


class LocalExtractor(nn.Module):
    """One crop's extractor (Sec. III-B): (B, 3, s, s) -> (B, C)."""

    def __init__(self, channels: tuple[int, ...], attn_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c_out, stride in zip(channels, CONV_STRIDES, strict=True):
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        self.attention = SelfAttention2d(c_in, attn_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.convs(x)).mean(dim=(2, 3))


class GroupedLocalExtractors(nn.Module):
    """`groups` independent `LocalExtractor`s as one batched op: (B, G, 3, s, s) -> (B, G, C).

    Crop g owns channels [g*c, (g+1)*c) of every grouped conv / BN, and its own attention.
    """

    def __init__(self, channels: tuple[int, ...], attn_dim: int, groups: int = NUM_CROPS):
        super().__init__()
        self.groups = groups
        self.channels = tuple(channels)
        self.attn_dim = attn_dim
        g = groups
        layers: list[nn.Module] = []
        c_in = 3
        for c_out, stride in zip(channels, CONV_STRIDES, strict=True):
            layers += [
                nn.Conv2d(g * c_in, g * c_out, 3, stride=stride, padding=1, groups=g, bias=False),
                nn.BatchNorm2d(g * c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        self.out_channels = c_in
        self.query = nn.Conv2d(g * c_in, g * attn_dim, 1, groups=g)
        self.key = nn.Conv2d(g * c_in, g * attn_dim, 1, groups=g)
        self.value = nn.Conv2d(g * c_in, g * c_in, 1, groups=g)
        self.gamma = nn.Parameter(torch.zeros(g))

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        b, g, c3, s, _ = crops.shape
        if g != self.groups or c3 != 3:
            raise ValueError(
                f"expected (B, {self.groups}, 3, s, s) crops, got {tuple(crops.shape)}"
            )
        x = self.convs(crops.reshape(b, g * 3, s, s))  # (B, G*C, h, w)
        _, _, h, w = x.shape
        c, a, n = self.out_channels, self.attn_dim, h * w
        # reshape, not view: under channels_last the maps are (B, h, w, G*C) in memory.
        q = self.query(x).reshape(b * g, a, n)
        k = self.key(x).reshape(b * g, a, n)
        v = self.value(x).reshape(b * g, c, n)
        attn = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(a), dim=-1)  # (B*G, N, N)
        out = (v @ attn.transpose(1, 2)).view(b, g, c, n)
        y = x.reshape(b, g, c, n) + self.gamma.view(1, g, 1, 1) * out
        return y.mean(dim=3)  # (B, G, C)

    def extractor(self, i: int) -> LocalExtractor:
        """Crop i's weights copied into a plain `LocalExtractor` (the reference form)."""
        ref = LocalExtractor(self.channels, self.attn_dim)
        grouped = [m for m in self.convs if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
        plain = [m for m in ref.convs if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
        with torch.no_grad():
            for src, dst in zip(grouped, plain, strict=True):
                n = dst.weight.shape[0]
                sl = slice(i * n, (i + 1) * n)
                dst.weight.copy_(src.weight[sl])
                if isinstance(dst, nn.BatchNorm2d):
                    dst.bias.copy_(src.bias[sl])
                    dst.running_mean.copy_(src.running_mean[sl])
                    dst.running_var.copy_(src.running_var[sl])
                    dst.num_batches_tracked.copy_(src.num_batches_tracked)
            for name in ("query", "key", "value"):
                src, dst = getattr(self, name), getattr(ref.attention, name)
                n = dst.weight.shape[0]
                dst.weight.copy_(src.weight[i * n : (i + 1) * n])
                dst.bias.copy_(src.bias[i * n : (i + 1) * n])
            ref.attention.gamma.copy_(self.gamma[i : i + 1])
        return ref.train(self.training)


class LocalBranch(nn.Module):
    """(B, 3, H, W) FaceNet-normalised images -> L_exp (B, embed_dim)."""

    def __init__(self, cfg: GLEEConfig) -> None:
        super().__init__()
        self.crop_size = cfg.local_crop_size
        self.extractors = GroupedLocalExtractors(cfg.local_channels, cfg.local_attention_dim)
        c = self.extractors.out_channels
        # Sec. III-B: "an MLP gives L_exp". It ends in batch norm, as the global branch's
        # FaceNet does: the pooled ReLU features share a large common part, and without
        # centring L_exp was a near-constant vector (norm ~38 against G_exp's ~2) that
        # dominated E_exp = L_exp + G_exp, so the L2-normalised embeddings of all faces
        # coincided (squared distances ~1e-3 against margins of 0.1-0.2) and the triplet
        # loss stayed at its collapsed value through pretraining.
        self.mlp = nn.Sequential(
            nn.Linear(NUM_CROPS * c, cfg.local_mlp_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(cfg.local_mlp_hidden, cfg.embed_dim),
            nn.BatchNorm1d(cfg.embed_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        crops = extract_crops(x, self.crop_size)  # (B, 16, 3, s, s)
        feats = self.extractors(crops)  # (B, 16, C)
        return self.mlp(feats.flatten(1))


__all__ = [
    "CROP_FRACTIONS",
    "CROP_NAMES",
    "NUM_CROPS",
    "GroupedLocalExtractors",
    "LocalBranch",
    "LocalExtractor",
    "SelfAttention2d",
    "crop_boxes",
    "extract_crops",
]
