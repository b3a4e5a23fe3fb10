"""The per-image implementations this package had before its batched, synchronisation-free rewrite
(commit 4b5aeef), kept verbatim as references: the tests assert the new code gives the same results.

They loop over images, boxes and NMS rounds with host synchronisations; do not use them elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from isrn_model.box_coding import encode
from isrn_model.boxes import box_area, box_iou, clip_boxes
from isrn_model.config import InferenceConfig, LossConfig
from isrn_model.matching import BACKGROUND, IGNORE
from isrn_model.stc_str import TwoStepOutputs, second_step_references, stc_keep_masks

IOU_CHUNK_ELEMENTS = 1 << 24
NMS_BLOCK = 512

def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """As at 4b5aeef."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # −log(p_t), stable
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss.sum()


def smooth_l1_loss(pred: Tensor, target: Tensor, beta: float) -> Tensor:
    """As at 4b5aeef."""
    diff = (pred - target).abs()
    if beta <= 0:
        return diff.sum()
    return torch.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta).sum()


def match_boxes(
    references: Tensor, gt_boxes: Tensor, neg_threshold: float, pos_threshold: float, allow_low_quality: bool
) -> Tensor:
    """As at 4b5aeef."""
    n = references.shape[0]
    g = gt_boxes.shape[0]
    if g == 0:
        return torch.full((n,), BACKGROUND, dtype=torch.long, device=references.device)
    chunk = max(1, IOU_CHUNK_ELEMENTS // max(n, 1))
    best_iou = torch.full((n,), -1.0, device=references.device)
    best_gt = torch.zeros(n, dtype=torch.long, device=references.device)
    gt_best_iou = torch.empty(g, device=references.device)
    single = None
    for start in range(0, g, chunk):
        iou = box_iou(gt_boxes[start:start + chunk], references)  # [c, N]
        value, index = iou.max(dim=0)
        better = value > best_iou
        best_iou = torch.where(better, value, best_iou)
        best_gt = torch.where(better, index + start, best_gt)
        gt_best_iou[start:start + chunk] = iou.max(dim=1).values
        single = iou if g <= chunk else None

    labels = torch.where(best_iou >= pos_threshold, best_gt, torch.full_like(best_gt, IGNORE))
    labels = torch.where(best_iou < neg_threshold, torch.full_like(labels, BACKGROUND), labels)
    if allow_low_quality:
        low_quality = torch.zeros(n, dtype=torch.bool, device=references.device)
        for start in range(0, g, chunk):
            iou = single if single is not None else box_iou(gt_boxes[start:start + chunk], references)
            target = gt_best_iou[start:start + chunk, None]
            low_quality |= ((iou == target) & (target > 0)).any(dim=0)
        labels = torch.where(low_quality, best_gt, labels)
    return labels


def _level_slices(levels: tuple[int, ...], counts: list[int], wanted: set[int]) -> Tensor:
    """As at 4b5aeef."""
    pieces, start = [], 0
    for level, n in zip(levels, counts):
        if level in wanted:
            pieces.append(torch.arange(start, start + n))
        start += n
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)


def compute_losses(
    out: TwoStepOutputs, gt_boxes: list[Tensor], cfg: LossConfig, *, stc_threshold: float
) -> dict[str, Tensor]:
    """As at 4b5aeef."""
    levels, counts, batch = out.levels, out.counts, out.batch_size
    device = out.cls2[0].device
    anchors = torch.cat(out.anchors)
    stc_idx = _level_slices(levels, counts, set(out.cls1)).to(device)
    str_idx = _level_slices(levels, counts, set(out.box1)).to(device)
    cls1 = torch.cat([out.cls1[lvl] for lvl in levels if lvl in out.cls1], dim=1) if out.cls1 else None
    box1 = torch.cat([out.box1[lvl] for lvl in levels if lvl in out.box1], dim=1) if out.box1 else None
    cls2 = torch.cat(out.cls2, dim=1)
    box2 = torch.cat(out.box2, dim=1)
    with torch.no_grad():
        # Step-2 references and the STC filter are targets, not paths for gradients.
        refs = torch.cat(second_step_references(levels, out.anchors, {k: v.detach() for k, v in out.box1.items()},
                                                batch), dim=1)
        keep = torch.cat(stc_keep_masks(levels, {k: v.detach() for k, v in out.cls1.items()}, counts, batch,
                                        1.0 - stc_threshold, device), dim=1)

    sums = {name: cls2.new_zeros(()) for name in ("cls_1", "box_1", "cls_2", "box_2")}
    n_pos = dict.fromkeys(sums, 0)
    focal = {"alpha": cfg.focal_alpha, "gamma": cfg.focal_gamma}
    for i, gt in enumerate(gt_boxes):
        gt = gt.to(device=device, dtype=anchors.dtype)
        match1 = match_boxes(anchors, gt, cfg.step1_neg_iou, cfg.step1_pos_iou, cfg.allow_low_quality_matches)
        if cls1 is not None:
            m = match1[stc_idx]
            valid = m != IGNORE
            sums["cls_1"] = sums["cls_1"] + sigmoid_focal_loss(cls1[i][valid], (m[valid] >= 0).to(cls1.dtype), **focal)
            n_pos["cls_1"] += int((m >= 0).sum())
        if box1 is not None:
            m = match1[str_idx]
            pos = m >= 0
            target = encode(anchors[str_idx][pos], gt[m[pos]])
            sums["box_1"] = sums["box_1"] + smooth_l1_loss(box1[i][pos], target, cfg.smooth_l1_beta)
            n_pos["box_1"] += int(pos.sum())

        match2 = match_boxes(refs[i], gt, cfg.step2_neg_iou, cfg.step2_pos_iou, cfg.allow_low_quality_matches)
        valid = (match2 != IGNORE) & keep[i]
        pos = (match2 >= 0) & keep[i]
        sums["cls_2"] = sums["cls_2"] + sigmoid_focal_loss(cls2[i][valid], pos[valid].to(cls2.dtype), **focal)
        n_pos["cls_2"] += int(pos.sum())
        if not cfg.stc_filter_regression:
            pos = match2 >= 0
        target = encode(refs[i][pos], gt[match2[pos]])
        sums["box_2"] = sums["box_2"] + smooth_l1_loss(box2[i][pos], target, cfg.smooth_l1_beta)
        n_pos["box_2"] += int(pos.sum())

    losses = {f"loss_{name}": total / max(n_pos[name], 1) for name, total in sums.items()}
    losses["loss_box_1"] = losses["loss_box_1"] * cfg.box_loss_weight
    losses["loss_box_2"] = losses["loss_box_2"] * cfg.box_loss_weight
    return losses


def _greedy_keep_sorted(iou: Tensor, iou_threshold: float) -> Tensor:
    """As at 4b5aeef."""
    suppress = (iou > iou_threshold).triu(diagonal=1)
    keep = torch.ones(iou.shape[0], dtype=torch.bool, device=iou.device)
    while True:
        new_keep = ~(suppress & keep[:, None]).any(dim=0)
        if torch.equal(new_keep, keep):
            return keep
        keep = new_keep


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, max_keep: int | None = None) -> Tensor:
    """As at 4b5aeef."""
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"nms expects boxes [N, 4] and scores [N], got {tuple(boxes.shape)} and {tuple(scores.shape)}")
    order = torch.argsort(scores, descending=True, stable=True)
    sorted_boxes = boxes[order]
    kept: list[Tensor] = []
    kept_boxes = boxes.new_zeros((0, 4))
    limit = max_keep if max_keep is not None else order.numel()
    for start in range(0, order.numel(), NMS_BLOCK):
        if kept_boxes.shape[0] >= limit:
            break
        block = sorted_boxes[start:start + NMS_BLOCK]
        alive = torch.ones(block.shape[0], dtype=torch.bool, device=boxes.device)
        if kept_boxes.shape[0]:
            alive = (box_iou(block, kept_boxes) <= iou_threshold).all(dim=1)
        idx = alive.nonzero().squeeze(1)
        candidates = block[idx]
        keep = _greedy_keep_sorted(box_iou(candidates, candidates), iou_threshold)
        idx = idx[keep]
        kept.append(idx + start)
        kept_boxes = torch.cat((kept_boxes, block[idx]))
    if not kept:
        return order[:0]
    return order[torch.cat(kept)[:limit]]


def select_detections(
    scores: Tensor, boxes: Tensor, counts: list[int], image_sizes: list[tuple[int, int]], cfg: InferenceConfig
) -> list[dict[str, Tensor]]:
    """As at 4b5aeef."""
    results = []
    for i, (height, width) in enumerate(image_sizes):
        kept_scores, kept_boxes, start = [], [], 0
        for n in counts:
            s = scores[i, start:start + n]
            b = boxes[i, start:start + n]
            start += n
            idx = (s > cfg.score_threshold).nonzero().squeeze(1)
            if idx.numel() > cfg.pre_nms_top_k:
                idx = idx[s[idx].topk(cfg.pre_nms_top_k).indices]
            kept_scores.append(s[idx])
            kept_boxes.append(b[idx])
        s = torch.cat(kept_scores)
        b = clip_boxes(torch.cat(kept_boxes), height, width)
        nonempty = box_area(b) > 0  # boxes wholly in the padding clip to nothing
        s, b = s[nonempty], b[nonempty]
        keep = nms(b, s, cfg.nms_threshold, max_keep=cfg.keep_top_k)
        results.append({"boxes": b[keep], "scores": s[keep]})
    return results


def box_vote(dets: Tensor, iou_threshold: float, keep_top_k: int) -> Tensor:
    """As at 4b5aeef."""
    dets = dets[dets[:, 4].argsort(descending=True)]
    iou = box_iou(dets[:, :4], dets[:, :4])
    alive = torch.ones(dets.shape[0], dtype=torch.bool)
    merged = []
    for i in range(dets.shape[0]):
        if not alive[i]:
            continue
        group = alive & (iou[i] >= iou_threshold)
        group[i] = True
        alive &= ~group
        if int(group.sum()) <= 1:
            continue
        members = dets[group]
        weights = members[:, 4:5]
        box = (members[:, :4] * weights).sum(0) / weights.sum()
        merged.append(torch.cat([box, members[:, 4].max()[None]]))
        if len(merged) >= keep_top_k:
            break
    return torch.stack(merged) if merged else dets.new_zeros((0, 5))


