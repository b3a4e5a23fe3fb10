"""Inference post-processing: STC filter, STR refinement, score threshold, per-level top-k, NMS, keep-top-k.

Two stages [code: ``srn/model/rpn_proposal.py``]:

1. :func:`dense_predictions` — per anchor, the final face score and box: the second-step probability,
   zeroed on STC levels where the first-step face probability is ≤ 0.01 (the STC filter), and the
   second-step deltas decoded against the STR-refined boxes on STR levels, the anchors elsewhere.
   Fixed shapes, so it sits inside the exported graph.
2. :func:`select_detections` — score threshold, top ``pre_nms_top_k`` per level, clip to the image,
   exact greedy NMS, keep ``keep_top_k``. Data-dependent shapes (eager only).
   :func:`select_detections_fixed` is the fixed-shape variant used by the exported module.
"""

from __future__ import annotations

import torch
from torch import Tensor

from isrn_model.box_coding import decode
from isrn_model.boxes import box_area, clip_boxes
from isrn_model.config import InferenceConfig
from isrn_model.nms import nms_each, nms_fixed_shape
from isrn_model.stc_str import TwoStepOutputs, second_step_references, stc_keep_masks


def dense_predictions(out: TwoStepOutputs, stc_face_threshold: float) -> tuple[Tensor, Tensor]:
    """(scores Tensor[B, N], boxes Tensor[B, N, 4] xyxy pixels) for all N anchors, levels concatenated.

    Float32 whatever the heads' dtype (under bf16 autocast they emit bf16). Scores of anchors removed
    by the STC filter are 0.
    """
    batch = out.batch_size
    refs = second_step_references(out.levels, out.anchors, out.box1, batch)
    keep = stc_keep_masks(out.levels, out.cls1, out.counts, batch, stc_face_threshold, out.cls2[0].device)
    scores = torch.cat([torch.sigmoid(c.float()) * k.float() for c, k in zip(out.cls2, keep)], dim=1)
    boxes = torch.cat([decode(r, d.float()) for r, d in zip(refs, out.box2)], dim=1)
    return scores, boxes


def select_detections(
    scores: Tensor, boxes: Tensor, counts: list[int], image_sizes: list[tuple[int, int]], cfg: InferenceConfig
) -> list[dict[str, Tensor]]:
    """Per-image detections from dense predictions, with two host synchronisations for the batch (GPU).

    Args:
        scores: Tensor[B, N]; boxes: Tensor[B, N, 4] xyxy pixels (from :func:`dense_predictions`).
        counts: anchors per level (sums to N), for the per-level top-k.
        image_sizes: per image (height, width) of the unpadded image, for clipping.
        cfg: thresholds.

    Returns:
        per image ``{"boxes": Tensor[K, 4] xyxy pixels, "scores": Tensor[K]}`` float32, by descending
        score (ties: by anchor index), K ≤ ``cfg.keep_top_k``.

    The candidates (score above the threshold, among the ``pre_nms_top_k`` best of their level, not
    empty once clipped) are marked on the whole batch with fixed shapes; their count per image is the
    first synchronisation, :func:`~isrn_model.nms.nms_each` over every image the second (on a GPU;
    on the CPU, where a read costs nothing, NMS reads its boxes in blocks).
    """
    scores, boxes = scores.float(), boxes.float()
    batch, n_anchors = scores.shape
    selected = scores > cfg.score_threshold
    start = 0
    for n in counts:
        if n > cfg.pre_nms_top_k:  # only a level with more anchors than that can need the cut
            level = torch.where(selected[:, start:start + n], scores[:, start:start + n], -1.0)
            top = level.topk(cfg.pre_nms_top_k, dim=1).indices
            best = torch.zeros_like(selected[:, start:start + n]).scatter_(1, top, True)
            selected[:, start:start + n] &= best
        start += n
    boxes = torch.stack([clip_boxes(b, height, width) for b, (height, width) in zip(boxes, image_sizes)])
    selected &= box_area(boxes) > 0  # boxes wholly in the padding clip to nothing

    per_image = selected.sum(dim=1).tolist()  # synchronisation 1: the candidates' count per image
    flat = _compact(selected.flatten(), sum(per_image))  # ascending (image, anchor)
    flat_scores, flat_boxes = scores.flatten()[flat], boxes.flatten(0, 1)[flat]
    image_scores = list(flat_scores.split(per_image))
    image_boxes = list(flat_boxes.split(per_image))
    keeps = nms_each(image_boxes, image_scores, cfg.nms_threshold, max_keep=cfg.keep_top_k)  # synchronisation 2
    return [{"boxes": b[keep], "scores": s[keep]} for b, s, keep in zip(image_boxes, image_scores, keeps)]


def _compact(mask: Tensor, count: int) -> Tensor:
    """Indices of the True entries of ``mask`` (Tensor[M] bool, ``count`` of them), ascending.

    ``mask.nonzero()`` without its synchronisation: the caller already knows the count. Each True
    entry goes to its rank among the True entries; the False ones to a spare last slot.
    """
    rank = torch.where(mask, mask.cumsum(0) - 1, count)
    index = torch.arange(mask.shape[0], device=mask.device)
    return index.new_zeros(count + 1).scatter_(0, rank, index)[:count]


def select_detections_fixed(
    scores: Tensor, boxes: Tensor, counts: list[int], height: int, width: int, cfg: InferenceConfig,
    candidates: int, nms_iterations: int,
) -> Tensor:
    """Fixed-shape detections for an exported graph: Tensor[B, keep_top_k, 5] (x1, y1, x2, y2, score).

    Rows are by descending score; unused rows are all zero. Differences from :func:`select_detections`,
    needed for static shapes: at most ``candidates`` boxes (by score, after the per-level top-k) enter
    NMS, and NMS runs ``nms_iterations`` fixed-point rounds (:func:`isrn_model.boxes.nms_fixed_shape`).
    """
    picked_s, picked_b, start = [], [], 0
    for n in counts:
        k = min(cfg.pre_nms_top_k, n)
        s, idx = scores[:, start:start + n].topk(k, dim=1)
        picked_s.append(s)
        picked_b.append(boxes[:, start:start + n].gather(1, idx[:, :, None].expand(-1, -1, 4)))
        start += n
    s = torch.cat(picked_s, dim=1)
    b = clip_boxes(torch.cat(picked_b, dim=1), height, width)
    s = torch.where((s > cfg.score_threshold) & (box_area(b) > 0), s, torch.zeros_like(s))
    k = min(candidates, s.shape[1])
    s, idx = s.topk(k, dim=1)
    b = b.gather(1, idx[:, :, None].expand(-1, -1, 4))
    keep = nms_fixed_shape(b, s, cfg.nms_threshold, nms_iterations)
    s = torch.where(keep, s, torch.zeros_like(s))
    k = min(cfg.keep_top_k, s.shape[1])
    s, idx = s.topk(k, dim=1)
    b = b.gather(1, idx[:, :, None].expand(-1, -1, 4)) * (s > 0)[:, :, None].to(b.dtype)
    dets = torch.cat([b, s[:, :, None]], dim=2)
    if k < cfg.keep_top_k:
        dets = torch.cat([dets, dets.new_zeros(dets.shape[0], cfg.keep_top_k - k, 5)], dim=1)
    return dets
