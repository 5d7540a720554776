"""Evaluation figures (matplotlib, Agg backend, no display needed), each written atomically.

plot_f1_bars   per-AU F1 bars of one or more rows (folds, mean), the paper's Avg beside
plot_tsne      t-SNE of E_exp coloured by AU combination (analogue of Fig. 2 and Fig. 5)
plot_ave_var   Ave-Var of the branch combinations (analogue of Fig. 6)
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from glee.evaluation.ave_var import AveVar, combination_name  # noqa: E402
from glee.files import atomic_path  # noqa: E402


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save `fig` as PNG through a temporary file and os.replace, then close it."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(path)


def plot_f1_bars(
    rows: Mapping[str, Sequence[float] | np.ndarray],
    au_names: Sequence[str],
    path: str | os.PathLike,
    *,
    title: str = "",
    reported_avg: float | None = None,
) -> Path:
    """Grouped bars: per-AU F1 (%) of each row (F1 in [0, 1]), with the row means in the
    legend and the paper's reported average (%) as a dashed line when given."""
    names = list(au_names)
    if not rows:
        raise ValueError("plot_f1_bars needs at least one row of F1 values")
    data = {k: np.asarray(v, np.float64) * 100.0 for k, v in rows.items()}
    for k, v in data.items():
        if v.shape != (len(names),):
            raise ValueError(f"row {k!r} has {v.size} F1 values for {len(names)} AUs")
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(names) + 2.5), 4.2))
    width = 0.8 / len(data)
    xs = np.arange(len(names))
    cmap = plt.get_cmap("tab10")
    for i, (label, v) in enumerate(data.items()):
        ax.bar(
            xs + (i - (len(data) - 1) / 2) * width,
            v,
            width,
            label=f"{label} (Avg {v.mean():.1f})",
            color=cmap(i % 10),
        )
    if reported_avg is not None:
        ax.axhline(reported_avg, ls="--", color="black", lw=1.2, label=f"paper Avg {reported_avg}")
    ax.set_xticks(xs, names)
    ax.set_ylim(0, 105)
    ax.set_ylabel("F1 (%)")
    ax.set_title(title or "Per-AU F1")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, frameon=False)
    return save_figure(fig, path)


def tsne_2d(features: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """(N, d) -> (N, 2) with scikit-learn's t-SNE; the perplexity shrinks for small N."""
    from sklearn.manifold import TSNE

    x = np.asarray(features, np.float64)
    if x.ndim != 2 or len(x) < 5:
        raise ValueError(f"t-SNE needs at least 5 feature rows (N, d), got shape {x.shape}")
    perp = float(min(perplexity, max(2.0, (len(x) - 1) / 3.0)))
    return TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(x)


def plot_tsne(
    features: np.ndarray,
    labels: np.ndarray,
    au_names: Sequence[str],
    path: str | os.PathLike,
    *,
    title: str = "",
    top_k: int = 8,
    seed: int = 0,
) -> Path:
    """Fig. 2 / Fig. 5 analogue: t-SNE of the embedding, one colour per frequent AU
    combination (the `top_k` most frequent), every other combination grey."""
    labels = np.asarray(labels)
    if len(labels) != len(features):
        raise ValueError(f"{len(features)} feature rows but {len(labels)} label rows")
    xy = tsne_2d(features, seed=seed)
    names = [combination_name(r, au_names) for r in labels]
    common = [n for n, _ in Counter(names).most_common() if n != "unknown"][:top_k]
    fig, ax = plt.subplots(figsize=(7.0, 5.6))
    rest = np.array([n not in common for n in names])
    if rest.any():
        ax.scatter(*xy[rest].T, s=10, c="lightgrey", label=f"other ({int(rest.sum())})")
    cmap = plt.get_cmap("tab10")
    for i, combo in enumerate(common):
        sel = np.array([n == combo for n in names])
        ax.scatter(*xy[sel].T, s=14, color=cmap(i % 10), label=f"{combo} ({int(sel.sum())})")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or "t-SNE of E_exp by AU combination")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return save_figure(fig, path)


def plot_ave_var(table: Mapping[str, AveVar], path: str | os.PathLike, *, title: str = "") -> Path:
    """Fig. 6 analogue, two panels per branch combination: Ave-Var of the L2-normalised
    features (lower: faces with the same AUs closer) and its ratio to the pooled variance
    (comparable across branches whose features spread differently)."""
    if not table:
        raise ValueError("plot_ave_var needs at least one branch combination")
    names = list(table)
    colors = plt.get_cmap("tab10")(np.arange(len(names)) % 10)
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 2.2 * len(names) + 2.0), 4.0))
    panels = (
        ("value", "Ave-Var (L2-normalised features)", "{:.4f}"),
        ("ratio", "Ave-Var / pooled variance", "{:.2f}"),
    )
    for ax, (attr, ylabel, fmt) in zip(axes, panels):
        values = [getattr(table[n], attr) for n in names]
        bars = ax.bar(names, values, color=colors)
        for bar, v in zip(bars, values):
            ax.annotate(
                fmt.format(v),
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        top = max(values) if values and np.isfinite(max(values)) else 0.0
        ax.set_ylim(0, top * 1.2 if top > 0 else 1.0)
        ax.set_ylabel(ylabel)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    first = next(iter(table.values()))
    fig.suptitle(
        title or f"Ave-Var over {first.groups} AU combinations ({first.faces} faces)", fontsize=11
    )
    return save_figure(fig, path)


__all__ = ["plot_ave_var", "plot_f1_bars", "plot_tsne", "save_figure", "tsne_2d"]
