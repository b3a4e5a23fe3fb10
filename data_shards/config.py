"""Configuration sections of the data layer: augmentation, the streaming loader, the generator.

This module imports neither torch, OpenCV nor webdataset, so the job spec (``jobs.spec``) and the
commands that only validate it (``isrn train --dry-run``, ``isrn submit``) stay light. The sections
are declared the one way the project declares configuration (:mod:`isrn_model.section`): frozen,
keyword-only, validated pydantic dataclasses whose field docstrings are their descriptions.

Provenance tags as in ``docs/model.md``: [code], [paper], [notes], and [ours] for our choices.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from isrn_model.section import Section, config_section, unit_field

ANCHOR_STRIDES = (4, 8, 16, 32, 64, 128)
"""Strides of P2–P7 [code]."""
ANCHOR_SCALES = (2.0, 2.828427)
"""Anchor sizes in strides [code] (as ``isrn_model.anchors.ANCHOR_SCALES``; a test keeps them equal)."""
MODEL_ANCHOR_SIZES = tuple(scale * stride for stride in ANCHOR_STRIDES for scale in ANCHOR_SCALES)
"""The detector's 12 anchor sizes, ascending: 8, 11.3, 16, 22.6, … 256, 362 px (docs/model.md "Anchors")."""


@config_section
class AugmentConfig(Section):
    """Training augmentation (``data_shards.augment``): SRN's photometric distortion, zoom-out, square
    crop and flip, and ISRN's data-anchor-sampling, as ``docs/model.md`` "Training recipe" states."""

    out_size: int = Field(default=640, gt=0)
    """Side S of the square training image, in pixels [SRN: 1024; ours: 640 for CPU-scale runs]."""
    data_anchor_sampling_prob: float = unit_field(0.5)
    """Share of samples cropped by data-anchor-sampling instead of zoom-out + square crop [ISRN uses
    both; the share is ours: 0.5]."""
    das_anchor_sizes: tuple[float, ...] = Field(default=MODEL_ANCHOR_SIZES, min_length=1)
    """Anchor sizes (px, ascending) that data-anchor-sampling maps faces onto: the detector's own,
    {2, 2√2} × stride on P2–P7 [docs/model.md]."""
    das_allow_larger: bool = False
    """False: the target anchor size is at or below the face's own (docs/model.md). True [ours, PyramidBox's
    rule]: it may also be the one size above."""
    das_size_jitter: float = Field(default=1.0, ge=1.0)
    """The face's size after resizing is drawn from U[a / j, a · j] around the target anchor size a.
    1: exactly the anchor size (docs/model.md "crop so the face lands at that scale"); 2 [ours, PyramidBox]."""
    zoom_out_prob: float = unit_field(1.0)
    """Probability of zoom-out expansion before the square crop. 1: every image is expanded by a ratio
    drawn from U[1, zoom_out_max], as docs/model.md lists it (a ratio near 1 is no expansion); lower [ours]."""
    zoom_out_max: float = Field(default=4.0, ge=1.0)
    """Largest zoom-out canvas ratio [SRN: 4]."""
    crop_full_side_prob: float = unit_field(0.5)
    """Square crop: with this probability the side is the canvas' short side, otherwise U[crop_scale_min,
    1] × the short side [notes: SRN crops both patches and picks one at random, hence 0.5]."""
    crop_scale_min: float = Field(default=0.5, gt=0.0, le=1.0)
    """Smallest square crop side as a fraction of the canvas' short side [SRN: 0.5]."""
    flip_prob: float = unit_field(0.5)
    """Probability of a horizontal flip [SRN flips; 0.5 ours, the usual value]."""
    photometric_prob: float = unit_field(0.5)
    """Probability of each photometric op (brightness, contrast, saturation, hue) [ours, SSD's 0.5]."""
    min_box_size: float = Field(default=2.0, ge=0.0)
    """Boxes narrower or shorter than this many output pixels after crop and clip are dropped [ours]."""
    crop_attempts: int = Field(default=10, gt=0)
    """Zoom-out crops are redrawn up to this many times until one keeps a face centre [ours]."""
    crop_min_visible: float = unit_field(0.0)
    """A zoom-out crop is also redrawn (within ``crop_attempts``) while it keeps a face of which less than
    this share of the area lies inside the window: the clipped box would teach a box on part of a face.
    0: any kept face may be cut, as SRN's crop [ours]. If no attempt qualifies, the one cutting the
    fewest kept faces is used."""

    def __post_init__(self) -> None:
        if list(self.das_anchor_sizes) != sorted(self.das_anchor_sizes) or min(self.das_anchor_sizes) <= 0:
            raise ValueError(f"das_anchor_sizes must be positive and ascending, got {self.das_anchor_sizes}")


@config_section
class LoaderConfig(Section):
    """Data-loading settings of a training job (the ``loader:`` section of the job spec)."""

    batch_size: int = Field(default=8, gt=0)
    """Training images per batch, per rank."""
    num_workers: int = Field(default=2, ge=0)
    """Dataloader worker processes per rank (0: load in the training process)."""
    shuffle_buffer: int = Field(default=256, ge=0)
    """Samples held per worker for shuffling (beyond the shard permutation)."""
    augment: AugmentConfig = AugmentConfig()
    """Training augmentation; ``augment.out_size`` is the side of the training images."""
    keep_invalid: bool = True
    """Train on faces WIDER marks invalid (degenerate w/h <= 0 boxes are always dropped)."""
    batches_per_epoch: int | None = Field(default=None, gt=0)
    """Override of total samples // (world_size × batch_size); None: computed from the manifest."""
    val_batch_size: int = Field(default=1, gt=0)
    """Validation images per batch, per rank. Keep 1 (every shipped spec does): a batch pads its images
    to its largest canvas, and with GroupNorm the padding moves the normalisation statistics, so the
    AP would depend on which images share a batch and differ from the served model's, which runs each
    image on its own canvas. Measured on a demo champion: 0.352 / 0.409 / 0.433 at 4, 0.349 / 0.423 /
    0.453 at 1, 0.349 / 0.425 / 0.454 served (`isrn evaluate --model`)."""
    val_max_size: int = Field(default=1024, gt=0)
    """Validation images are shrunk so their long side is at most this."""
    val_size_multiple: int = Field(default=128, gt=0)
    """Validation batches are padded to a multiple of this (the largest stride), bottom and right, with
    training's fill colour (``data_shards.images.MEAN_BGR``), as a served model's canvas is."""
    seed: int = 0
    """Seeds shard permutations, shuffling and augmentation (with epoch, rank and worker)."""
    prefetch_factor: int = Field(default=2, gt=0)
    """Batches each dataloader worker prepares ahead."""
    verify: bool = False
    """Check every shard's sha256 against the manifest before reading (downloads the split once per
    loader); their sizes are always checked."""


@config_section
class SynthConfig(Section):
    """Knobs of the WIDER-format generator (``data_shards.synth``); the defaults give WIDER-like
    statistics at a 640 px width."""

    image_width: int = Field(default=640, ge=64)
    """Width of every image; the height is width × U[0.56, 1.0] (WIDER images are 1024 wide)."""
    min_face: int = Field(default=8, ge=1)
    """Smallest face width in pixels."""
    max_face: int = Field(default=320, ge=1)
    """Largest face width in pixels (capped at 0.8 × the image's short side)."""
    empty_prob: float = unit_field(0.03)
    """Probability that an image has no face."""
    degenerate_prob: float = unit_field(0.01)
    """Train only: probability per image of one extra w = 0 annotation (a real WIDER quirk)."""
    jpeg_quality: tuple[int, int] = (80, 95)
    """JPEG quality drawn uniformly from this range (inclusive)."""
    faces: Literal["person", "lfw"] = "person"
    """What is pasted per face. "person": a head and shoulders drawn at the pasted size (skin tones,
    one light, hair, features; ``data_shards.synth_person``) with a real LFW face as a faint texture.
    "lfw": the 25 px grey LFW crop itself, tinted and scaled up in a soft ellipse (the generator
    before "person"; a detector trained on it finds no face in a real photograph)."""
    blur_occlusion: Literal["flat", "by_height"] = "flat"
    """How each face's blur and occlusion labels are drawn. "flat": the same rates at every size (blur
    0/1/2: 0.7 / 0.2 / 0.1, occlusion: 0.8 / 0.13 / 0.07), so a large face is as often blurred as a
    small one. "by_height": the rates real WIDER FACE val faces of that height carry
    (``data_shards.synth.BLUR_OCCLUSION_BY_HEIGHT``): faces under 30 px mostly heavily blurred, faces
    over 100 px mostly sharp. The demo keeps "flat": at its budget "by_height" lowered every setting's
    AP (README, ablation row ``blur-by-height``)."""
    person_templates: int = Field(default=48, gt=0)
    """"person": people drawn per split at a 96 px face and shrunk for every face up to that width
    (wider ones are drawn at their size); more gives more distinct people at ~15 ms of CPU each."""

    def __post_init__(self) -> None:
        if self.min_face > self.max_face:
            raise ValueError(f"need min_face <= max_face, got {self.min_face}, {self.max_face}")
