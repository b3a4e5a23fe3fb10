"""Faces in decoded photos: letterbox, run the exported detector, map the boxes back, threshold.

    detector = FaceDetector(torch_program("isrn_face.pt2"), max_size=1024, score_threshold=0.05)
    faces = detector.detect([image_rgb, ...])   # per image float64 [K, 5]: x1, y1, x2, y2, score

``program`` is any callable from float32 [B, 3, H, W] raw RGB 0..255 (H and W multiples of 128, at
least 256) to [B, K, 5] rows (x1, y1, x2, y2, score) in canvas pixels, unused rows zero: the
``torch.export`` program that training logs (:func:`torch_program`), its ONNX twin
(:func:`onnx_program`), or a fixed-size export of older versions (``canvas_side``).

Each image is shrunk (never enlarged) so that its long side is at most ``max_size``, with the val
loader's own resize (``data_shards.augment.val_resize``, OpenCV INTER_AREA), placed at the top left
of a canvas of training's fill colour (``CANVAS_FILL_RGB``) whose sides are the next multiples of
128 (at least 256), and run together with the other images of the same canvas size. The canvas
depends on the image alone, so a face's box does not depend on what else is in the request; at the
spec's ``loader.val_max_size`` it is the canvas training evaluated on (one image per val batch,
``val_size_multiple`` 128). Boxes are divided by the scale and clipped to the image; rows below the
score threshold are dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from data_shards.images import MEAN_BGR
from jobs.serving.inputs import DetectionInputError

CANVAS_FILL_RGB = tuple(reversed(MEAN_BGR))
"""Colour of the canvas around a letterboxed image: the val loader's padding and training's zoom-out
fill (``MEAN_BGR`` in RGB, the ImageNet mean: about zero after the model's normalisation), so a served
model's boxes are the ones training evaluated."""
SIDE_MULTIPLE = 128
"""Canvas sides are multiples of the detector's largest stride (P7), as the exported program takes."""
MIN_SIDE = 256
"""Smallest canvas side the exported program takes (``isrn_model.export.MIN_SIDE``)."""
MAX_SIZE_RANGE = (128, 4096)
"""Accepted ``max_size``: below 128 px every face is a few pixels; the program takes sides up to 4096."""
BATCH_SIZE = 8
"""Images run at once: enough to fill the CPU's matrix kernels, little enough to bound the memory a
request of many large images takes."""

Program = Callable[[np.ndarray], np.ndarray]


def letterbox(image_rgb: np.ndarray, max_size: int) -> tuple[np.ndarray, float]:
    """uint8 [H, W, 3] → (uint8 [h, w, 3] with max(h, w) ≤ max_size, scale = h / H), never enlarged."""
    from data_shards.augment import val_resize

    return val_resize(image_rgb, max_size)


def canvas_shape(height: int, width: int) -> tuple[int, int]:
    """The canvas of a ``height`` × ``width`` letterboxed image: each side rounded up to a multiple of
    128, at least 256. 300 × 520 → 384 × 640; 100 × 100 → 256 × 256."""
    return tuple(max(MIN_SIDE, math.ceil(side / SIDE_MULTIPLE) * SIDE_MULTIPLE) for side in (height, width))


def boxes_to_original(rows: np.ndarray, scale: float, height: int, width: int,
                      score_threshold: float) -> np.ndarray:
    """float32 [K, 5] (x1, y1, x2, y2, score) in canvas pixels → float64 [k, 5] in the pixels of the
    ``height`` × ``width`` original: rows scoring at least ``score_threshold`` (and above 0: unused
    rows are zero), divided by ``scale``, clipped to the image, by descending score. A box wholly in
    the canvas's padding clips to nothing and is dropped, as the eager detector drops it."""
    kept = rows[(rows[:, 4] > 0) & (rows[:, 4] >= score_threshold)].astype(np.float64)
    kept[:, :4] /= scale
    kept[:, [0, 2]] = kept[:, [0, 2]].clip(0, width)
    kept[:, [1, 3]] = kept[:, [1, 3]].clip(0, height)
    kept = kept[(kept[:, 2] > kept[:, 0]) & (kept[:, 3] > kept[:, 1])]
    return kept[np.argsort(-kept[:, 4], kind="stable")]


class FaceDetector:
    """An exported ISRN program with its letterbox: ``detect(images)`` → boxes in each image's pixels.

    Args:
        program: see the module docstring.
        max_size: default longest side an image is shrunk to (the model's training evaluation size).
        score_threshold: default lowest score returned (the spec's ``inference.score_threshold``).
        canvas_side: a fixed square canvas for programs exported at one size (versions logged
            before the exported program took any size); ``max_size`` is then that side, always.
        batch_size: images per program call (1 for a program exported with a fixed batch size).
    """

    def __init__(self, program: Program, *, max_size: int, score_threshold: float, canvas_side: int | None = None,
                 batch_size: int = BATCH_SIZE) -> None:
        self.program = program
        self.canvas_side = canvas_side
        self.batch_size = batch_size
        self.max_size = self.check_max_size(max_size)
        self.score_threshold = self.check_score_threshold(score_threshold)

    def check_max_size(self, max_size: int) -> int:
        if self.canvas_side is not None and max_size != self.canvas_side:
            raise DetectionInputError(f"max_size {max_size}: this model was exported for {self.canvas_side} × "
                                      f"{self.canvas_side} inputs only; leave max_size out, or promote a "
                                      "version logged by the current `isrn train`, which takes any size")
        low, high = MAX_SIZE_RANGE
        if isinstance(max_size, bool) or not isinstance(max_size, (int, np.integer)) or not low <= max_size <= high:
            raise DetectionInputError(f"max_size {max_size!r}: expected a whole number of pixels from {low} to {high}")
        return int(max_size)

    @staticmethod
    def check_score_threshold(score_threshold: float) -> float:
        if not isinstance(score_threshold, (int, float, np.number)) or not 0.0 <= score_threshold <= 1.0:
            raise DetectionInputError(f"score_threshold {score_threshold!r}: expected a number from 0 to 1")
        return float(score_threshold)

    def detect(self, images_rgb: Sequence[np.ndarray], *, max_size: int | None = None,
               score_threshold: float | None = None) -> list[np.ndarray]:
        """Per image of ``images_rgb`` (uint8 [H, W, 3] RGB), float64 [K, 5] rows x1, y1, x2, y2, score
        in that image's pixels, by descending score. ``max_size``, ``score_threshold``: this call's,
        instead of the defaults."""
        max_size = self.max_size if max_size is None else self.check_max_size(max_size)
        threshold = self.score_threshold if score_threshold is None else self.check_score_threshold(score_threshold)
        letterboxed = [letterbox(image, max_size) for image in images_rgb]
        by_canvas: dict[tuple[int, int], list[int]] = {}
        for index, (small, _) in enumerate(letterboxed):
            by_canvas.setdefault(self._canvas(*small.shape[:2]), []).append(index)
        rows: list[np.ndarray | None] = [None] * len(letterboxed)
        for (height, width), indices in by_canvas.items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                batch = np.empty((len(chunk), height, width, 3), np.float32)
                batch[:] = CANVAS_FILL_RGB  # the val loader's padding, as training evaluated
                for slot, index in enumerate(chunk):
                    small = letterboxed[index][0]
                    batch[slot, : small.shape[0], : small.shape[1]] = small
                output = np.asarray(self.program(np.ascontiguousarray(batch.transpose(0, 3, 1, 2))))
                for slot, index in enumerate(chunk):
                    rows[index] = output[slot]
        return [boxes_to_original(found, scale, *image.shape[:2], threshold)
                for found, (_, scale), image in zip(rows, letterboxed, images_rgb)]

    def _canvas(self, height: int, width: int) -> tuple[int, int]:
        return (self.canvas_side, self.canvas_side) if self.canvas_side else canvas_shape(height, width)


def torch_program(path: str | Path) -> Program:
    """The ``torch.export`` program saved at ``path`` (``torch.export.save``) as a NumPy → NumPy callable."""
    import torch

    module = torch.export.load(str(path)).module()
    return module_program(module)


def module_program(module: Callable) -> Program:
    """A torch module (or loaded exported program) as a NumPy → NumPy callable, without autograd."""
    import torch

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(batch)).numpy()

    return run


def onnx_program(path: str | Path) -> Program:
    """The ONNX export at ``path`` run by onnxruntime on the CPU, as a NumPy → NumPy callable."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {"images": batch})[0]
