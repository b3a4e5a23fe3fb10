"""Typed configuration of the ISRN detector: model shape, training losses, inference.

Three configuration sections (:func:`isrn_model.section.config_section`: frozen, keyword-only,
validated pydantic dataclasses whose field docstrings are their descriptions). The job spec embeds
them as ``model:``, ``loss:`` and ``inference:``; ``to_dict()`` / ``from_dict()`` round-trip them
through plain Python values and reject unknown keys by name.

Provenance tags follow ``docs/model.md``: [code] released SRN code, [paper] the SRN/ISRN papers,
[notes] secondary summaries, [ours] our reconstruction or choice.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from isrn_model.section import Section, config_section, unit_field

LEVELS = (2, 3, 4, 5, 6, 7)
"""Pyramid levels P2–P7 (strides 4–128) [code]."""

Level = Literal[2, 3, 4, 5, 6, 7]


def _distinct(name: str, levels: tuple[int, ...]) -> None:
    if len(set(levels)) != len(levels):
        raise ValueError(f"{name} must list distinct levels, got {levels!r}")


@config_section
class ModelConfig(Section):
    """Shape of the ISRN network. Defaults are the ISRN reconstruction (ResNet-18, root stem, GN)."""

    depth: Literal[18, 34, 50, 101] = 18
    """ResNet depth: 18, 34 (basic blocks) or 50, 101 (bottlenecks). ISRN's final backbone is a
    "New-ResNet-18" [notes]; SRN used ResNet-50 [code]."""
    norm: Literal["gn", "bn", "frozen_bn"] = "gn"
    """Normalisation: "gn" GroupNorm everywhere (ISRN, from scratch [paper]); "bn" BatchNorm
    everywhere (the trainer converts to SyncBatchNorm when distributed); "frozen_bn" frozen statistics
    in the backbone (for external weights) and no normalisation in the neck and heads [ours]: frozen
    statistics can't be learned for freshly initialised layers."""
    gn_groups: int = Field(default=32, gt=0)
    """GroupNorm groups (32 [ours]: ISRN's value was not recovered). A layer uses gcd(groups, channels)
    groups in the backbone and gcd(groups, channels / 2) in the neck and heads [ours] (= groups in every
    layer at full width), so reduced-width demo models build and no neck or head group has one channel."""
    stem: Literal["root", "standard"] = "root"
    """"root": three 3×3 convs, the first with half the channels, stride 2 in total before C2 [ours,
    after ScratchDet's Root-ResNet]; "standard": 7×7/2 conv + 3×3/2 max-pool (ResNet)."""
    base_width: int = Field(default=64, gt=0, multiple_of=2)
    """Channels of the first residual stage (64 in every ResNet); even, since the root stem's first
    conv has half. Departure [ours]: smaller values (e.g. 16) make CPU-sized demo and smoke-test
    models; stages widen ×2 each as usual."""
    fpn_channels: int = Field(default=256, gt=0)
    """Channels of C2–C7 reductions and P2–P7 (256 [code]); smaller for CPU demos [ours]."""
    head_channels: int = Field(default=256, gt=0, multiple_of=4)
    """Channels of the head's 3×3 convs and the RFE (256 [code]); a multiple of 4 (RFE has four
    branches of head_channels/4)."""
    share_heads: bool = True
    """True: one head for both steps and all levels (the released SRN weights [code]); False: one head
    per step (still shared across levels) [ours, for ablation]."""
    zero_init_residual: bool = True
    """Zero-init the last norm of each residual block so every block starts as identity [ours: helps
    training from scratch]. He init is always used for convs."""
    pretrained_path: str | None = None
    """Local file with a backbone state dict (torchvision ResNet key names accepted) loaded after init.
    Never downloaded."""
    init_from: str | None = None
    """Start training from another run's weights (ISRN's second stage after its COCO pre-training
    [paper]): a training checkpoint (s3://…, or a local folder holding training_state.pt, which every
    worker must see) or an MLflow model URI (models:/…, runs:/…). Loaded by parameter name (``isrn_model.weights``) by the training
    job, once, when it does not resume; the builder itself ignores it."""
    stc_levels: tuple[Level, ...] = (2, 3, 4)
    """Levels with two-step classification (STC) [code: multi_cls_levels 0,1,2]."""
    str_levels: tuple[Level, ...] = (5, 6, 7)
    """Levels with two-step regression (STR) [code: multi_reg_levels 3,4,5]."""
    stc_threshold: float = unit_field(0.99)
    """STC background confidence θ (0.99 [paper][code]): on STC levels an anchor whose first-step face
    probability is at most 1 − θ (0.01) is an easy negative. Used by both training (it leaves the
    second-step classification loss) and inference (its score is 0)."""

    def __post_init__(self) -> None:
        _distinct("stc_levels", self.stc_levels)
        _distinct("str_levels", self.str_levels)


@config_section
class LossConfig(Section):
    """Training targets and losses (SRN/ISRN §3; values [notes] unless marked)."""

    focal_alpha: float = unit_field(0.25)
    """Focal-loss weight of positives (RetinaNet's 0.25 [ours]; ISRN's not recovered)."""
    focal_gamma: float = Field(default=2.0, ge=0)
    """Focal-loss focusing exponent (RetinaNet's 2 [ours])."""
    step1_neg_iou: float = unit_field(0.3)
    """First step: anchors with max IoU below this are background [notes]."""
    step1_pos_iou: float = unit_field(0.7)
    """First step: anchors with max IoU at or above this are faces [notes]; between is ignored."""
    step2_neg_iou: float = unit_field(0.4)
    """Second step background threshold [notes]."""
    step2_pos_iou: float = unit_field(0.5)
    """Second step face threshold [notes]; between is ignored."""
    allow_low_quality_matches: bool = True
    """Also make each face's best anchor(s) positive even below the face threshold [ours, as
    RetinaNet/Faster R-CNN], so tiny and oddly shaped faces get a target in both steps."""
    stc_filter_regression: bool = False
    """False: STC removes easy negatives from the second-step *classification* loss only, as docs/model.md
    says. True [ours, this code's earlier behaviour]: the second-step box loss also skips
    positives whose first-step face probability is at most 1 − θ."""
    smooth_l1_beta: float = Field(default=1.0 / 9.0, ge=0)
    """Smooth-L1 transition point (1/9 [ours, Detectron's RetinaNet]); deltas carry no variances,
    so they are small and a beta of 1 would leave the loss quadratic almost everywhere."""
    box_loss_weight: float = Field(default=1.0, ge=0)
    """Weight of the smooth-L1 terms relative to focal loss (1 [notes])."""

    def __post_init__(self) -> None:
        for step in (1, 2):
            neg, pos = getattr(self, f"step{step}_neg_iou"), getattr(self, f"step{step}_pos_iou")
            if neg > pos:
                raise ValueError(f"step{step}_neg_iou ({neg}) exceeds step{step}_pos_iou ({pos})")


@config_section
class InferenceConfig(Section):
    """Post-processing. Defaults are the released code's values; the paper's are in each docstring.

    The STC filter's threshold is ``ModelConfig.stc_threshold``: training and inference share it.
    """

    score_threshold: float = unit_field(0.05)
    """Second-step face probability threshold (0.05 [code]; the paper gives none). The code applies it
    only on levels with ≥ 120 locations; we apply it everywhere [ours]."""
    pre_nms_top_k: int = Field(default=6000, gt=0)
    """Candidates kept per level before NMS (6000 per level [code]; the paper: 2000 in total)."""
    nms_threshold: float = Field(default=0.4, gt=0.0, le=1.0)
    """NMS IoU threshold (0.4 [code]; the paper: 0.5)."""
    keep_top_k: int = Field(default=750, gt=0)
    """Detections kept per image after NMS (750 [code][paper])."""
    flip: bool = False
    """Test-time augmentation: also run the horizontally flipped image and merge by box voting
    (released test code [code]); applied by wrapping the detector in ``tta.ISRNWithTTA``."""
    multi_scale: bool = False
    """Test-time augmentation: also run down- and up-scaled images (0.5, 1.5^k up to the pixel budget)
    and merge by box voting [code]; boxes from down-scaled runs kept only if larger than 30 px, from
    up-scaled only if smaller than 100 px [code]."""
    max_test_size: int = Field(default=2100, gt=0)
    """Multi-scale pixel budget: the largest test image has at most max_test_size² pixels (2100 [code])."""
    vote_threshold: float = Field(default=0.5, gt=0.0, le=1.0)
    """Box-voting IoU (0.5 [code])."""
