"""Pure box geometry on ``(x1, y1, x2, y2)`` boxes in pixels (continuous coordinates, no "+1").

All functions take and return torch tensors and never modify their inputs. Non-maximum
suppression is in :mod:`isrn_model.nms`.
"""

from __future__ import annotations

import torch
from torch import Tensor

def box_area(boxes: Tensor) -> Tensor:
    """Areas of ``boxes`` (Tensor[N, 4] xyxy) → Tensor[N]; a negative extent counts as 0."""
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU of ``boxes1`` (Tensor[N, 4] xyxy) and ``boxes2`` (Tensor[M, 4]) → Tensor[N, M].

    A pair with zero union gives 0, not NaN.
    """
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


def batched_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU per batch: ``boxes1`` Tensor[B, N, 4], ``boxes2`` Tensor[B, M, 4] → Tensor[B, N, M]."""
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = torch.maximum(boxes1[:, :, None, :2], boxes2[:, None, :, :2])
    rb = torch.minimum(boxes1[:, :, None, 2:], boxes2[:, None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, :, None] + area2[:, None, :] - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


def clip_boxes(boxes: Tensor, height: float, width: float) -> Tensor:
    """Clip ``boxes`` (Tensor[..., 4] xyxy) to the image ``[0, width] × [0, height]``."""
    x = boxes[..., 0::2].clamp(0, width)
    y = boxes[..., 1::2].clamp(0, height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def degenerate_boxes(boxes: Tensor) -> Tensor:
    """Mask Tensor[N] (bool) of boxes with x2 <= x1 or y2 <= y1 or a non-finite coordinate."""
    return (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]) | ~torch.isfinite(boxes).all(dim=1)
