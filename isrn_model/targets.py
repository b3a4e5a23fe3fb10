"""Training targets and the four ISRN losses (SRN §3.2–3.3, §3.5).

Per image, vectorised over anchors (the only Python loop is over the images of the batch):

* **Step 1** — match the anchors with the step-1 band (0.3 / 0.7). Classification (focal) on STC levels,
  regression (smooth-L1 against the anchors) on STR levels.
* **Step 2** — match the second-step references (anchors on non-STR levels, step-1-refined boxes on STR
  levels, detached) with the step-2 band (0.4 / 0.5). Classification on every level, but on STC levels
  only on anchors whose step-1 background confidence is below θ (face probability > 1 − θ) [ISRN.md
  "STC"]; regression of every positive against its reference: STC filters classification only
  (``LossConfig.stc_filter_regression`` also filters regression [ours, the earlier behaviour]).

Each term is summed over the batch and divided by its own count of positive anchors (at least 1)
[notes: "normalised by the number of positives"].
"""

from __future__ import annotations

import torch
from torch import Tensor

from isrn_model.box_coding import encode
from isrn_model.config import LossConfig
from isrn_model.losses import sigmoid_focal_loss, smooth_l1_loss
from isrn_model.matching import IGNORE, match_boxes
from isrn_model.stc_str import TwoStepOutputs, second_step_references, stc_keep_masks


def _level_slices(levels: tuple[int, ...], counts: list[int], wanted: set[int]) -> Tensor:
    """Indices (into the concatenation of all levels) of the anchors on ``wanted`` levels."""
    pieces, start = [], 0
    for level, n in zip(levels, counts):
        if level in wanted:
            pieces.append(torch.arange(start, start + n))
        start += n
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)


def compute_losses(
    out: TwoStepOutputs, gt_boxes: list[Tensor], cfg: LossConfig, *, stc_threshold: float
) -> dict[str, Tensor]:
    """The four named losses of a batch.

    Args:
        out: raw head outputs of both steps.
        gt_boxes: per image Tensor[G_i, 4] xyxy pixels (validated, non-degenerate; G_i may be 0).
        cfg: thresholds and loss parameters.
        stc_threshold: STC background confidence θ (``ModelConfig.stc_threshold``, shared with inference).

    Returns:
        ``{"loss_cls_1", "loss_box_1", "loss_cls_2", "loss_box_2"}``, scalar tensors.
    """
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
