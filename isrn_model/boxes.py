"""Pure box geometry on ``(x1, y1, x2, y2)`` boxes in pixels (continuous coordinates, no "+1").

All functions take and return torch tensors and never modify their inputs, except
:func:`greedy_scan`, the host half of :func:`nms`, which reads a NumPy array.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

NMS_PAIRS = 1 << 21
"""IoUs computed at once by :func:`overlap_bits` (bounds its temporaries to about 80 MiB)."""


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


def overlap_bits(sorted_boxes: Tensor, iou_threshold: float, *, inclusive: bool = False) -> Tensor:
    """Which later boxes each box overlaps, packed 8 to a byte: Tensor[K, ⌈K/8⌉] uint8, on the boxes' device.

    Bit j of row i (byte j // 8, bit j % 8, least significant first: ``np.unpackbits(...,
    bitorder="little")``) is set iff j > i and IoU(i, j) > ``iou_threshold`` (≥ with ``inclusive``).
    ``sorted_boxes``: Tensor[K, 4] xyxy, in the order a greedy pass visits them. Computed in row blocks
    of at most :data:`NMS_PAIRS` IoUs, with no host synchronisation; the IoUs are :func:`box_iou`'s.
    """
    k = sorted_boxes.shape[0]
    device = sorted_boxes.device
    n_bytes = (k + 7) // 8
    shifts = torch.arange(8, dtype=torch.uint8, device=device)
    rows_per_block = max(1, NMS_PAIRS // max(k, 1))
    blocks = []
    for r0 in range(0, k, rows_per_block):
        r1 = min(k, r0 + rows_per_block)
        c0 = r0 // 8 * 8  # columns before the block's first byte are all below the diagonal: zero bytes
        iou = box_iou(sorted_boxes[r0:r1], sorted_boxes[c0:])
        hit = iou >= iou_threshold if inclusive else iou > iou_threshold
        later = torch.arange(c0, k, device=device)[None, :] > torch.arange(r0, r1, device=device)[:, None]
        hit = torch.cat([hit & later, hit.new_zeros(r1 - r0, n_bytes * 8 - k)], dim=1)
        packed = (hit.view(r1 - r0, -1, 8).to(torch.uint8) << shifts).sum(dim=2, dtype=torch.uint8)
        blocks.append(torch.cat([packed.new_zeros(r1 - r0, c0 // 8), packed], dim=1))
    return torch.cat(blocks) if blocks else torch.zeros(0, 0, dtype=torch.uint8, device=device)


def greedy_scan(bits: np.ndarray, limit: int | None = None) -> np.ndarray:
    """Greedy NMS on the host over :func:`overlap_bits` (a NumPy copy): positions of the kept boxes.

    Visits the boxes in order; a box is kept unless a kept earlier box overlaps it; stops once
    ``limit`` are kept. Sequential, as greedy NMS is, but each step is a byte-wise OR of one row.
    Returns int64 array [kept], ascending.
    """
    k = bits.shape[0]
    limit = k if limit is None else limit
    removed = np.zeros(bits.shape[1], dtype=np.uint8)
    kept = []
    for i in range(k):
        if len(kept) >= limit:
            break
        if (removed[i >> 3] >> (i & 7)) & 1:
            continue
        kept.append(i)
        np.bitwise_or(removed, bits[i], out=removed)
    return np.asarray(kept, dtype=np.int64)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, max_keep: int | None = None) -> Tensor:
    """Greedy non-maximum suppression, exact: one host synchronisation whatever the number of boxes.

    Args:
        boxes: Tensor[N, 4] xyxy pixels.
        scores: Tensor[N].
        iou_threshold: a box is dropped if its IoU with a higher-scored kept box is above this.
        max_keep: stop once this many boxes are kept (the result is the first ``max_keep`` of full NMS).

    Returns:
        Tensor[K] int64 indices into ``boxes`` of the kept boxes, by descending score (ties: by index).
    """
    return nms_each([boxes], [scores], iou_threshold, max_keep)[0]


def nms_each(
    boxes: list[Tensor], scores: list[Tensor], iou_threshold: float, max_keep: int | None = None
) -> list[Tensor]:
    """:func:`nms` of several sets (e.g. the images of a batch) with **one** host synchronisation in all.

    Per set: a stable sort by descending score and :func:`overlap_bits` on the device; then all the
    bits come to the host in one copy, :func:`greedy_scan` runs there, and the kept indices go back
    with a non-blocking copy. Device work is O(N²/2) IoUs per set, in blocks of :data:`NMS_PAIRS`.
    """
    orders, bits = [], []
    for b, s in zip(boxes, scores):
        if b.ndim != 2 or b.shape[-1] != 4 or s.shape != b.shape[:1]:
            raise ValueError(f"nms expects boxes [N, 4] and scores [N], got {tuple(b.shape)} and {tuple(s.shape)}")
        order = torch.argsort(s, descending=True, stable=True)
        orders.append(order)
        bits.append(overlap_bits(b[order], iou_threshold).flatten())
    if not orders:
        return []
    host = torch.cat(bits).numpy(force=True)  # the one synchronisation
    kept, offset = [], 0
    for order in orders:
        k = order.shape[0]
        rows = host[offset:offset + k * ((k + 7) // 8)].reshape(k, (k + 7) // 8)
        offset += rows.size
        keep = torch.from_numpy(greedy_scan(rows, max_keep)).to(order.device, non_blocking=True)
        kept.append(order[keep])
    return kept


def nms_fixed_shape(boxes: Tensor, scores: Tensor, iou_threshold: float, iterations: int) -> Tensor:
    """NMS with fixed shapes and a fixed number of rounds, for ``torch.export`` graphs.

    Args:
        boxes: Tensor[B, K, 4] xyxy, **sorted by descending score** per image.
        scores: Tensor[B, K]; entries <= 0 are padding and never suppress anything.
        iterations: rounds of the fixed-point iteration below.

    Returns:
        Tensor[B, K] bool keep mask. Greedy NMS keeps box j iff no *kept* earlier box i < j has IoU >
        threshold: the fixed point of ``keep = ~any_i(keep[i] & S[i, j])``, S the strictly
        upper-triangular overlap matrix; iterating from "keep all" settles entry j once the entries
        before it have, so the result equals greedy NMS whenever the suppression chains are no
        longer than ``iterations``; a final "fast NMS" pass guarantees that no two kept boxes overlap
        above the threshold even if they are longer (it can then drop a few extra boxes).
    """
    iou = batched_box_iou(boxes, boxes)
    suppress = (iou > iou_threshold).triu(diagonal=1) & (scores > 0)[:, :, None]
    keep = scores > 0
    for _ in range(iterations):
        keep = (scores > 0) & ~(suppress & keep[:, :, None]).any(dim=1)
    return keep & ~(suppress & keep[:, :, None]).any(dim=1)
