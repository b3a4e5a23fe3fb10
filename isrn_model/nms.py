"""Non-maximum suppression: exact greedy NMS with few host synchronisations, and a fixed-shape variant.

Greedy NMS visits boxes by descending score and keeps a box unless a kept earlier box overlaps it
above the threshold. The chain "A suppresses B, so B cannot suppress C" makes it sequential; a GPU
version either synchronises once per round of a fixed-point iteration (the chain's length) or, as
here and as torchvision's CUDA kernel does, computes every overlap on the device, packed 8 to a
byte (:func:`overlap_bits`), reads them to the host at once, and runs the sequential pass there
(:func:`greedy_scan`), a byte-wise OR per kept box.

How often the host reads depends on where the boxes are. On a GPU a read is a synchronisation and
IoUs are cheap: all the overlaps of every image are computed and read in one go (device work
O(N²/2) per image). On the CPU a read costs nothing and IoUs are the cost: the boxes are taken in
blocks of :data:`HOST_READ_ROWS`, each suppressed first by the boxes kept so far, and the pass stops
at ``max_keep`` (work O(N × kept + N × block)). Both give exactly greedy NMS; a test on the CPU sees
a GPU's schedule with ``HOST_READ_ROWS = None``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from isrn_model.boxes import batched_box_iou, box_iou

NMS_PAIRS = 1 << 21
"""IoUs computed at once by :func:`overlap_bits` (bounds its temporaries to about 80 MiB)."""
HOST_READ_ROWS = 512
"""Boxes per host read when the boxes are on the CPU (see the module docstring); on any other
device all of them are read at once. ``None``: read at once on the CPU too (what a GPU does)."""


def overlap_bits(sorted_boxes: Tensor, iou_threshold: float, *, inclusive: bool = False) -> Tensor:
    """Which later boxes each box overlaps, packed 8 to a byte: Tensor[K, ⌈K/8⌉] uint8, on the boxes' device.

    Bit j of row i (byte j // 8, bit j % 8, least significant first: ``np.unpackbits(...,
    bitorder="little")``) is set iff j > i and IoU(i, j) > ``iou_threshold`` (≥ with ``inclusive``).
    ``sorted_boxes``: Tensor[K, 4] xyxy, in the order a greedy pass visits them. Computed in row blocks
    of at most :data:`NMS_PAIRS` IoUs, with no host synchronisation; the IoUs are
    :func:`~isrn_model.boxes.box_iou`'s.
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


def greedy_scan(bits: np.ndarray, limit: int | None = None, alive: np.ndarray | None = None) -> np.ndarray:
    """The sequential half of greedy NMS, on the host: positions of the kept boxes, ascending.

    Args:
        bits: uint8 [K, ⌈K/8⌉], :func:`overlap_bits` of the boxes in visiting order.
        limit: stop once this many are kept.
        alive: bool [K], False for boxes already suppressed (by boxes kept before these K): they are
            not kept and suppress nothing.

    Returns int64 array [kept].
    """
    k = bits.shape[0]
    limit = k if limit is None else limit
    removed = np.zeros(bits.shape[1], dtype=np.uint8)
    kept = []
    for i in range(k):
        if len(kept) >= limit:
            break
        if (alive is not None and not alive[i]) or (removed[i >> 3] >> (i & 7)) & 1:
            continue
        kept.append(i)
        np.bitwise_or(removed, bits[i], out=removed)
    return np.asarray(kept, dtype=np.int64)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, max_keep: int | None = None) -> Tensor:
    """Greedy non-maximum suppression, exact.

    Args:
        boxes: Tensor[N, 4] xyxy pixels.
        scores: Tensor[N].
        iou_threshold: a box is dropped if its IoU with a higher-scored kept box is above this.
        max_keep: stop once this many boxes are kept (the result is the first ``max_keep`` of full NMS).

    Returns:
        Tensor[K] int64 indices into ``boxes`` of the kept boxes, by descending score (ties: by index).
        On a GPU: one host synchronisation (see the module docstring).
    """
    return nms_each([boxes], [scores], iou_threshold, max_keep)[0]


def nms_each(
    boxes: list[Tensor], scores: list[Tensor], iou_threshold: float, max_keep: int | None = None
) -> list[Tensor]:
    """:func:`nms` of several sets (the images of a batch, all on one device).

    On a GPU **one** host synchronisation for all the sets: every set's :func:`overlap_bits`, one
    read, :func:`greedy_scan` per set. On the CPU, where a read costs nothing, blocks of
    :data:`HOST_READ_ROWS` boxes (:func:`_nms_host_blocks`).
    """
    orders, sorted_boxes = [], []
    for b, s in zip(boxes, scores, strict=True):
        if b.ndim != 2 or b.shape[-1] != 4 or s.shape != b.shape[:1]:
            raise ValueError(f"nms expects boxes [N, 4] and scores [N], got {tuple(b.shape)} and {tuple(s.shape)}")
        orders.append(torch.argsort(s, descending=True, stable=True))
        sorted_boxes.append(b[orders[-1]])
    if not orders:
        return []
    limits = [b.shape[0] if max_keep is None else max_keep for b in boxes]
    if orders[0].device.type == "cpu" and HOST_READ_ROWS:
        kept = [_nms_host_blocks(b, iou_threshold, limit) for b, limit in zip(sorted_boxes, limits)]
    else:
        host = torch.cat([overlap_bits(b, iou_threshold).flatten() for b in sorted_boxes]).numpy(force=True)
        kept, offset = [], 0
        for b, limit in zip(sorted_boxes, limits):
            rows, width = b.shape[0], (b.shape[0] + 7) // 8
            kept.append(greedy_scan(host[offset:offset + rows * width].reshape(rows, width), limit))
            offset += rows * width
    return [order[torch.from_numpy(k).to(order.device, non_blocking=True)] for order, k in zip(orders, kept)]


def _nms_host_blocks(sorted_boxes: Tensor, iou_threshold: float, limit: int) -> np.ndarray:
    """Greedy NMS on the CPU, :data:`HOST_READ_ROWS` boxes at a time: positions kept, ascending.

    Each block's boxes are first suppressed by the boxes kept so far, then greedy NMS runs among
    the survivors; it stops once ``limit`` are kept. Work O(N × kept + N × block) instead of O(N²).
    """
    kept: list[np.ndarray] = []
    n_kept = 0
    kept_boxes = sorted_boxes[:0]
    for start in range(0, sorted_boxes.shape[0], HOST_READ_ROWS):
        if n_kept >= limit:
            break
        block = sorted_boxes[start:start + HOST_READ_ROWS]
        alive = torch.arange(block.shape[0], device=block.device)
        if n_kept:
            alive = (box_iou(block, kept_boxes) <= iou_threshold).all(dim=1).nonzero().flatten()
        keep = alive[torch.from_numpy(greedy_scan(overlap_bits(block[alive], iou_threshold).numpy(force=True),
                                                  limit - n_kept))]
        kept.append(keep.numpy(force=True) + start)
        n_kept += len(keep)
        kept_boxes = torch.cat([kept_boxes, block[keep]])
    return np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)


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
