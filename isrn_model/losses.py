"""Losses of both ISRN steps: sigmoid focal loss and smooth-L1, summed (callers normalise by positives).

Both compute in float32 whatever the inputs' dtype, as torchvision's and detectron2's detection
losses do: under bf16 autocast the heads emit bf16, where 1 − p rounds to 8 significant bits. At the
prior p = 0.01 (every anchor at the start of training) 1 − p becomes 0.98828, so the focal factor
(1 − p_t)^γ of a background anchor is (0.01172)² instead of (0.01)², 37% too large; below
p ≈ 0.002, 1 − p rounds to 1 and the loss of easy negatives is exactly 0.

Both take an optional boolean ``mask`` of the entries to sum, so a batch is summed at once over
fixed-shape tensors; selecting the entries with ``x[mask]`` instead would cost a host
synchronisation per call and per backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0, mask: Tensor | None = None
) -> Tensor:
    """Summed binary focal loss (Lin et al. 2017, eq. 5), in float32.

    FL(p_t) = −α_t (1 − p_t)^γ log(p_t), with p_t = p for a face (target 1) and 1 − p for background,
    α_t = α for a face and 1 − α for background.

    Args:
        logits: Tensor[...] raw scores (any float dtype).
        targets: Tensor[...] in {0, 1} (float or bool), same shape.
        alpha: weight of positives; a negative value disables the α weighting.
        gamma: focusing exponent.
        mask: Tensor[...] bool, same shape: only these entries are summed (None: all).

    Returns:
        Scalar float32 tensor, the sum over the (masked) entries.
    """
    logits = logits.float()
    targets = targets.float()
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # −log(p_t), stable
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    if mask is not None:
        loss = torch.where(mask, loss, 0.0)
    return loss.sum()


def smooth_l1_loss(pred: Tensor, target: Tensor, beta: float, mask: Tensor | None = None) -> Tensor:
    """Summed smooth-L1, in float32: 0.5 x² / β where |x| < β, else |x| − 0.5 β (pure L1 when β = 0).

    Args:
        pred, target: Tensor[..., 4] deltas (any float dtype).
        mask: Tensor[...] bool (the shape without the last dim): only these rows are summed. Rows
            outside it may hold any target, even inf or NaN (e.g. a box encoded against a degenerate
            reference): they are zeroed before the loss, so neither the sum nor the gradient sees them.

    Returns:
        Scalar float32 tensor, the sum over the (masked) entries.
    """
    diff = pred.float() - target.float()
    if mask is not None:
        diff = torch.where(mask[..., None], diff, 0.0)
    diff = diff.abs()
    if beta <= 0:
        return diff.sum()
    return torch.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta).sum()
