"""Ave-Var, the Fig. 6 statistic: how tightly a feature groups faces of one AU combination.

Definition used here (DESIGN.md names the statistic but not its formula, so this is this
project's reading of Fig. 6): every feature vector is L2-normalised, so features of
different branches and sizes live on the same unit sphere; faces are grouped by their AU
combination (the exact 0/1 label vector; faces with an unknown label are left out); the
variance of a group is the mean squared distance of its members to the group centroid;
Ave-Var is the unweighted mean of that variance over the groups with at least `min_count`
members. Lower is better: faces with the same AUs sit closer together. `ratio` divides by
the same variance over those faces pooled, which makes features of different sizes
comparable (1.0: the AU combination explains none of the spread).

Branch combinations (Sec. III): GB = G_exp, LB = L_exp, GB+LB = E_exp (the model's
normalised sum, Sec. III-B), 3DGB = f_exp, GB+LB+3DGB = the classifier input
concat(E_exp, f_exp) (Sec. III-D) with both parts normalised, so neither dominates by scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

BRANCH_COMBINATIONS: tuple[str, ...] = ("GB", "LB", "GB+LB", "3DGB", "GB+LB+3DGB")


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def combination_ids(labels: np.ndarray) -> np.ndarray:
    """(N,) group id per face by its AU combination; -1 where any label is unknown (< 0)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be (N, n_au), got shape {labels.shape}")
    ids = np.full(len(labels), -1, np.int64)
    known = (labels >= 0).all(axis=1)
    if known.any():
        _, inverse = np.unique(labels[known].astype(np.int8), axis=0, return_inverse=True)
        ids[known] = inverse.reshape(-1)
    return ids


def combination_name(row: Sequence[int], au_names: Sequence[str]) -> str:
    """ "AU6+AU12" for a label row, "none" for no AU, "unknown" if any label is unknown."""
    row = list(row)
    if any(v < 0 for v in row):
        return "unknown"
    on = [name for name, v in zip(au_names, row) if v == 1]
    return "+".join(on) if on else "none"


@dataclass(frozen=True)
class AveVar:
    value: float  # mean within-combination variance of the L2-normalised features
    ratio: float  # value / variance of all the faces pooled
    groups: int  # AU combinations that counted (>= min_count faces)
    faces: int  # faces in those groups


def ave_var(features: np.ndarray, labels: np.ndarray, min_count: int = 2) -> AveVar:
    """Fig. 6 statistic of one feature (N, d) for faces with AU labels (N, n_au)."""
    feats = np.asarray(features)
    if feats.ndim != 2 or len(feats) != len(labels):
        raise ValueError(
            f"features must be (N, d) with one row per label row: got {feats.shape} "
            f"for {len(labels)} label rows"
        )
    if min_count < 2:
        raise ValueError(f"min_count must be >= 2 (a variance needs two faces), got {min_count}")
    x = _unit(feats)
    ids = combination_ids(labels)
    variances = []
    counted = np.zeros(len(x), bool)
    for g in np.unique(ids[ids >= 0]):
        group = x[ids == g]
        if len(group) < min_count:
            continue
        variances.append(float(((group - group.mean(0)) ** 2).sum(1).mean()))
        counted |= ids == g
    if not variances:
        raise ValueError(
            f"no AU combination has {min_count} or more faces with fully known labels: "
            "Ave-Var needs repeated combinations (evaluate more faces)"
        )
    pooled = x[counted]  # the faces of the counted groups, pooled
    total = float(((pooled - pooled.mean(0)) ** 2).sum(1).mean())
    value = float(np.mean(variances))
    ratio = value / total if total > 0 else float("nan")
    return AveVar(value, ratio, len(variances), int(counted.sum()))


def branch_features(
    g_exp: np.ndarray | None,
    l_exp: np.ndarray | None,
    e_exp: np.ndarray | None,
    f_exp: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """The branch combinations of Fig. 6 that one model's per-face outputs allow (a variant
    without a branch passes None for it and loses the combinations that need it)."""
    out: dict[str, np.ndarray] = {}
    if g_exp is not None:
        out["GB"] = np.asarray(g_exp, np.float64)
    if l_exp is not None:
        out["LB"] = np.asarray(l_exp, np.float64)
    if e_exp is not None and g_exp is not None and l_exp is not None:
        out["GB+LB"] = _unit(e_exp)
    if f_exp is not None:
        out["3DGB"] = _unit(f_exp)
    if e_exp is not None and f_exp is not None and g_exp is not None and l_exp is not None:
        out["GB+LB+3DGB"] = np.concatenate([_unit(e_exp), _unit(f_exp)], axis=1) / np.sqrt(2.0)
    return out


def ave_var_table(
    features: Mapping[str, np.ndarray], labels: np.ndarray, min_count: int = 2
) -> dict[str, AveVar]:
    """Ave-Var of each named feature on the same faces."""
    return {name: ave_var(f, labels, min_count) for name, f in features.items()}


__all__ = [
    "BRANCH_COMBINATIONS",
    "AveVar",
    "ave_var",
    "ave_var_table",
    "branch_features",
    "combination_ids",
    "combination_name",
]
