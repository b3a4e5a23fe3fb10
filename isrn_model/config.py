"""Typed configuration of the ISRN detector: model shape, training losses, inference.

Three frozen, keyword-only dataclasses, each validated in ``__post_init__`` with errors that name the
field. They are plain dataclasses so the job-spec tree can embed them and build them from keyword
arguments (``ModelConfig(**d)``); ``to_dict()`` / ``from_dict()`` round-trip them through plain
Python values and ``from_dict`` rejects unknown keys by name.

Provenance tags follow ``shared/ISRN.md``: [code] released SRN code, [paper] the SRN/ISRN papers,
[notes] secondary summaries, [ours] our reconstruction or choice.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Self

LEVELS = (2, 3, 4, 5, 6, 7)
"""Pyramid levels P2–P7 (strides 4–128) [code]."""


class _DictMixin:
    """``to_dict`` / ``from_dict`` shared by the config dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (tuples become lists) so the dict serialises to YAML/JSON."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Build from a dict; raises ValueError naming any unknown key."""
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"unknown key(s) for {cls.__name__}: {', '.join(map(repr, unknown))}; "
                f"expected some of {sorted(names)}"
            )
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)


def _check_choice(owner: str, name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{name} must be one of {choices}, got {value!r}")


def _check_positive_int(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{owner}.{name} must be a positive int, got {value!r}")


def _check_unit(owner: str, name: str, value: Any, *, open_low: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{owner}.{name} must be a number in [0, 1], got {value!r}")
    if not (0.0 < value <= 1.0 if open_low else 0.0 <= value <= 1.0):
        raise ValueError(f"{owner}.{name} must lie in {'(0' if open_low else '[0'}, 1], got {value!r}")


def _check_levels(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, tuple) or any(v not in LEVELS for v in value) or len(set(value)) != len(value):
        raise ValueError(f"{owner}.{name} must be a tuple of distinct levels from {LEVELS}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig(_DictMixin):
    """Shape of the ISRN network. Defaults are the ISRN reconstruction (ResNet-18, root stem, GN)."""

    depth: int = 18
    """ResNet depth: 18, 34 (basic blocks) or 50, 101 (bottlenecks). ISRN's final backbone is a
    "New-ResNet-18" [notes]; SRN used ResNet-50 [code]."""
    norm: str = "gn"
    """Normalisation: "gn" GroupNorm everywhere (ISRN, from scratch [paper]); "bn" BatchNorm
    everywhere (the trainer converts to SyncBatchNorm when distributed); "frozen_bn" frozen statistics
    in the backbone (for external weights) and no normalisation in the neck and heads [ours]: frozen
    statistics can't be learned for freshly initialised layers."""
    gn_groups: int = 32
    """GroupNorm groups (32 [ours]: ISRN's value was not recovered). A layer uses
    gcd(groups, channels / 2) groups [ours] (= groups at full width), so reduced-width demo models
    build and every group has at least 2 channels."""
    stem: str = "root"
    """"root": three 3×3 convs, the first with half the channels, stride 2 in total before C2 [ours,
    after ScratchDet's Root-ResNet]; "standard": 7×7/2 conv + 3×3/2 max-pool (ResNet)."""
    base_width: int = 64
    """Channels of the first residual stage (64 in every ResNet). Departure [ours]: smaller values
    (e.g. 16) make CPU-sized demo and smoke-test models; stages widen ×2 each as usual."""
    fpn_channels: int = 256
    """Channels of C2–C7 reductions and P2–P7 (256 [code]); smaller for CPU demos [ours]."""
    head_channels: int = 256
    """Channels of the head's 3×3 convs and the RFE (256 [code]); must be a multiple of 4 (RFE has four
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
    stc_levels: tuple[int, ...] = (2, 3, 4)
    """Levels with two-step classification (STC) [code: multi_cls_levels 0,1,2]."""
    str_levels: tuple[int, ...] = (5, 6, 7)
    """Levels with two-step regression (STR) [code: multi_reg_levels 3,4,5]."""

    def __post_init__(self) -> None:
        own = "ModelConfig"
        _check_choice(own, "depth", self.depth, (18, 34, 50, 101))
        _check_choice(own, "norm", self.norm, ("gn", "bn", "frozen_bn"))
        _check_choice(own, "stem", self.stem, ("root", "standard"))
        _check_positive_int(own, "gn_groups", self.gn_groups)
        _check_positive_int(own, "base_width", self.base_width)
        if self.base_width % 2:
            raise ValueError(f"{own}.base_width must be even (the root's first conv has half), got {self.base_width}")
        _check_positive_int(own, "fpn_channels", self.fpn_channels)
        _check_positive_int(own, "head_channels", self.head_channels)
        if self.head_channels % 4:
            raise ValueError(f"{own}.head_channels must be a multiple of 4 (RFE branches), got {self.head_channels}")
        if not isinstance(self.share_heads, bool):
            raise ValueError(f"{own}.share_heads must be a bool, got {self.share_heads!r}")
        if not isinstance(self.zero_init_residual, bool):
            raise ValueError(f"{own}.zero_init_residual must be a bool, got {self.zero_init_residual!r}")
        if self.pretrained_path is not None and not isinstance(self.pretrained_path, str):
            raise ValueError(f"{own}.pretrained_path must be a str or None, got {self.pretrained_path!r}")
        _check_levels(own, "stc_levels", self.stc_levels)
        _check_levels(own, "str_levels", self.str_levels)


@dataclass(frozen=True, kw_only=True)
class LossConfig(_DictMixin):
    """Training targets and losses (SRN/ISRN §3; values [notes] unless marked)."""

    focal_alpha: float = 0.25
    """Focal-loss weight of positives (RetinaNet's 0.25 [ours]; ISRN's not recovered)."""
    focal_gamma: float = 2.0
    """Focal-loss focusing exponent (RetinaNet's 2 [ours])."""
    step1_neg_iou: float = 0.3
    """First step: anchors with max IoU below this are background [notes]."""
    step1_pos_iou: float = 0.7
    """First step: anchors with max IoU at or above this are faces [notes]; between is ignored."""
    step2_neg_iou: float = 0.4
    """Second step background threshold [notes]."""
    step2_pos_iou: float = 0.5
    """Second step face threshold [notes]; between is ignored."""
    allow_low_quality_matches: bool = True
    """Also make each face's best anchor(s) positive even below the face threshold [ours, as
    RetinaNet/Faster R-CNN], so tiny and oddly shaped faces get a target in both steps."""
    stc_threshold: float = 0.99
    """STC: second-step classification on STC levels uses only anchors whose first-step background
    confidence is below this (face probability above 1 − 0.99 = 0.01) [paper][code]."""
    smooth_l1_beta: float = 1.0 / 9.0
    """Smooth-L1 transition point (1/9 [ours, Detectron's RetinaNet]); deltas carry no variances,
    so they are small and a beta of 1 would leave the loss quadratic almost everywhere."""
    box_loss_weight: float = 1.0
    """Weight of the smooth-L1 terms relative to focal loss (1 [notes])."""

    def __post_init__(self) -> None:
        own = "LossConfig"
        _check_unit(own, "focal_alpha", self.focal_alpha)
        if isinstance(self.focal_gamma, bool) or not isinstance(self.focal_gamma, (int, float)) or self.focal_gamma < 0:
            raise ValueError(f"{own}.focal_gamma must be a number >= 0, got {self.focal_gamma!r}")
        for name in ("step1_neg_iou", "step1_pos_iou", "step2_neg_iou", "step2_pos_iou"):
            _check_unit(own, name, getattr(self, name))
        if self.step1_neg_iou > self.step1_pos_iou:
            raise ValueError(f"{own}.step1_neg_iou ({self.step1_neg_iou}) exceeds step1_pos_iou ({self.step1_pos_iou})")
        if self.step2_neg_iou > self.step2_pos_iou:
            raise ValueError(f"{own}.step2_neg_iou ({self.step2_neg_iou}) exceeds step2_pos_iou ({self.step2_pos_iou})")
        if not isinstance(self.allow_low_quality_matches, bool):
            raise ValueError(f"{own}.allow_low_quality_matches must be a bool, got {self.allow_low_quality_matches!r}")
        _check_unit(own, "stc_threshold", self.stc_threshold)
        if not isinstance(self.smooth_l1_beta, (int, float)) or self.smooth_l1_beta < 0:
            raise ValueError(f"{own}.smooth_l1_beta must be >= 0, got {self.smooth_l1_beta!r}")
        if not isinstance(self.box_loss_weight, (int, float)) or self.box_loss_weight < 0:
            raise ValueError(f"{own}.box_loss_weight must be >= 0, got {self.box_loss_weight!r}")


@dataclass(frozen=True, kw_only=True)
class InferenceConfig(_DictMixin):
    """Post-processing. Defaults are the released code's values; the paper's are in each docstring."""

    stc_score_threshold: float = 0.01
    """STC filter: an anchor on an STC level survives only if its first-step face probability is above
    this (0.01, i.e. background confidence θ = 0.99) [paper][code]."""
    score_threshold: float = 0.05
    """Second-step face probability threshold (0.05 [code]; the paper gives none). The code applies it
    only on levels with ≥ 120 locations; we apply it everywhere [ours]."""
    pre_nms_top_k: int = 6000
    """Candidates kept per level before NMS (6000 per level [code]; the paper: 2000 in total)."""
    nms_threshold: float = 0.4
    """NMS IoU threshold (0.4 [code]; the paper: 0.5)."""
    keep_top_k: int = 750
    """Detections kept per image after NMS (750 [code][paper])."""
    flip: bool = False
    """Also run the horizontally flipped image and merge by box voting (released test code [code])."""
    multi_scale: bool = False
    """Also run down- and up-scaled images (0.5, 1.5^k up to the pixel budget) and merge by box voting
    [code]; boxes from down-scaled runs kept only if larger than 30 px, from up-scaled only if smaller
    than 100 px [code]."""
    max_test_size: int = 2100
    """Multi-scale pixel budget: the largest test image has at most max_test_size² pixels (2100 [code])."""
    vote_threshold: float = 0.5
    """Box-voting IoU (0.5 [code])."""

    def __post_init__(self) -> None:
        own = "InferenceConfig"
        _check_unit(own, "stc_score_threshold", self.stc_score_threshold)
        _check_unit(own, "score_threshold", self.score_threshold)
        _check_positive_int(own, "pre_nms_top_k", self.pre_nms_top_k)
        _check_unit(own, "nms_threshold", self.nms_threshold, open_low=True)
        _check_positive_int(own, "keep_top_k", self.keep_top_k)
        for name in ("flip", "multi_scale"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{own}.{name} must be a bool, got {getattr(self, name)!r}")
        _check_positive_int(own, "max_test_size", self.max_test_size)
        _check_unit(own, "vote_threshold", self.vote_threshold, open_low=True)
