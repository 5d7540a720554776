import math

import numpy as np
import pytest
import torch

from glee.datasets.fec import DEFAULT_MARGINS
from glee.training.losses import (
    au_balance_weights,
    au_class_weights,
    au_loss,
    triplet_loss,
    weighted_bce,
)


def _t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_triplet_loss_hand_values_with_per_type_margins():
    # Unit vectors in 2D; squared distances by hand:
    # 0: |A-P|^2=2, |A-N|^2=4, |P-N|^2=2  -> 0 + m
    # 1: |A-P|^2=0, |A-N|^2=2, |P-N|^2=2  -> 0
    # 2: |A-P|^2=4, |A-N|^2=0, |P-N|^2=4  -> (4 + m) + m
    a = _t([[1, 0], [1, 0], [1, 0]])
    p = _t([[0, 1], [1, 0], [-1, 0]])
    n = _t([[-1, 0], [0, 1], [1, 0]])
    types = ["ONE_CLASS_TRIPLET", "TWO_CLASS_TRIPLET", "THREE_CLASS_TRIPLET"]
    margins = torch.tensor([DEFAULT_MARGINS[t] for t in types], dtype=torch.float64)
    assert margins.tolist() == pytest.approx([0.1, 0.2, 0.2])  # Sec. IV-B
    loss = triplet_loss(a, p, n, margins)
    assert loss.item() == pytest.approx((0.1 + 0.0 + 4.4) / 3)
    # A float margin applies to all triplets.
    assert triplet_loss(a, p, n, 0.1).item() == pytest.approx((0.1 + 0.0 + 4.2) / 3)


def test_triplet_loss_is_two_sided():
    # The negative is far from the anchor but close to the positive: only the second
    # term (|A-P|^2 - |P-N|^2 + m) is active.
    a, p, n = _t([[1, 0]]), _t([[0.6, 0.8]]), _t([[0, 1]])
    d_ap, d_an, d_pn = 0.8, 2.0, 0.4
    expected = max(0, d_ap - d_an + 0.2) + max(0, d_ap - d_pn + 0.2)
    assert triplet_loss(a, p, n, 0.2).item() == pytest.approx(expected)


def test_triplet_loss_zero_and_no_gradient_when_satisfied():
    a = _t([[1, 0]]).requires_grad_()
    loss = triplet_loss(a, _t([[1, 0]]), _t([[-1, 0]]), 0.2)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(a.grad) == 0


def test_triplet_loss_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="margin has 2 values"):
        triplet_loss(_t([[1, 0]]), _t([[1, 0]]), _t([[1, 0]]), torch.tensor([0.1, 0.2]))


def test_au_class_weights_hand_values_and_unknowns():
    # AU0: 2 of 4 known positive (r=0.5); AU1: 1 of 4 known (r=0.25), its -1 ignored.
    labels = np.array([[1, 1], [1, 0], [0, 0], [0, 0], [-1, -1]])
    w = au_class_weights(labels)
    inv = np.array([2.0, 4.0])
    assert w.numpy() == pytest.approx(inv / inv.sum() * 2)
    assert w.mean().item() == pytest.approx(1.0)
    # Tensor input gives the same.
    assert torch.equal(au_class_weights(torch.as_tensor(labels)), w)


def test_au_class_weights_guard_for_absent_aus():
    labels = np.array([[1, 0, -1], [0, 0, -1], [0, 0, -1], [0, 0, -1]])
    w = au_class_weights(labels)
    assert torch.isfinite(w).all()
    # AU1 (no positives) is counted as 1 of 4 like AU0; AU2 (nothing known) as r=1.
    assert w.numpy() == pytest.approx(np.array([4.0, 4.0, 1.0]) / 9.0 * 3)


def _bce(x, g):
    p = 1 / (1 + math.exp(-x))
    return -(g * math.log(p) + (1 - g) * math.log(1 - p))


def test_weighted_bce_masks_unknowns_and_matches_hand_value():
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0]], requires_grad=True)
    labels = torch.tensor([[1, -1], [0, 1]])
    weights = torch.tensor([0.5, 1.5])
    loss = weighted_bce(logits, labels, weights)
    expected = (0.5 * _bce(0, 1) + 0.5 * _bce(1, 0) + 1.5 * _bce(-1, 1)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert logits.grad[0, 1] == 0  # the unknown label gives no gradient
    # Changing the logit of the unknown label does not change the loss.
    other = logits.detach().clone()
    other[0, 1] = -50.0
    assert weighted_bce(other, labels, weights).item() == pytest.approx(loss.item())


def test_weighted_bce_without_unknowns_is_the_paper_formula():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 2, (5, 4), generator=gen)
    weights = torch.tensor([0.5, 1.0, 1.5, 1.0], dtype=torch.float64)
    per_sample = [
        sum(weights[i].item() * _bce(logits[b, i].item(), labels[b, i].item()) for i in range(4))
        / 4
        for b in range(5)
    ]
    assert weighted_bce(logits, labels, weights).item() == pytest.approx(np.mean(per_sample))


def test_weighted_bce_all_unknown_is_zero_and_differentiable():
    logits = torch.randn(3, 2, requires_grad=True)
    loss = weighted_bce(logits, -torch.ones(3, 2, dtype=torch.long), torch.ones(2))
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logits.grad) == 0


def test_au_loss_sums_initial_and_final():
    labels = torch.tensor([[1, 0, -1], [0, 1, 1]])
    w = au_class_weights(labels)
    ini, fin = torch.randn(2, 3), torch.randn(2, 3)
    expected = weighted_bce(ini, labels, w) + weighted_bce(fin, labels, w)
    assert au_loss(ini, fin, labels, w).item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="weights must be"):
        weighted_bce(ini, labels, torch.ones(2))


def test_balance_weights_make_an_aus_positives_count_as_much_as_its_negatives():
    labels = torch.tensor([[1, 0], [0, 0], [0, -1], [0, 1]])  # AU a: 1 of 4, AU b: 1 of 3
    balance = au_balance_weights(labels)
    torch.testing.assert_close(balance, torch.tensor([[2.0, 1.5], [4 / 6, 0.75]]))
    for j in range(2):  # summed over the known labels, the two classes weigh the same
        known = labels[:, j] >= 0
        w = torch.where(labels[known, j] == 1, balance[0, j], balance[1, j])
        assert w[labels[known, j] == 1].sum() == pytest.approx(w[labels[known, j] == 0].sum())
    # an all-absent prediction, which Sec. IV-B's loss lets rare AUs settle on, costs more
    logits = torch.full((4, 2), -3.0)
    ones = torch.ones(2)
    assert weighted_bce(logits, labels, ones, balance) > weighted_bce(logits, labels, ones)
    # by hand: the balanced BCE of entry (b, i) is scaled by its class's weight
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, labels.clamp(min=0).float(), reduction="none"
    )
    scale = torch.where(labels == 1, balance[0], balance[1]) * (labels >= 0)
    expected = (bce * scale).sum() / (labels >= 0).sum()
    torch.testing.assert_close(weighted_bce(logits, labels, ones, balance), expected)
