"""AU detection metrics: per-AU F1 from TP/FP/FN accumulated over a whole evaluation set
(AU present if p > 0.5, unknown labels masked, Sec. IV-A), fold averages, and the results
table in the paper's format (AUs as columns, Avg last, percent with one decimal)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from glee.files import write_text_atomic


class F1Accumulator:
    """Counts TP / FP / FN per AU over batches; F1 is computed once from the totals.

    Convention: an AU with no positive label and no positive prediction in the whole set
    (2TP + FP + FN = 0) gets F1 = 0, as is common in AU papers; such an AU drags the mean.
    `state()` is a (3, n_au) int64 tensor (tp, fp, fn) that can be summed across workers
    (e.g. an all-reduce) and folded back with `merge`.
    """

    def __init__(
        self, num_aus: int, threshold: float = 0.5, device: torch.device | str = "cpu"
    ) -> None:
        if num_aus <= 0:
            raise ValueError(f"num_aus must be positive, got {num_aus}")
        self.num_aus = num_aus
        self.threshold = threshold
        self.device = torch.device(device)  # counts stay where the predictions are: no sync
        self.tp = torch.zeros(num_aus, dtype=torch.int64, device=self.device)
        self.fp = torch.zeros(num_aus, dtype=torch.int64, device=self.device)
        self.fn = torch.zeros(num_aus, dtype=torch.int64, device=self.device)

    def reset(self) -> None:
        for t in (self.tp, self.fp, self.fn):
            t.zero_()

    @torch.no_grad()
    def update(
        self,
        logits_or_probs: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray,
        from_logits: bool = True,
    ) -> None:
        """Add a batch: scores (B, n_au) and labels (B, n_au) of 1 / 0 / -1 (unknown)."""
        scores = torch.as_tensor(logits_or_probs).detach().to(self.device, torch.float64)
        lab = torch.as_tensor(labels).detach().to(self.device)
        if scores.shape != lab.shape or scores.dim() != 2 or scores.shape[1] != self.num_aus:
            raise ValueError(
                f"scores and labels must both be (B, {self.num_aus}), got "
                f"{tuple(scores.shape)} and {tuple(lab.shape)}"
            )
        probs = torch.sigmoid(scores) if from_logits else scores
        pred = probs > self.threshold  # Sec. IV-A: present if p > 0.5
        known = lab >= 0
        pos = (lab == 1) & known
        neg = (lab == 0) & known
        self.tp += (pred & pos).sum(dim=0)
        self.fp += (pred & neg).sum(dim=0)
        self.fn += (~pred & pos).sum(dim=0)

    def state(self) -> torch.Tensor:
        """(3, n_au) int64: rows tp, fp, fn."""
        return torch.stack([self.tp, self.fp, self.fn])

    def merge(self, state: torch.Tensor | np.ndarray) -> None:
        """Add counts from another accumulator's `state()`."""
        s = torch.as_tensor(state).detach().to(self.device, torch.int64)
        if s.shape != (3, self.num_aus):
            raise ValueError(f"state must be (3, {self.num_aus}), got {tuple(s.shape)}")
        self.tp += s[0]
        self.fp += s[1]
        self.fn += s[2]

    def f1(self) -> np.ndarray:
        """(n_au,) F1 in [0, 1]: 2TP / (2TP + FP + FN), 0 where the denominator is 0."""
        return f1_from_counts(*(t.cpu().numpy() for t in (self.tp, self.fp, self.fn)))

    def mean_f1(self) -> float:
        return float(self.f1().mean())


def f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """Per-AU F1 from counts; 0 where there is no positive label and no positive prediction."""
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(denom), where=denom > 0)


def au_f1(
    logits_or_probs: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    from_logits: bool = True,
    threshold: float = 0.5,
) -> np.ndarray:
    """Per-AU F1 of one complete set of predictions (B, n_au)."""
    acc = F1Accumulator(np.shape(labels)[1], threshold)
    acc.update(logits_or_probs, labels, from_logits=from_logits)
    return acc.f1()


def fold_average(per_fold: Sequence[np.ndarray | Sequence[float]]) -> np.ndarray:
    """Per-AU mean over folds (the paper's 3-fold average): list of (n_au,) -> (n_au,)."""
    if len(per_fold) == 0:
        raise ValueError("fold_average needs at least one fold")
    arrs = [np.asarray(f, dtype=np.float64) for f in per_fold]
    shapes = {a.shape for a in arrs}
    if len(shapes) != 1 or arrs[0].ndim != 1:
        raise ValueError(f"every fold must give the same (n_au,) F1 vector, got shapes {shapes}")
    return np.stack(arrs).mean(axis=0)


def f1_table(
    rows: Mapping[str, Sequence[float] | np.ndarray], au_names: Sequence[str]
) -> pd.DataFrame:
    """The paper's table: one row per method, AUs as columns then Avg, F1 in percent (1 dp).

    `rows` maps a method name to its per-AU F1 in [0, 1]; Avg is the mean of the unrounded
    values.
    """
    names = list(au_names)
    data = {}
    for method, values in rows.items():
        v = np.asarray(values, dtype=np.float64)
        if v.shape != (len(names),):
            raise ValueError(f"row {method!r} has {v.size} F1 values for {len(names)} AUs {names}")
        if np.any(v < 0) or np.any(v > 1):
            raise ValueError(f"row {method!r}: F1 values must be in [0, 1], got {v.tolist()}")
        pct = np.append(v, v.mean()) * 100.0
        data[method] = np.round(pct, 1)
    df = pd.DataFrame.from_dict(data, orient="index", columns=[*names, "Avg"])
    df.index.name = "Method"
    return df


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub Markdown table of `df` (index first, numbers with one decimal)."""

    def cell(x: object) -> str:
        if isinstance(x, (float, np.floating)):
            return f"{x:.1f}"
        return str(x)

    header = [str(df.index.name or ""), *[str(c) for c in df.columns]]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * len(df.columns)) + "|",
    ]
    for idx, row in df.iterrows():
        lines.append("| " + " | ".join([str(idx), *[cell(x) for x in row.tolist()]]) + " |")
    return "\n".join(lines) + "\n"


def write_f1_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write the table atomically as Markdown (.md) or CSV (.csv), chosen by the suffix."""
    path = Path(path)
    if path.suffix == ".md":
        text = to_markdown(df)
    elif path.suffix == ".csv":
        text = df.to_csv(float_format="%.1f")
    else:
        raise ValueError(f"table path must end in .md or .csv, got {path.name!r}")
    return write_text_atomic(path, text)


__all__ = [
    "F1Accumulator",
    "au_f1",
    "f1_from_counts",
    "f1_table",
    "fold_average",
    "to_markdown",
    "write_f1_table",
]
