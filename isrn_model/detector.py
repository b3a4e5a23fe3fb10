"""The ISRN detector module: backbone → SRN neck → two-step heads → losses (train) or detections (eval).

Input contract (the data layer and trainer rely on it):

* ``images``: ``torch.float32`` Tensor[B, 3, H, W], **RGB, raw pixel values 0..255**. The model
  normalises with ImageNet mean/std (buffers, so an exported model also takes raw pixels) and pads
  bottom/right with the mean colour to a multiple of 128 (the largest stride); boxes are in the
  coordinates of the unpadded image.
* ``targets`` (training): list of B dicts with ``"boxes"``: float Tensor[N, 4] xyxy pixels, N ≥ 0.

``model.train(); model(images, targets)`` → ``{"loss_cls_1", "loss_box_1", "loss_cls_2", "loss_box_2"}``.
``model.eval(); model(images)`` → per image ``{"boxes": Tensor[K, 4] xyxy pixels, "scores": Tensor[K]}``,
single-scale; flip / multi-scale test wraps the detector: ``tta.ISRNWithTTA(model)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from isrn_model.anchors import NUM_ANCHORS, anchors_for_feature_sizes
from isrn_model.boxes import degenerate_boxes
from isrn_model.config import LEVELS, InferenceConfig, LossConfig, ModelConfig
from isrn_model.postprocess import dense_predictions, select_detections
from isrn_model.stc_str import TwoStepOutputs
from isrn_model.targets import PaddedBoxes, compute_losses

IMAGENET_MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
SIZE_DIVISOR = 128
"""Inputs are padded to a multiple of the P7 stride so every level halves exactly."""


class ISRN(nn.Module):
    """Improved Selective Refinement Network (arXiv 1901.06651); build it with ``builder.build_isrn``.

    Args:
        backbone: maps the normalised image to [C2, C3, C4, C5].
        neck: maps them to (first-step features C2–C7, second-step features P2–P7).
        heads: one :class:`~isrn_model.heads.SRNHead` (shared by both steps) or two (step 1, step 2).
        model_config, loss_config, inference_config: kept on the module (``export.save_model``
            stores them; ``inference_config`` may be reassigned between evaluations). Its ``flip`` and
            ``multi_scale`` are read by :class:`~isrn_model.tta.ISRNWithTTA`, not by this module.
    """

    def __init__(
        self, backbone: nn.Module, neck: nn.Module, heads: list[nn.Module], *, model_config: ModelConfig,
        loss_config: LossConfig, inference_config: InferenceConfig,
    ) -> None:
        super().__init__()
        if len(heads) not in (1, 2):
            raise ValueError(f"ISRN takes one shared head or two (one per step), got {len(heads)}")
        self.backbone = backbone
        self.neck = neck
        self.heads = nn.ModuleList(heads)
        self.model_config = model_config
        self.loss_config = loss_config
        self.inference_config = inference_config
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN_RGB).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD_RGB).view(1, 3, 1, 1), persistent=False)

    # -- the template ----------------------------------------------------------------------------
    def forward(
        self, images: Tensor, targets: list[dict[str, Tensor]] | None = None,
        image_sizes: list[tuple[int, int]] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in training mode, detections in eval mode (see the module docstring).

        ``image_sizes`` (eval, optional): per image (height, width) of the real content of a padded
        batch; detections are clipped to it. Default: the full tensor size.
        """
        x = self.preprocess(images)
        if self.training:
            gt_boxes = self._validate_targets(targets, images.shape[0], x.device)
            return compute_losses(self.two_step_outputs(x), gt_boxes, self.loss_config,
                                  stc_threshold=self.model_config.stc_threshold)
        if image_sizes is None:
            image_sizes = [tuple(images.shape[-2:])] * images.shape[0]
        elif len(image_sizes) != images.shape[0]:
            raise ValueError(f"image_sizes has {len(image_sizes)} entries for a batch of {images.shape[0]}")
        out = self.two_step_outputs(x)
        scores, boxes = dense_predictions(out, self.stc_face_threshold)
        return select_detections(scores, boxes, out.counts, image_sizes, self.inference_config)

    def predict_raw(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Dense predictions, fixed shapes (export-friendly): scores Tensor[B, N], boxes Tensor[B, N, 4].

        Scores are after the STC filter; boxes are after STR, xyxy pixels, not clipped. Turn them into
        detections with ``postprocess.select_detections(scores, boxes, model.anchor_counts(H, W), …)``.
        """
        out = self.two_step_outputs(self.preprocess(images))
        return dense_predictions(out, self.stc_face_threshold)

    @property
    def stc_face_threshold(self) -> float:
        """STC keeps an anchor iff its first-step face probability exceeds 1 − θ (θ = 0.99 → 0.01)."""
        return 1.0 - self.model_config.stc_threshold

    # -- steps -----------------------------------------------------------------------------------
    def preprocess(self, images: Tensor) -> Tensor:
        """Validate, normalise and pad Tensor[B, 3, H, W] raw RGB 0..255 (float32, or uint8 as the
        training loader sends it) to a multiple of 128."""
        if not isinstance(images, Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.dtype not in (torch.float32, torch.uint8):
            raise TypeError(f"images must be torch.float32 or torch.uint8 raw RGB 0..255, got dtype {images.dtype}")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape [B, 3, H, W], got {list(images.shape)}")
        if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
            raise ValueError(f"images must be non-empty, got shape {list(images.shape)}")
        # One float32 allocation, then in place (no gradient flows to the pixels): a uint8 batch is
        # converted here, on its device. Measured on one CPU thread, 8 × 640²: 24 ms, against 62 ms
        # for a float32 copy and then (x - mean) / std; uint8 - mean in one op takes a slow
        # mixed-dtype path (42 ms).
        if images.dtype == torch.uint8:
            x = images.float().sub_(self.pixel_mean).div_(self.pixel_std)
        else:
            x = images.sub(self.pixel_mean).div_(self.pixel_std)
        height, width = images.shape[-2:]
        pad_h = -height % SIZE_DIVISOR
        pad_w = -width % SIZE_DIVISOR
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))  # zero after normalisation = the mean colour
        return x

    def two_step_outputs(self, x: Tensor) -> TwoStepOutputs:
        """Raw outputs of both steps for a normalised, padded batch."""
        cfg = self.model_config
        first, second = self.neck(self.backbone(x))
        sizes = [tuple(p.shape[-2:]) for p in second]
        anchors = anchors_for_feature_sizes(LEVELS, sizes, x.device)  # cached per (sizes, device)
        counts = [NUM_ANCHORS * h * w for h, w in sizes]
        head1, head2 = self.heads[0], self.heads[-1]
        return TwoStepOutputs(
            levels=LEVELS,
            anchors=list(anchors.split(counts)),
            cls1={lvl: head1.classify(f) for lvl, f in zip(LEVELS, first) if lvl in cfg.stc_levels},
            box1={lvl: head1.regress(f) for lvl, f in zip(LEVELS, first) if lvl in cfg.str_levels},
            cls2=[head2.classify(p) for p in second],
            box2=[head2.regress(p) for p in second],
        )

    def anchor_counts(self, height: int, width: int) -> list[int]:
        """Anchors per level (P2–P7) for an input of ``height`` × ``width`` (padded to 128 internally)."""
        ph, pw = height + (-height % SIZE_DIVISOR), width + (-width % SIZE_DIVISOR)
        return [NUM_ANCHORS * (ph >> lvl) * (pw >> lvl) for lvl in LEVELS]

    @staticmethod
    def _validate_targets(targets: list[dict[str, Tensor]] | None, batch: int, device: torch.device) -> PaddedBoxes:
        """Check the targets and pad their boxes onto ``device``: one host synchronisation for the batch
        (whether any box is degenerate); which one is looked for only when one is."""
        if targets is None:
            raise ValueError("targets are required in training mode (model.train()); call model.eval() to detect")
        if not isinstance(targets, (list, tuple)) or len(targets) != batch:
            raise ValueError(f"targets must be a list of {batch} dicts (one per image), got {type(targets).__name__}"
                             f"{'' if not hasattr(targets, '__len__') else f' of length {len(targets)}'}")
        boxes = []
        for i, target in enumerate(targets):
            if not isinstance(target, dict) or "boxes" not in target:
                raise ValueError(f"target {i} must be a dict with key 'boxes'")
            b = target["boxes"]
            if not isinstance(b, Tensor) or not b.is_floating_point():
                raise TypeError(f"target {i} 'boxes' must be a float tensor, got "
                                f"{b.dtype if isinstance(b, Tensor) else type(b).__name__}")
            if b.ndim != 2 or b.shape[1] != 4:
                raise ValueError(f"target {i} 'boxes' must have shape [N, 4], got {list(b.shape)}")
            boxes.append(b)
        # Padded first, checked in float32 (the dtype the losses use), then one sync for the batch.
        gt = PaddedBoxes.from_list(boxes, device)
        if bool((degenerate_boxes(gt.boxes.flatten(0, 1)).view(gt.valid.shape) & gt.valid).any()):
            for i, b in enumerate(boxes):  # the error path: find the first bad box by name
                bad = degenerate_boxes(b.float()).nonzero().flatten()
                if bad.numel():
                    j = int(bad[0])
                    raise ValueError(f"target {i} box {j} is degenerate (need x2 > x1, y2 > y1, finite): "
                                     f"{b[j].tolist()}")
        return gt
