"""Training targets and the four ISRN losses (SRN §3.2–3.3, §3.5).

The whole batch at once, on fixed-shape tensors (faces padded to the batch's largest count, with a
validity mask), so a training step makes no host synchronisation here, whatever the batch size or
the number of faces:

* **Step 1** — match the anchors with the step-1 band (0.3 / 0.7). Classification (focal) on STC levels,
  regression (smooth-L1 against the anchors) on STR levels.
* **Step 2** — match the second-step references (anchors on non-STR levels, step-1-refined boxes on STR
  levels, detached) with the step-2 band (0.4 / 0.5). Classification on every level, but on STC levels
  only on anchors whose step-1 background confidence is below θ (face probability > 1 − θ) [docs/model.md
  "STC"]; regression of every positive against its reference: STC filters classification only
  (``LossConfig.stc_filter_regression`` also filters regression [ours, the earlier behaviour]).

Each term is summed over the batch and divided by its own count of positive anchors (at least 1)
[notes: "normalised by the number of positives"]; the counts stay tensors. Losses are float32 under
autocast too (:mod:`isrn_model.losses`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from isrn_model.box_coding import encode
from isrn_model.config import LossConfig
from isrn_model.losses import sigmoid_focal_loss, smooth_l1_loss
from isrn_model.matching import IGNORE, match_boxes_batched
from isrn_model.stc_str import TwoStepOutputs, second_step_references, stc_keep_masks


@dataclass(frozen=True)
class PaddedBoxes:
    """Ground-truth faces of a batch, padded: ``boxes`` Tensor[B, G, 4] float32 xyxy pixels, ``valid``
    Tensor[B, G] bool (False on padding rows, which hold the empty box 0, 0, 0, 0). G ≥ 1."""

    boxes: Tensor
    valid: Tensor

    @classmethod
    def from_list(cls, gt_boxes: list[Tensor], device: torch.device) -> PaddedBoxes:
        """Pad per-image Tensor[G_i, 4] (any float dtype, any device) onto ``device`` as float32.

        Shapes come from the host's metadata and copies are ``non_blocking``: no synchronisation.
        """
        count = max([b.shape[0] for b in gt_boxes] + [1])
        boxes = torch.zeros(len(gt_boxes), count, 4, device=device)
        valid = torch.zeros(len(gt_boxes), count, dtype=torch.bool, device=device)
        for i, b in enumerate(gt_boxes):
            boxes[i, :b.shape[0]].copy_(b, non_blocking=True)
            valid[i, :b.shape[0]] = True
        return cls(boxes, valid)

    def matched(self, labels: Tensor) -> Tensor:
        """The face each reference box is matched to: Tensor[B, N, 4] for labels Tensor[B, N]
        (a background or ignored box gets face 0 of its image, which losses mask out)."""
        index = labels.clamp(min=0)[..., None].expand(-1, -1, 4)
        return self.boxes.gather(1, index)


def _level_columns(levels: tuple[int, ...], counts: list[int], wanted: set[int], x: Tensor) -> Tensor:
    """The columns of ``x`` (Tensor[B, N, ...], levels concatenated) on the ``wanted`` levels, in order.

    Plain slices: no index tensor to build or copy from the host."""
    pieces, start = [], 0
    for level, n in zip(levels, counts):
        if level in wanted:
            pieces.append(x[:, start:start + n])
        start += n
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)


def compute_losses(
    out: TwoStepOutputs, gt_boxes: list[Tensor] | PaddedBoxes, cfg: LossConfig, *, stc_threshold: float
) -> dict[str, Tensor]:
    """The four named losses of a batch.

    Args:
        out: raw head outputs of both steps (any float dtype; the losses are float32).
        gt_boxes: per image Tensor[G_i, 4] xyxy pixels (validated, non-degenerate; G_i may be 0), or
            the same already padded (:class:`PaddedBoxes`, as the detector passes them).
        cfg: thresholds and loss parameters.
        stc_threshold: STC background confidence θ (``ModelConfig.stc_threshold``, shared with inference).

    Returns:
        ``{"loss_cls_1", "loss_box_1", "loss_cls_2", "loss_box_2"}``, scalar float32 tensors.
    """
    levels, counts, batch = out.levels, out.counts, out.batch_size
    device = out.cls2[0].device
    gt = gt_boxes if isinstance(gt_boxes, PaddedBoxes) else PaddedBoxes.from_list(gt_boxes, device)
    anchors = torch.cat(out.anchors)
    cls2 = torch.cat(out.cls2, dim=1)
    box2 = torch.cat(out.box2, dim=1)
    with torch.no_grad():
        # Step-2 references and the STC filter are targets, not paths for gradients.
        refs = torch.cat(second_step_references(levels, out.anchors, {k: v.detach() for k, v in out.box1.items()},
                                                batch), dim=1)
        keep = torch.cat(stc_keep_masks(levels, {k: v.detach() for k, v in out.cls1.items()}, counts, batch,
                                        1.0 - stc_threshold, device), dim=1)
        match1 = match_boxes_batched(anchors, gt.boxes, gt.valid, cfg.step1_neg_iou, cfg.step1_pos_iou,
                                     cfg.allow_low_quality_matches)
        match2 = match_boxes_batched(refs, gt.boxes, gt.valid, cfg.step2_neg_iou, cfg.step2_pos_iou,
                                     cfg.allow_low_quality_matches)

    focal = {"alpha": cfg.focal_alpha, "gamma": cfg.focal_gamma}
    zero = cls2.new_zeros((), dtype=torch.float32)
    sums = dict.fromkeys(("cls_1", "box_1", "cls_2", "box_2"), zero)
    n_pos = dict.fromkeys(sums, zero)
    if out.cls1:
        cls1 = torch.cat([out.cls1[lvl] for lvl in levels if lvl in out.cls1], dim=1)
        m = _level_columns(levels, counts, set(out.cls1), match1)
        sums["cls_1"] = sigmoid_focal_loss(cls1, m >= 0, **focal, mask=m != IGNORE)
        n_pos["cls_1"] = (m >= 0).sum()
    if out.box1:
        box1 = torch.cat([out.box1[lvl] for lvl in levels if lvl in out.box1], dim=1)
        m = _level_columns(levels, counts, set(out.box1), match1)
        target = encode(_level_columns(levels, counts, set(out.box1), anchors[None]), gt.matched(m))
        sums["box_1"] = smooth_l1_loss(box1, target, cfg.smooth_l1_beta, mask=m >= 0)
        n_pos["box_1"] = (m >= 0).sum()

    pos2 = (match2 >= 0) & keep
    sums["cls_2"] = sigmoid_focal_loss(cls2, pos2, **focal, mask=(match2 != IGNORE) & keep)
    n_pos["cls_2"] = pos2.sum()
    box_pos = pos2 if cfg.stc_filter_regression else match2 >= 0
    # Encoded against every reference, used on positives only (the mask also hides what a
    # degenerate reference of a background anchor would encode to).
    sums["box_2"] = smooth_l1_loss(box2, encode(refs, gt.matched(match2)), cfg.smooth_l1_beta, mask=box_pos)
    n_pos["box_2"] = box_pos.sum()

    losses = {f"loss_{name}": total / n_pos[name].clamp(min=1) for name, total in sums.items()}
    losses["loss_box_1"] = losses["loss_box_1"] * cfg.box_loss_weight
    losses["loss_box_2"] = losses["loss_box_2"] * cfg.box_loss_weight
    return losses
