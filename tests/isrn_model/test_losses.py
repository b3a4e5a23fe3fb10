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


@pytest.mark.parametrize("p", [1e-2, 3e-3, 1e-3, 1e-4])
def test_focal_loss_under_bf16_autocast_is_the_float32_loss(p):
    # Under bf16 autocast the heads emit bf16 logits. Computed in bf16, 1 − p rounds to 8 significant
    # bits: at p = 0.01, 1 − p = 0.98828, so a background anchor's factor (1 − p_t)² = (1 − (1 − p))²
    # becomes 0.01172² instead of 0.01², 37% too large; from p ≈ 0.002 down, 1 − p = 1 and the loss is
    # 0. Background anchors only: they are the hundred thousand easy negatives the focal factor is for
    # (a positive's loss, 0.25 · 0.98² · 4.6 at the prior, would hide their error in a sum).
    logits = torch.full((64,), math.log(p / (1 - p))).bfloat16()
    targets = torch.zeros(64)
    exact = sigmoid_focal_loss(logits.float(), targets)  # the same (bf16-rounded) logits, in float32
    # by hand: 64 background anchors · (1 − α) q² · (−ln(1 − q)), q the probability of the rounded
    # logit (at p = 0.01: q = 0.010014, 64 · 0.75 · 1.0028e-4 · 0.010065 = 4.845e-5)
    q = 1 / (1 + math.exp(-float(logits[0])))
    assert exact.item() == pytest.approx(64 * 0.75 * q**2 * -math.log(1 - q), rel=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = sigmoid_focal_loss(logits, targets.bfloat16())  # targets as the bf16 logits' dtype
    assert amp.dtype == torch.float32
    assert amp.item() == pytest.approx(exact.item(), rel=0.01)


def test_masked_sums_by_hand():
    # focal: only entries 0 and 2 count: logit 0 face → 0.25 · 0.25 · ln 2; logit ln 3 background
    # → 0.75 · 0.5625 · ln 4 (as above); entry 1 (logit 50, a confident "face" labelled background)
    # would add 0.75 · 50 · 1 ≈ 37.5
    logits = torch.tensor([0.0, 50.0, math.log(3.0)])
    targets = torch.tensor([True, False, False])
    mask = torch.tensor([True, False, True])
    expected = 0.25 * 0.25 * math.log(2) + 0.75 * 0.5625 * math.log(4)
    assert sigmoid_focal_loss(logits, targets, 0.25, 2.0, mask=mask).item() == pytest.approx(expected, rel=1e-6)
    # smooth-L1: row 1's target is NaN (a box encoded against a degenerate reference): masked out,
    # it changes neither the sum (0.0125 + 0.95 + 0.15 from row 0, β = 0.1) nor the gradient
    pred = torch.tensor([[0.0, 0.05, 1.0, -0.2], [0.3, 0.3, 0.3, 0.3]], requires_grad=True)
    target = torch.tensor([[0.0, 0.0, 0.0, 0.0], [float("nan"), float("inf"), 0.0, 0.0]])
    loss = smooth_l1_loss(pred, target, 0.1, mask=torch.tensor([True, False]))
    assert loss.item() == pytest.approx(0.0125 + 0.95 + 0.15)
    loss.backward()
    # d/dx: 0 at x = 0 (|x|' = sign 0), x / β = 0.5 at 0.05, 1 at 1, −1 at −0.2; row 1 exactly 0
    assert pred.grad.tolist() == [pytest.approx([0.0, 0.5, 1.0, -1.0]), [0.0] * 4]
