"""AU classifiers (Sec. III-D): the Transformer classifier of GLEE-Net and the MLP of
Table V "MLP instead of TC". Both return (initial, final) logits (B, N_au)."""

from __future__ import annotations

import math

import torch
from torch import nn

from glee.model.config import GLEEConfig


class ParallelLinear(nn.Module):
    """N independent linear layers applied at once.

    Input (B, in) is shared by all N layers; input (B, N, in) gives layer n its own row n.
    Output (B, N, out). Initialised per layer as nn.Linear is.
    """

    def __init__(self, n: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(n, out_features))
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return torch.einsum("bi,nio->bno", x, self.weight) + self.bias
        return torch.einsum("bni,nio->bno", x, self.weight) + self.bias


class JointFC(nn.Module):
    """Sec. III-D: a joint FC over the N_au initial logits gives the final logits.

    Initialised to the identity map (final = initial at the start) so it learns the
    AU-to-AU corrections on top of the initial predictions.
    """

    def __init__(self, num_aus: int) -> None:
        super().__init__()
        self.fc = nn.Linear(num_aus, num_aus)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(num_aus))
            self.fc.bias.zero_()

    def forward(self, initial: torch.Tensor) -> torch.Tensor:
        return self.fc(initial)


class TransformerClassifier(nn.Module):
    """Sec. III-D: per-AU token MLPs -> Transformer encoder -> per-AU FC -> joint FC.

    (B, in_dim) joint representation -> (initial, final) logits, each (B, N_au).
    Without the joint FC (Table V "w/o joint FC") final is the initial logits.
    """

    def __init__(self, cfg: GLEEConfig, in_dim: int) -> None:
        super().__init__()
        n, d = cfg.num_aus, cfg.token_dim
        # Parallel MLPs, one token per AU.
        self.token_fc1 = ParallelLinear(n, in_dim, cfg.token_hidden)
        self.token_act = nn.ReLU(inplace=True)
        self.token_fc2 = ParallelLinear(n, cfg.token_hidden, d)
        layer = nn.TransformerEncoderLayer(
            d_model=d,
            nhead=cfg.classifier_heads,
            dim_feedforward=cfg.classifier_ff_dim,
            dropout=cfg.classifier_dropout,
            batch_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, num_layers=cfg.classifier_depth, enable_nested_tensor=False
        )
        self.au_fc = ParallelLinear(n, d, 1)  # independent per-AU FC layers
        self.joint_fc = JointFC(n) if cfg.joint_fc else None

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, N_au, token_dim)."""
        return self.token_fc2(self.token_act(self.token_fc1(x)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.encoder(self.tokens(x))  # (B, N_au, token_dim)
        initial = self.au_fc(tokens).squeeze(-1)  # (B, N_au)
        final = self.joint_fc(initial) if self.joint_fc is not None else initial
        return initial, final


class MLPClassifier(nn.Module):
    """Table V "MLP instead of TC": (B, in_dim) -> MLP -> initial logits -> joint FC -> final."""

    def __init__(self, cfg: GLEEConfig, in_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, cfg.mlp_hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(cfg.classifier_dropout),
            nn.Linear(cfg.mlp_hidden, cfg.num_aus),
        )
        self.joint_fc = JointFC(cfg.num_aus) if cfg.joint_fc else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        initial = self.mlp(x)
        final = self.joint_fc(initial) if self.joint_fc is not None else initial
        return initial, final


def build_classifier(cfg: GLEEConfig, in_dim: int) -> nn.Module:
    if cfg.classifier == "transformer":
        return TransformerClassifier(cfg, in_dim)
    if cfg.classifier == "mlp":
        return MLPClassifier(cfg, in_dim)
    raise ValueError(f"classifier must be one of ['transformer', 'mlp'], got {cfg.classifier!r}")


__all__ = [
    "JointFC",
    "MLPClassifier",
    "ParallelLinear",
    "TransformerClassifier",
    "build_classifier",
]
