"""Box coding between xyxy boxes and regression deltas, as in the released SRN code (no variances).

For a reference box (anchor, or a first-step refined box under STR) with centre (cx, cy) and size
(w, h) = (x2 − x1, y2 − y1), and a target with (gx, gy, gw, gh):

    dx = (gx − cx) / w,   dy = (gy − cy) / h,   dw = log(gw / w),   dh = log(gh / h)

[code: ``srn/utils/bbox_helper.compute_loc_bboxes`` decodes exactly this, with no weights].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

BBOX_XFORM_CLIP = math.log(1000.0 / 16)
"""Upper clamp on decoded dw, dh before ``exp`` (Detectron's value, ≈ 4.135): a box may grow at most
62.5× per step. An untrained or diverging head can emit large log-size deltas; without the clamp
``exp`` overflows to inf and the IoUs, NMS and the next STR step turn to NaN. Real faces never need
more: the largest anchor (322×402) times 62.5 is far beyond any image."""


def _centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode(reference: Tensor, targets: Tensor) -> Tensor:
    """Deltas that take ``reference`` to ``targets``.

    Args:
        reference: Tensor[..., 4] xyxy pixels with positive width and height.
        targets: Tensor[..., 4] xyxy pixels, same shape.

    Returns:
        Tensor[..., 4] deltas (dx, dy, dw, dh).
    """
    cx, cy, w, h = _centre_size(reference)
    gx, gy, gw, gh = _centre_size(targets)
    return torch.stack(((gx - cx) / w, (gy - cy) / h, torch.log(gw / w), torch.log(gh / h)), dim=-1)


def decode(reference: Tensor, deltas: Tensor) -> Tensor:
    """Boxes obtained by applying ``deltas`` (Tensor[..., 4]) to ``reference`` (Tensor[..., 4] xyxy).

    dw and dh are clamped at :data:`BBOX_XFORM_CLIP` from above before ``exp``. Returns Tensor[..., 4]
    xyxy pixels; ``decode(a, encode(a, b)) == b`` up to rounding.
    """
    cx, cy, w, h = _centre_size(reference)
    dx, dy, dw, dh = deltas.unbind(dim=-1)
    px = cx + dx * w
    py = cy + dy * h
    pw = w * torch.exp(dw.clamp(max=BBOX_XFORM_CLIP))
    ph = h * torch.exp(dh.clamp(max=BBOX_XFORM_CLIP))
    return torch.stack((px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw, py + 0.5 * ph), dim=-1)
