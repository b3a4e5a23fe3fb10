"""Flip and multi-scale test with box voting, as the released SRN test script [code: ``tools/test.py``].

For an image of h × w pixels and a pixel budget P = ``max_test_size``²:

* h·w < P: the image itself; its flip; ×0.5 (keep boxes whose longer side > 30 px); ×1.5^t for
  t = 1 … ⌊log_2.25(P / (h·w))⌋ and ×√(P / (h·w)) (keep boxes whose shorter side < 100 px).
* otherwise: the image resized to the budget (×r, r = √(P / (h·w))), its flip, ×0.75r and ×0.5r
  (keep boxes whose longer side > 30 px).

All boxes are mapped back to the original image and merged by :func:`box_vote`. With only ``flip``
set, the image and its flip are merged. Coordinates are continuous (x1' = w − x2 under a flip, a scale
s divides by s); the code's "+1" pixel convention is not reproduced [ours].

:class:`ISRNWithTTA` wraps a detector (as detectron2's ``GeneralizedRCNNWithTTA``): it calls the plain
single-scale detector once per run, so the detector itself never knows about test-time augmentation.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from isrn_model.boxes import clip_boxes
from isrn_model.config import InferenceConfig
from isrn_model.nms import overlap_bits

SMALL_RUN_MIN_SIDE = 30.0
"""Down-scaled runs keep only boxes whose longer side exceeds this (px, original image) [code]."""
LARGE_RUN_MAX_SIDE = 100.0
"""Up-scaled runs keep only boxes whose shorter side is below this (px, original image) [code]."""


def box_vote(dets: Tensor, iou_threshold: float, keep_top_k: int) -> Tensor:
    """Box voting [code: ``bbox_vote``]: Tensor[N, 5] (x1, y1, x2, y2, score) → Tensor[K, 5].

    Repeatedly take the highest-scored box and every box with IoU ≥ ``iou_threshold`` with it; the
    group becomes one box, the score-weighted mean of its coordinates with the group's highest score.
    A group of one box is dropped, as in the released code. At most ``keep_top_k`` boxes are returned.

    The group leaders are the boxes greedy NMS keeps (suppressing at IoU ≥ the threshold), and every
    other box joins the first leader that overlaps it that much: the overlaps are computed on the
    device (:func:`~isrn_model.nms.overlap_bits`), the grouping runs on the host over one copy of
    them, and the weighted means are one ``index_add`` on the device. One host synchronisation.
    """
    dets = dets[dets[:, 4].argsort(descending=True)]
    n = dets.shape[0]
    bits = overlap_bits(dets[:, :4], iou_threshold, inclusive=True).numpy(force=True)  # the synchronisation
    group, leaders, sizes = _vote_groups(bits, n, keep_top_k)
    index = torch.from_numpy(group).to(dets.device, non_blocking=True)
    merged = np.flatnonzero(sizes > 1)[:keep_top_k]
    weights = dets[:, 4]
    sums = dets.new_zeros(len(leaders) + 1, 4).index_add_(0, index, dets[:, :4] * weights[:, None])
    totals = dets.new_zeros(len(leaders) + 1).index_add_(0, index, weights)
    take = torch.from_numpy(merged).to(dets.device, non_blocking=True)
    first = torch.from_numpy(leaders[merged]).to(dets.device, non_blocking=True)
    # The group's highest score is its leader's: the boxes are visited by descending score.
    return torch.cat([sums[take] / totals[take, None], dets[first, 4:5]], dim=1)


def _vote_groups(bits: np.ndarray, n: int, keep_top_k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The groups of :func:`box_vote` from its overlap bits (rows by descending score).

    Returns (group of each box, int64 [n]: its leader's rank, or the spare index ``len(leaders)``
    for boxes left unvisited once ``keep_top_k`` groups of two or more are formed; leaders, int64
    [L]: their positions; sizes, int64 [L]: boxes per group).
    """
    removed = np.zeros(bits.shape[1] if n else 0, dtype=np.uint8)
    group = np.full(n, -1, dtype=np.int64)
    leaders, sizes = [], []
    merged = 0
    for i in range(n):
        if merged >= keep_top_k:
            break
        if (removed[i >> 3] >> (i & 7)) & 1:
            continue
        joined = bits[i] & ~removed  # the boxes still alive that overlap i enough
        members = np.flatnonzero(np.unpackbits(joined, bitorder="little")[:n])
        group[i] = len(leaders)
        group[members] = len(leaders)
        leaders.append(i)
        sizes.append(1 + len(members))
        merged += sizes[-1] > 1
        np.bitwise_or(removed, joined, out=removed)
    group[group < 0] = len(leaders)
    return group, np.asarray(leaders, dtype=np.int64), np.asarray(sizes, dtype=np.int64)


def _run(model: nn.Module, image: Tensor, scale: float, flip: bool) -> Tensor:
    """Detections Tensor[K, 5] in original-image coordinates of ``image`` (Tensor[3, H, W]) at ``scale``."""
    height, width = image.shape[-2:]
    x = image[None]
    if scale != 1.0:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    if flip:
        x = x.flip(-1)
    det = model(x)[0]
    boxes, scores = det["boxes"], det["scores"]
    if flip:
        run_width = x.shape[-1]
        boxes = torch.stack([run_width - boxes[:, 2], boxes[:, 1], run_width - boxes[:, 0], boxes[:, 3]], dim=1)
    # Python scalars, not a host-made tensor: on a GPU that one would sit on the CPU.
    sx, sy = width / x.shape[-1], height / x.shape[-2]
    boxes = torch.stack([boxes[:, 0] * sx, boxes[:, 1] * sy, boxes[:, 2] * sx, boxes[:, 3] * sy], dim=1)
    return torch.cat([boxes, scores[:, None]], dim=1)


def _sides(dets: Tensor) -> tuple[Tensor, Tensor]:
    w = dets[:, 2] - dets[:, 0]
    h = dets[:, 3] - dets[:, 1]
    return torch.maximum(w, h), torch.minimum(w, h)


@torch.no_grad()
def detect_tta(model: nn.Module, image: Tensor, cfg: InferenceConfig) -> dict[str, Tensor]:
    """Flip / multi-scale detections of one image (Tensor[3, H, W] raw RGB) by an eval-mode detector.

    ``model(Tensor[1, 3, h, w])`` must return ``[{"boxes": Tensor[K, 4], "scores": Tensor[K]}]`` (an ISRN
    with its single-scale post-processing). Returns ``{"boxes": Tensor[K, 4] xyxy pixels, "scores": Tensor[K]}``.
    """
    height, width = image.shape[-2:]
    runs = []
    if not cfg.multi_scale:
        runs = [_run(model, image, 1.0, False), _run(model, image, 1.0, True)]
    else:
        budget = float(cfg.max_test_size) ** 2
        area = float(height * width)
        if area < budget:
            runs += [_run(model, image, 1.0, False), _run(model, image, 1.0, True)]
            small = _run(model, image, 0.5, False)
            runs.append(small[_sides(small)[0] > SMALL_RUN_MIN_SIDE])
            large = [_run(model, image, 1.5 ** (t + 1), False)
                     for t in range(int(math.floor(math.log(budget / area, 2.25))))]
            large.append(_run(model, image, math.sqrt(budget / area), False))
            large_dets = torch.cat(large)
            runs.append(large_dets[_sides(large_dets)[1] < LARGE_RUN_MAX_SIDE])
        else:
            r = math.sqrt(budget / area)
            runs += [_run(model, image, r, False), _run(model, image, r, True)]
            small = torch.cat([_run(model, image, 0.75 * r, False), _run(model, image, 0.5 * r, False)])
            runs.append(small[_sides(small)[0] > SMALL_RUN_MIN_SIDE])
    voted = box_vote(torch.cat(runs), cfg.vote_threshold, cfg.keep_top_k)
    boxes = clip_boxes(voted[:, :4], height, width)
    return {"boxes": boxes, "scores": voted[:, 4]}


class ISRNWithTTA(nn.Module):
    """A detector with flip / multi-scale test: ``ISRNWithTTA(model)(images)`` → detections per image.

    Args:
        model: an eval-mode detector (an :class:`~isrn_model.detector.ISRN`, or DDP around one) whose
            ``model(images)`` returns per image ``{"boxes": Tensor[K, 4] xyxy pixels, "scores": Tensor[K]}``.
        cfg: ``flip``, ``multi_scale``, ``max_test_size``, ``vote_threshold`` and ``keep_top_k``;
            default: the detector's own ``inference_config``.

    ``forward(images, image_sizes=None)`` takes the detector's input (Tensor[B, 3, H, W] raw RGB, and
    optionally the real (height, width) of each padded image) and runs :func:`detect_tta` per image,
    on the image cropped to its real size. With neither ``flip`` nor ``multi_scale`` set it is the
    detector itself.
    """

    def __init__(self, model: nn.Module, cfg: InferenceConfig | None = None) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg if cfg is not None else getattr(model, "module", model).inference_config

    @torch.no_grad()
    def forward(self, images: Tensor, image_sizes: list[tuple[int, int]] | None = None) -> list[dict[str, Tensor]]:
        if not (self.cfg.flip or self.cfg.multi_scale):
            return self.model(images, image_sizes=image_sizes)
        if image_sizes is None:
            image_sizes = [tuple(images.shape[-2:])] * images.shape[0]
        elif len(image_sizes) != images.shape[0]:
            raise ValueError(f"image_sizes has {len(image_sizes)} entries for a batch of {images.shape[0]}")
        return [detect_tta(self.model, image[:, :h, :w], self.cfg) for image, (h, w) in zip(images, image_sizes)]


def with_tta(model: nn.Module, cfg: InferenceConfig | None = None) -> nn.Module:
    """``model`` wrapped in :class:`ISRNWithTTA` when ``cfg`` (default: the model's) asks for flip or
    multi-scale test; ``model`` itself otherwise."""
    cfg = cfg if cfg is not None else getattr(model, "module", model).inference_config
    return ISRNWithTTA(model, cfg) if cfg.flip or cfg.multi_scale else model
