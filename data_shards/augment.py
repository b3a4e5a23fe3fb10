"""Training augmentation (SRN/ISRN recipe): random choice first, then one deterministic transform.

`sample_train_transform(rng, image_hw, boxes, config)` draws every random parameter from an
explicit `np.random.Generator` and returns a `TrainTransform`; `TrainTransform.apply_image` and
`.apply_boxes` then apply the same geometry to pixels and boxes. The geometry of
zoom-out + square crop + resize + flip is one affine map, applied with one `cv2.warpAffine`
(pixels outside the source image take the fill colour, which is what zoom-out expansion paints):

    x' = (x - x0) * out_size / side        y' = (y - y0) * out_size / side
    flip: x' -> out_size - x'

where (x0, y0, side) is the square crop window in source-image pixels; it may extend past the
image (zoom-out). The window is chosen one of two ways (docs/model.md, "Training recipe"):

- zoom-out + square crop [SRN]: with `zoom_out_prob` (1: always, as the recipe lists it) place the
  image in a canvas `r` times its size (r ~ U[1, zoom_out_max]) at a random offset; then a square
  whose side is, with `crop_full_side_prob`, the canvas' short side, else U[crop_scale_min, 1] x
  it [SRN crops both and picks one], at a random position in the canvas. The window is redrawn
  (up to `crop_attempts`) until it keeps a face centre and, with `crop_min_visible` > 0 [ours, off
  by default], cuts no kept face to under that share of its area.
- data-anchor-sampling [ISRN], with `data_anchor_sampling_prob`: pick a face of sqrt-area f, find
  its own anchor size (the one of `das_anchor_sizes`, the detector's, nearest to f in ratio), pick a
  target anchor size `a` uniformly **at or below** it, and crop the window that makes the face
  exactly `a` at `out_size` (side = out_size * f / a), positioned so the face is inside.
  Options [ours, PyramidBox's]: `das_allow_larger` also allows one size above; `das_size_jitter`
  draws the face's size from U[a / j, a * j] instead of exactly `a`.

Boxes (xyxy pixels) follow one rule, `TrainTransform.apply_boxes`: a box is **kept iff its centre
lies inside the crop window**; kept boxes are **clipped** to the window; after clipping, a box
whose width or height is below `min_box_size` output pixels is **dropped**.

Photometric distortion (SSD style, each with `photometric_prob`): brightness +U[-32, 32],
contrast xU[0.5, 1.5], saturation xU[0.5, 1.5], hue +U[-18, 18] degrees; applied after the warp (the
ops are per pixel, and the output is usually smaller than the source).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from data_shards.config import AugmentConfig
from data_shards.images import MEAN_BGR


@dataclass(frozen=True)
class TrainTransform:
    """A fully determined training transform (see the module docstring)."""

    x0: float
    y0: float
    side: float
    out_size: int
    flip: bool = False
    brightness: float = 0.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0
    min_box_size: float = 2.0
    fill: tuple[float, float, float] = MEAN_BGR

    @property
    def scale(self) -> float:
        return self.out_size / self.side

    def matrix(self) -> np.ndarray:
        """2x3 affine map from source to output, continuous pixel coordinates (the box map)."""
        s = self.scale
        if self.flip:
            return np.array([[-s, 0.0, self.out_size + self.x0 * s], [0.0, s, -self.y0 * s]])
        return np.array([[s, 0.0, -self.x0 * s], [0.0, s, -self.y0 * s]])

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """BGR uint8 H x W x 3 -> BGR uint8 out_size x out_size x 3."""
        # Boxes use continuous coordinates (pixel i covers [i, i + 1)); OpenCV maps pixel indices
        # (pixel i sits at i). Shift by half a pixel on both sides so pixels and boxes stay aligned.
        m = self.matrix()
        m[:, 2] += m[:, :2] @ np.array([0.5, 0.5]) - 0.5
        # INTER_AREA is not available to warpAffine; bilinear is what the reference code uses.
        out = cv2.warpAffine(
            image, m, (self.out_size, self.out_size),
            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=self.fill,
        )
        return photometric(out, self.brightness, self.contrast, self.saturation, self.hue)

    def apply_boxes(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """boxes (float[N, 4]) xyxy source pixels -> (kept boxes float32[K, 4] xyxy output pixels, keep mask bool[N])."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        s, size = self.scale, float(self.out_size)
        x1, x2 = (boxes[:, 0] - self.x0) * s, (boxes[:, 2] - self.x0) * s
        y1, y2 = (boxes[:, 1] - self.y0) * s, (boxes[:, 3] - self.y0) * s
        if self.flip:
            x1, x2 = size - x2, size - x1
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        keep = (cx >= 0) & (cx < size) & (cy >= 0) & (cy < size)
        out = np.stack([x1, y1, x2, y2], axis=1).clip(0.0, size)
        keep &= (out[:, 2] - out[:, 0] >= self.min_box_size) & (out[:, 3] - out[:, 1] >= self.min_box_size)
        return out[keep].astype(np.float32), keep


def photometric(image: np.ndarray, brightness: float, contrast: float, saturation: float, hue: float) -> np.ndarray:
    """SSD-style photometric distortion on a BGR uint8 image; identity for (0, 1, 1, 0)."""
    if contrast != 1.0 or brightness != 0.0:
        image = cv2.addWeighted(image, contrast, image, 0.0, brightness)  # saturating uint8
    if saturation != 1.0:
        gray = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        image = cv2.addWeighted(image, saturation, gray, 1.0 - saturation, 0.0)
    if hue != 0.0:
        hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
        lut = ((np.arange(256) + round(hue / 2.0)) % 180).astype(np.uint8)  # OpenCV hue is degrees / 2
        hsv[:, :, 0] = cv2.LUT(hsv[:, :, 0], lut)
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    return image


def _zoom_out_crop(rng: np.random.Generator, h: int, w: int, boxes: np.ndarray, cfg: AugmentConfig) -> tuple[float, float, float]:
    window, fewest_cut = (0.0, 0.0, float(min(h, w))), None
    for _ in range(cfg.crop_attempts):
        ratio = rng.uniform(1.0, cfg.zoom_out_max) if rng.random() < cfg.zoom_out_prob else 1.0
        cw, ch = w * ratio, h * ratio
        left, top = rng.uniform(0.0, cw - w), rng.uniform(0.0, ch - h)
        short = min(cw, ch)
        side = short if rng.random() < cfg.crop_full_side_prob else rng.uniform(cfg.crop_scale_min, 1.0) * short
        cx, cy = rng.uniform(0.0, cw - side), rng.uniform(0.0, ch - side)
        window = (cx - left, cy - top, side)
        if len(boxes) == 0:
            break
        inside = _centre_inside(boxes, window)
        if not inside.any():
            continue
        if cfg.crop_min_visible == 0.0:  # the centre rule alone (the default): no shares to compute
            return window
        cut = int((inside & (visible_share(boxes, window) < cfg.crop_min_visible)).sum())
        if cut == 0:
            return window
        if fewest_cut is None or cut < fewest_cut[0]:
            fewest_cut = (cut, window)
    return fewest_cut[1] if fewest_cut is not None else window


def _centre_inside(boxes: np.ndarray, window: tuple[float, float, float]) -> np.ndarray:
    x0, y0, side = window
    centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    return (centre_x >= x0) & (centre_x < x0 + side) & (centre_y >= y0) & (centre_y < y0 + side)


def visible_share(boxes: np.ndarray, window: tuple[float, float, float]) -> np.ndarray:
    """Share of each box's area (xyxy, float[N, 4], positive sizes) inside the square window (x0, y0, side)."""
    x0, y0, side = window
    iw = np.clip(np.minimum(boxes[:, 2], x0 + side) - np.maximum(boxes[:, 0], x0), 0.0, None)
    ih = np.clip(np.minimum(boxes[:, 3], y0 + side) - np.maximum(boxes[:, 1], y0), 0.0, None)
    return iw * ih / ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))


def own_anchor_index(face_size: float, anchor_sizes: tuple[float, ...]) -> int:
    """Index of the anchor size nearest to ``face_size`` in ratio (|log(a / f)|).

    In ratio, not in pixels: the sizes grow geometrically (×√2), so this is the anchor whose scale
    is closest to the face's whatever its size.
    """
    return int(np.argmin(np.abs(np.log(np.asarray(anchor_sizes, dtype=np.float64) / face_size))))


def _anchor_sampling_crop(rng: np.random.Generator, boxes: np.ndarray, cfg: AugmentConfig) -> tuple[float, float, float]:
    x1, y1, x2, y2 = boxes[rng.integers(len(boxes))]
    face = math.sqrt((x2 - x1) * (y2 - y1))
    sizes = cfg.das_anchor_sizes
    own = own_anchor_index(face, sizes)
    highest = min(own + 1, len(sizes) - 1) if cfg.das_allow_larger else own
    anchor = sizes[int(rng.integers(0, highest + 1))]
    j = cfg.das_size_jitter
    target = rng.uniform(anchor / j, anchor * j) if j > 1.0 else anchor
    side = cfg.out_size * face / target  # source pixels that become out_size
    lo_x, hi_x = sorted((x2 - side, x1))  # the face lies inside [x0, x0 + side] (or covers it)
    lo_y, hi_y = sorted((y2 - side, y1))
    return rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y), side


def sample_train_transform(
    rng: np.random.Generator, image_hw: tuple[int, int], boxes: np.ndarray, cfg: AugmentConfig
) -> TrainTransform:
    """Draw one training transform for an image of size `image_hw` with boxes xyxy (float[N, 4])."""
    h, w = image_hw
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    usable = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    if len(usable) and rng.random() < cfg.data_anchor_sampling_prob:
        x0, y0, side = _anchor_sampling_crop(rng, usable, cfg)
    else:
        x0, y0, side = _zoom_out_crop(rng, h, w, usable, cfg)
    p = cfg.photometric_prob
    return TrainTransform(
        x0=float(x0), y0=float(y0), side=float(side), out_size=cfg.out_size,
        flip=bool(rng.random() < cfg.flip_prob),
        brightness=float(rng.uniform(-32, 32)) if rng.random() < p else 0.0,
        contrast=float(rng.uniform(0.5, 1.5)) if rng.random() < p else 1.0,
        saturation=float(rng.uniform(0.5, 1.5)) if rng.random() < p else 1.0,
        hue=float(rng.uniform(-18, 18)) if rng.random() < p else 0.0,
        min_box_size=cfg.min_box_size,
    )


def val_resize(image: np.ndarray, max_size: int) -> tuple[np.ndarray, float]:
    """Resize so the long side is at most `max_size` (never up); returns (image, resized/original)."""
    h, w = image.shape[:2]
    scale = min(1.0, max_size / max(h, w))
    if scale == 1.0:
        return image, 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale
