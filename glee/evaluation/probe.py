"""The f_exp probe: what the 3DMM expression coefficients (Sec. III-C) tell about the AUs
on their own, with no image branch. One logistic regression per AU, trained on the
training rows' f_exp (balanced class weights, like the weighted BCE of Sec. IV-B; unknown
labels left out), scored on the test rows with the same per-AU F1 as GLEE-Net (Sec. IV-A).
GLEE-Net receives f_exp directly, so the gap between the two is what the network adds."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from glee.evaluation.metrics import au_f1


def logistic_probe_f1(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
) -> np.ndarray:
    """(n_au,) F1 on the test rows of per-AU logistic regressions fitted on the train rows.

    features (N, D) float, labels (N, n_au) of 1 / 0 / -1 (unknown, left out of both the
    fit and the F1). An AU with one class only among the known training labels is
    predicted as that class (absent when it has no known label)."""
    train_features, test_features = np.asarray(train_features), np.asarray(test_features)
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    for name, x in (("train", train_features), ("test", test_features)):
        if not np.isfinite(x).all():
            raise ValueError(f"the probe's {name} features hold NaN or inf values")
    if train_labels.shape[1:] != test_labels.shape[1:]:
        raise ValueError(
            f"train and test labels code different AU counts: {train_labels.shape[1:]} "
            f"and {test_labels.shape[1:]}"
        )
    probs = np.zeros(test_labels.shape, np.float64)  # (N_test, n_au)
    for j in range(train_labels.shape[1]):
        known = train_labels[:, j] >= 0
        y = train_labels[known, j]
        if len(np.unique(y)) < 2:  # one class only in training: predict it
            probs[:, j] = float(y[0]) if len(y) else 0.0
            continue
        if len(test_features) == 0:
            continue
        model = LogisticRegression(class_weight="balanced", max_iter=2000, C=1.0)
        model.fit(train_features[known], y)
        probs[:, j] = model.predict_proba(test_features)[:, 1]
    return au_f1(probs, test_labels, from_logits=False)


def fexp_probe_f1(
    features: np.ndarray, labels: np.ndarray, folds: np.ndarray, k: int
) -> np.ndarray:
    """(n_au,) F1 of the probe on part k, trained on the other parts (fold k of the 3-fold
    protocol). Rows of fold 0 belong to no part: neither trained nor scored, as in the
    finetuning job (`glee_platform.prepared.fold_filter`)."""
    folds = np.asarray(folds)
    train, test = (folds != k) & (folds > 0), folds == k
    return logistic_probe_f1(features[train], labels[train], features[test], labels[test])


__all__ = ["fexp_probe_f1", "logistic_probe_f1"]
