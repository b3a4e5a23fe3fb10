"""Losses of both ISRN steps: sigmoid focal loss and smooth-L1, summed (callers normalise by positives)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Summed binary focal loss (Lin et al. 2017, eq. 5).

    FL(p_t) = −α_t (1 − p_t)^γ log(p_t), with p_t = p for a face (target 1) and 1 − p for background,
    α_t = α for a face and 1 − α for background.

    Args:
        logits: Tensor[N] raw scores.
        targets: Tensor[N] in {0, 1}, same shape.
        alpha: weight of positives; a negative value disables the α weighting.
        gamma: focusing exponent.

    Returns:
        Scalar tensor, the sum over all N entries.
    """
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # −log(p_t), stable
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss.sum()


def smooth_l1_loss(pred: Tensor, target: Tensor, beta: float) -> Tensor:
    """Summed smooth-L1: 0.5 x² / β where |x| < β, else |x| − 0.5 β (pure L1 when β = 0).

    Args:
        pred, target: Tensor[N, 4] deltas.

    Returns:
        Scalar tensor, the sum over all entries.
    """
    diff = (pred - target).abs()
    if beta <= 0:
        return diff.sum()
    return torch.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta).sum()
