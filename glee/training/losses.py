"""Losses of GLEE-Net: the two-sided triplet loss of pretraining (Eq. (4), Sec. III-E) and
the weighted BCE of AU finetuning (Sec. III-D / IV-B), with unknown labels masked out."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def triplet_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    margin: float | torch.Tensor,
) -> torch.Tensor:
    """Eq. (4): two-sided triplet loss, mean over the batch.

    L = max(0, |A-P|^2 - |A-N|^2 + m) + max(0, |A-P|^2 - |P-N|^2 + m) with squared
    Euclidean distances. Inputs are (B, D) embeddings, already L2-normalised (what
    `GLEENet.embed` returns; this function does not normalise). `margin` is a float or a
    (B,) tensor of per-triplet margins (Sec. IV-B: glee.datasets.fec.DEFAULT_MARGINS).
    """
    if not (anchor.shape == positive.shape == negative.shape) or anchor.dim() != 2:
        raise ValueError(
            "anchor, positive and negative must all be (B, D), got "
            f"{tuple(anchor.shape)}, {tuple(positive.shape)}, {tuple(negative.shape)}"
        )
    m = torch.as_tensor(margin, dtype=anchor.dtype, device=anchor.device)
    if m.dim() == 1 and m.shape[0] != anchor.shape[0]:
        raise ValueError(f"margin has {m.shape[0]} values for a batch of {anchor.shape[0]}")
    d_ap = (anchor - positive).pow(2).sum(dim=1)  # (B,)
    d_an = (anchor - negative).pow(2).sum(dim=1)
    d_pn = (positive - negative).pow(2).sum(dim=1)
    loss = F.relu(d_ap - d_an + m) + F.relu(d_ap - d_pn + m)
    return loss.mean()


def au_class_weights(labels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Per-AU weights from a training fold's labels (N, n_au) of 1 / 0 / -1 (unknown).

    Sec. IV-B: r_i = occurrence ratio of AU i among its known labels,
    w_i = (1/r_i) / sum_j (1/r_j) * N_au, so the weights average to 1 and rare AUs weigh more.
    Guard: an AU with no positive label (r_i = 0) is counted as if it had one positive, and
    an AU with no known label at all gets r_i = 1; both keep the weights finite.
    """
    lab = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels)
    if lab.dim() != 2:
        raise ValueError(f"labels must be (N, n_au), got shape {tuple(lab.shape)}")
    lab = lab.to(torch.float64)
    known = (lab >= 0).sum(dim=0).to(torch.float64)  # (n_au,)
    pos = (lab == 1).sum(dim=0).to(torch.float64)
    ratio = pos.clamp(min=1.0) / known.clamp(min=1.0)
    inv = 1.0 / ratio
    weights = inv / inv.sum() * lab.shape[1]
    return weights.to(torch.float32)


def au_balance_weights(labels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(2, n_au): per AU, the weight of its positive and of its negative labels that makes
    the two count equally (known / (2 positives), known / (2 negatives); a class with no
    label counts as one). Not in the paper: Sec. IV-B weighs AUs against each other only,
    and on the demo's data its head predicted the rare AUs absent (0 F1) where a balanced
    logistic regression on f_exp did not (`finetune.class_balance`, off by default)."""
    lab = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels)
    if lab.dim() != 2:
        raise ValueError(f"labels must be (N, n_au), got shape {tuple(lab.shape)}")
    known = (lab >= 0).sum(dim=0).to(torch.float64).clamp(min=1.0)
    pos = (lab == 1).sum(dim=0).to(torch.float64).clamp(min=1.0)
    neg = (lab == 0).sum(dim=0).to(torch.float64).clamp(min=1.0)
    return torch.stack([known / (2 * pos), known / (2 * neg)]).to(torch.float32)


def weighted_bce(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    balance: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted BCE over known labels (Sec. III-D): L = -(1/N_au) sum_i w_i [g log p + (1-g) log(1-p)].

    logits and labels are (B, n_au), labels 1 / 0 / -1 (unknown, masked); weights (n_au,).
    Normalisation with masks: the sum of w_i * BCE over the known (b, i) entries divided by
    the number of known entries. With no unknowns this is exactly the paper's per-sample
    mean over N_au averaged over the batch; with none known it is 0 (still differentiable).
    """
    if logits.shape != labels.shape or logits.dim() != 2:
        raise ValueError(
            f"logits and labels must both be (B, n_au), got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}"
        )
    if weights.shape != (logits.shape[1],):
        raise ValueError(f"weights must be ({logits.shape[1]},), got {tuple(weights.shape)}")
    mask = labels >= 0
    target = labels.clamp(min=0).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # (B, n_au)
    if balance is not None:  # (2, n_au) from au_balance_weights: positives, negatives
        bce = bce * torch.where(target > 0.5, balance[0], balance[1]).to(logits.dtype)
    weighted = bce * weights.to(logits.dtype) * mask
    count = mask.sum()
    return weighted.sum() / count.clamp(min=1)


def au_loss(
    initial: torch.Tensor,
    final: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    balance: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sec. III-D: weighted BCE on the initial and on the final predictions, summed;
    `balance` (au_balance_weights) also weighs each AU's positives against its negatives."""
    return weighted_bce(initial, labels, weights, balance) + weighted_bce(
        final, labels, weights, balance
    )


__all__ = [
    "au_balance_weights",
    "au_class_weights",
    "au_loss",
    "triplet_loss",
    "weighted_bce",
]
