"""Focal and smooth-L1 losses against values worked by hand."""

import math

import pytest
import torch

from isrn_model.losses import sigmoid_focal_loss, smooth_l1_loss


def test_focal_loss_by_hand():
    # logit 0 → p = 0.5. Face: α (1 − 0.5)² (−log 0.5) = 0.25 · 0.25 · 0.693147 = 0.0433217
    # logit ln 3 → p = 0.75, background: (1 − α) p² (−log(1 − p)) = 0.75 · 0.5625 · 1.386294 = 0.5848428
    logits = torch.tensor([0.0, math.log(3.0)])
    targets = torch.tensor([1.0, 0.0])
    expected = 0.25 * 0.25 * math.log(2) + 0.75 * 0.5625 * math.log(4)
    assert sigmoid_focal_loss(logits, targets, 0.25, 2.0).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.0433217 + 0.5848428, rel=1e-6)


def test_focal_gamma_zero_is_weighted_bce():
    logits = torch.tensor([0.3, -1.2])
    targets = torch.tensor([1.0, 0.0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    assert sigmoid_focal_loss(logits, targets, 0.5, 0.0).item() == pytest.approx(0.5 * bce.sum().item())


def test_smooth_l1_by_hand():
    pred = torch.tensor([[0.0, 0.05, 1.0, -0.2]])
    target = torch.zeros(1, 4)
    # β = 0.1: |0| → 0; |0.05| < β → 0.5 · 0.0025 / 0.1 = 0.0125; |1| → 1 − 0.05 = 0.95; |0.2| → 0.15
    assert smooth_l1_loss(pred, target, 0.1).item() == pytest.approx(0.0125 + 0.95 + 0.15)
