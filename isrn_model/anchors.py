"""Anchors exactly as the released SRN code lays them out [code: ``srn/utils/anchor_helper.py``].

Per level l ∈ {2..7} with stride s = 2**l: two anchors per location, one aspect ratio 1.25 (h / w) and
scales {2, 2.828427} × s. As in Detectron's ``generate_anchors`` (which the code uses), the ratio is
applied to an s × s window with rounding — w₀ = round(√(s² / 1.25)), h₀ = round(1.25 · w₀) — and then
scaled, so the nominal (inclusive-pixel) sizes are 8×10 and 11.3×14.1 on P2 … 228×284 and 322×402 on P7.
Location (x, y) on the grid has centre ((s − 1)/2 + x·s, (s − 1)/2 + y·s), and the box is
[c − (w − 1)/2, c + (w − 1)/2] — the code's inclusive-pixel convention, kept so anchors and their
IoUs match the released model. Order: level, then row y, then column x, then anchor (scale).

A 1024 × 1024 input gives 2 · (256² + 128² + 64² + 32² + 16² + 8²) = 174,720 anchors.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

ANCHOR_SCALES = (2.0, 2.828427)
"""Anchor sizes in strides [code: config.json ``anchor_scales``]."""
ANCHOR_RATIOS = (1.25,)
"""Height / width [code: config.json ``anchor_ratios``]."""
NUM_ANCHORS = len(ANCHOR_SCALES) * len(ANCHOR_RATIOS)


def level_stride(level: int) -> int:
    """Stride of pyramid level ``level`` (P2 → 4 … P7 → 128)."""
    return 2**level


def cell_anchors(stride: int) -> np.ndarray:
    """Anchors of the grid cell at the origin: float64 array [A, 4] xyxy, in scale order."""
    # Detectron: reference window (0, 0, s − 1, s − 1), centre (s − 1)/2, area s².
    ctr = 0.5 * (stride - 1)
    out = []
    for ratio in ANCHOR_RATIOS:
        w0 = np.round(np.sqrt(stride * stride / ratio))  # numpy rounds half to even, as the code
        h0 = np.round(w0 * ratio)
        for scale in ANCHOR_SCALES:
            w, h = w0 * scale, h0 * scale
            out.append([ctr - 0.5 * (w - 1), ctr - 0.5 * (h - 1), ctr + 0.5 * (w - 1), ctr + 0.5 * (h - 1)])
    return np.asarray(out, dtype=np.float64)


def grid_anchors(height: int, width: int, stride: int) -> np.ndarray:
    """Anchors of a ``height`` × ``width`` feature map: float64 array [height·width·A, 4] xyxy pixels."""
    shift_x, shift_y = np.meshgrid(np.arange(width) * stride, np.arange(height) * stride)
    shifts = np.stack([shift_x.ravel(), shift_y.ravel()] * 2, axis=1).astype(np.float64)
    return (shifts[:, None, :] + cell_anchors(stride)[None, :, :]).reshape(-1, 4)


@functools.lru_cache(maxsize=32)
def _anchors_cached(sizes: tuple[tuple[int, int, int], ...]) -> np.ndarray:
    # Cache NumPy, not tensors: a tensor made while torch.export traces would be a fake tensor.
    anchors = np.concatenate([grid_anchors(h, w, 2**lvl) for lvl, h, w in sizes]).astype(np.float32)
    anchors.flags.writeable = False
    return anchors


def anchors_for_feature_sizes(
    levels: tuple[int, ...], feature_sizes: list[tuple[int, int]], device: torch.device | str = "cpu"
) -> Tensor:
    """All anchors for the given levels and their feature-map sizes ``(H_l, W_l)``, on ``device``.

    Returns Tensor[N, 4] float32 xyxy pixels, levels concatenated in the given order. The tensor is
    cached per (levels, sizes, device) and shared by every caller: **read it, never write into it**.
    A forward pass then neither rebuilds the anchors nor copies them from the host (on a GPU that
    copy is a host synchronisation). While ``torch.export`` or ``torch.compile`` traces, a fresh
    tensor is built instead: one made there would be a fake tensor, useless to cache.
    """
    if len(levels) != len(feature_sizes):
        raise ValueError(f"got {len(levels)} levels but {len(feature_sizes)} feature sizes")
    sizes = tuple((lvl, int(h), int(w)) for lvl, (h, w) in zip(levels, feature_sizes))
    device = torch.device(device)
    if torch.compiler.is_compiling():
        return torch.tensor(_anchors_cached(sizes), device=device)
    return _anchors_on_device(sizes, device)


@functools.lru_cache(maxsize=32)
def _anchors_on_device(sizes: tuple[tuple[int, int, int], ...], device: torch.device) -> Tensor:
    # One host→device copy per (sizes, device), ever; multi-scale test uses a handful of sizes. Made
    # outside inference mode, so a first call from an eval loop does not cache an inference tensor
    # that training could not use.
    with torch.inference_mode(False):
        return torch.from_numpy(_anchors_cached(sizes).copy()).to(device)


def anchors_for_image(height: int, width: int, levels: tuple[int, ...] = (2, 3, 4, 5, 6, 7)) -> Tensor:
    """Anchors for an input of ``height`` × ``width`` (each a multiple of the largest stride).

    Returns Tensor[N, 4] float32 xyxy pixels, on the host (a fresh tensor).
    """
    top = level_stride(max(levels))
    if height % top or width % top:
        raise ValueError(f"image size {height}×{width} is not a multiple of the largest stride {top}")
    sizes = [(height // level_stride(lvl), width // level_stride(lvl)) for lvl in levels]
    return anchors_for_feature_sizes(levels, sizes).clone()
