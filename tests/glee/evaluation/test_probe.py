import numpy as np
import pytest

from glee.evaluation.probe import fexp_probe_f1, logistic_probe_f1


def separable(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, 5) and labels (n, 3): AU j is present exactly when feature j > 0."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    return x, (x[:, :3] > 0).astype(np.int8)


def test_a_feature_that_decides_the_au_scores_100_and_shuffled_labels_chance():
    x, labels = separable()
    labels[::9, 1] = -1  # unknown: left out of the fit (a third class would ruin AU2)
    folds = np.arange(len(x)) % 3 + 1
    f1 = np.stack([fexp_probe_f1(x, labels, folds, k) for k in (1, 2, 3)])
    assert f1.shape == (3, 3) and f1.min() > 0.97
    shuffled = labels[np.random.default_rng(1).permutation(len(labels))]
    chance = np.stack([fexp_probe_f1(x, shuffled, folds, k) for k in (1, 2, 3)])
    assert 0.3 < chance.mean() < 0.65  # half the faces present: chance F1 is about 0.5


def test_the_probe_never_fits_the_test_part():
    x, labels = separable()
    folds = np.where(np.arange(len(x)) % 10 < 8, 1, np.arange(len(x)) % 2 + 2)  # 80% part 1
    assert fexp_probe_f1(x, labels, folds, 1).min() > 0.95
    # part 1's labels say the opposite; a fit that saw them (most of the rows) would follow
    # them and score near 1 on them, one fitted on parts 2 and 3 alone scores near 0
    flipped = labels.copy()
    flipped[folds == 1] = 1 - flipped[folds == 1]
    assert fexp_probe_f1(x, flipped, folds, 1).max() < 0.1


def test_rows_of_no_part_are_neither_fitted_nor_scored():
    x, labels = separable(300)
    folds = np.arange(len(x)) % 3 + 1
    alone = fexp_probe_f1(x, labels, folds, 1)
    # twice as many rows of fold 0 with every label flipped: they must change nothing
    extra_x, extra_labels = separable(600, seed=2)
    with_none = fexp_probe_f1(
        np.concatenate([x, extra_x]),
        np.concatenate([labels, 1 - extra_labels]),
        np.concatenate([folds, np.zeros(600, int)]),
        1,
    )
    np.testing.assert_array_equal(with_none, alone)


def test_an_au_of_one_class_in_training_is_predicted_as_that_class():
    x, labels = separable(300)
    train, test = slice(0, 200), slice(200, 300)
    labels[train, 0] = 0  # never present in training: predicted absent
    labels[train, 1] = 1  # always present: predicted present
    labels[train, 2] = -1  # never known: predicted absent
    f1 = logistic_probe_f1(x[train], labels[train], x[test], labels[test])
    pos, neg = (labels[test, 1] == 1).sum(), (labels[test, 1] == 0).sum()
    assert f1[0] == 0.0 and f1[2] == 0.0
    assert f1[1] == pytest.approx(2 * pos / (2 * pos + neg))  # the always-present F1


def test_the_probe_rejects_features_that_are_not_finite():
    x, labels = separable(30)
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="train features hold NaN"):
        logistic_probe_f1(x, labels, x[:5], labels[:5])
