"""Selective Two-step Classification (STC) and Regression (STR), SRN §3.2–3.3.

* **STC** — on the low levels (P2–P4 [code]) the first step filters easy negatives: an anchor takes
  part in the second step only if its first-step face probability is above 1 − θ (θ = 0.99 background
  confidence [paper][code]). Other levels are never filtered.
* **STR** — on the high levels (P5–P7 [code]) the anchors are first decoded with the first-step deltas;
  the second step regresses from those refined boxes. Other levels use the plain anchors in step 2.

Per-level data are lists indexed like ``levels`` (e.g. (2, …, 7)); ``cls1`` / ``box1`` are dicts
keyed by level since the first step predicts classes only on STC levels and boxes only on STR levels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from isrn_model.box_coding import decode


def second_step_references(
    levels: tuple[int, ...], anchors: list[Tensor], box1: dict[int, Tensor], batch_size: int
) -> list[Tensor]:
    """Reference boxes of the second step, per level.

    Args:
        levels: the pyramid levels, in order.
        anchors: per level Tensor[n_l, 4] xyxy pixels.
        box1: first-step deltas Tensor[B, n_l, 4] for each STR level.
        batch_size: B.

    Returns:
        per level Tensor[B, n_l, 4] xyxy float32: ``decode(anchors, box1)`` on STR levels, the anchors
        elsewhere. Deltas are decoded in float32 even if the heads ran under bf16 autocast.
    """
    refs = []
    for level, anchors_l in zip(levels, anchors):
        if level in box1:
            refs.append(decode(anchors_l[None].expand_as(box1[level]), box1[level].float()))
        else:
            refs.append(anchors_l[None].expand(batch_size, -1, -1))
    return refs


def stc_keep_masks(
    levels: tuple[int, ...], cls1: dict[int, Tensor], counts: list[int], batch_size: int, face_threshold: float,
    device: torch.device | None = None,
) -> list[Tensor]:
    """Which anchors survive STC, per level.

    Args:
        levels: the pyramid levels, in order.
        cls1: first-step face logits Tensor[B, n_l] for each STC level.
        counts: n_l per level.
        face_threshold: survive iff sigmoid(logit) > this (1 − θ = 0.01), computed in float32: in
            bf16 the probabilities near 0.01 are 6e-5 apart, so the filter would move with the dtype.
        device: device of the all-True masks.

    Returns:
        per level Tensor[B, n_l] bool; all True on levels without STC.
    """
    masks = []
    for level, n in zip(levels, counts):
        if level in cls1:
            masks.append(torch.sigmoid(cls1[level].float()) > face_threshold)
        else:
            masks.append(torch.ones(batch_size, n, dtype=torch.bool, device=device))
    return masks


@dataclass
class TwoStepOutputs:
    """Raw head outputs of both steps for one batch (levels in ``levels`` order).

    Attributes:
        levels: pyramid levels, e.g. (2, 3, 4, 5, 6, 7).
        anchors: per level Tensor[n_l, 4] xyxy pixels.
        cls1: first-step face logits Tensor[B, n_l], STC levels only.
        box1: first-step deltas Tensor[B, n_l, 4] against the anchors, STR levels only.
        cls2: second-step face logits Tensor[B, n_l], every level.
        box2: second-step deltas Tensor[B, n_l, 4] against :func:`second_step_references`, every level.
    """

    levels: tuple[int, ...]
    anchors: list[Tensor]
    cls1: dict[int, Tensor]
    box1: dict[int, Tensor]
    cls2: list[Tensor]
    box2: list[Tensor]

    @property
    def counts(self) -> list[int]:
        return [a.shape[0] for a in self.anchors]

    @property
    def batch_size(self) -> int:
        return self.cls2[0].shape[0]
