"""Letterbox, canvas, boxes back to image pixels, and `FaceDetector` around a program worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from data_shards.images import MEAN_BGR
from jobs.serving.inference import CANVAS_FILL_RGB, FaceDetector, boxes_to_original, canvas_shape, letterbox
from jobs.serving.inputs import DetectionInputError
from tests.jobs.serving.stand_ins import ContentProgram, photo


def test_letterbox_shrinks_the_long_side_and_never_enlarges() -> None:
    small, scale = letterbox(np.full((100, 200, 3), 7, np.uint8), 128)
    assert scale == 128 / 200 and small.shape == (64, 128, 3)  # 100 × 0.64 = 64 rows
    same, scale = letterbox(np.ones((50, 60, 3), np.uint8), 128)
    assert scale == 1.0 and same.shape == (50, 60, 3)


@pytest.mark.parametrize("height, width, canvas", [
    (300, 520, (384, 640)),   # ceil(300 / 128) = 3 → 384; ceil(520 / 128) = 5 → 640
    (100, 100, (256, 256)),   # never below 256: the exported program's smallest side
    (256, 257, (256, 384)),
    (1024, 768, (1024, 768)),
])
def test_the_canvas_rounds_each_side_up_to_128_and_at_least_256(height: int, width: int, canvas) -> None:
    assert canvas_shape(height, width) == canvas


def test_boxes_map_back_by_the_scale_and_clip() -> None:
    rows = np.array([[10, 20, 30, 40, 0.9],      # / 0.5 -> 20, 40, 60, 80
                     [60, 0, 130, 10, 0.7],      # x2 = 260 clipped to the 250 px width
                     [0, 0, 5, 5, 0.2],          # below the threshold
                     [130, 10, 140, 20, 0.8],    # x1 = 260: wholly in the padding right of the image
                     [0, 0, 0, 0, 0.0]], np.float32)  # an unused row of the program
    kept = boxes_to_original(rows, 0.5, height=100, width=250, score_threshold=0.5)
    np.testing.assert_allclose(kept, [[20, 40, 60, 80, 0.9], [120, 0, 250, 20, 0.7]], rtol=1e-6)
    # Threshold 0 keeps every detection in the image, never the unused zero rows.
    assert len(boxes_to_original(rows, 0.5, height=100, width=250, score_threshold=0.0)) == 3


def test_detect_maps_each_image_back_from_its_own_canvas() -> None:
    program = ContentProgram()
    detector = FaceDetector(program, max_size=400, score_threshold=0.1)
    images = [photo(500, 1000, 204), photo(120, 200, 102), photo(300, 200, 51)]
    found = detector.detect(images)
    # 500 × 1000 → × 0.4 → 200 × 400 on a 256 × 512 canvas; its content box [0, 0, 400, 200] / 0.4.
    # 120 × 200 and 300 × 200 are not enlarged: canvases 256 × 256 and 384 × 256.
    np.testing.assert_allclose(found[0], [[0, 0, 1000, 500, 0.8]], rtol=1e-6)
    np.testing.assert_allclose(found[1], [[0, 0, 200, 120, 0.4]], rtol=1e-6)
    np.testing.assert_allclose(found[2], [[0, 0, 200, 300, 0.2]], rtol=1e-6)
    assert sorted(program.batches) == [(1, 3, 256, 256), (1, 3, 256, 512), (1, 3, 384, 256)]
    # This call's parameters: a threshold that drops the third image's face; max_size 200 shrinks the first.
    found = detector.detect(images, max_size=200, score_threshold=0.3)
    assert len(found[2]) == 0
    np.testing.assert_allclose(found[0], [[0, 0, 1000, 500, 0.8]], rtol=1e-6)  # 100 × 200 → 256 × 256
    assert program.batches[-1] == (3, 3, 256, 256)  # 100 × 200, 120 × 200, 200 × 133: one canvas, one call


def test_the_canvas_is_trainings_fill_colour() -> None:
    assert CANVAS_FILL_RGB == tuple(reversed(MEAN_BGR))  # the val loader pads with MEAN_BGR (BGR images)
    program = ContentProgram()
    FaceDetector(program, max_size=400, score_threshold=0.0).detect([photo(100, 200, 10)])
    assert program.batches == [(1, 3, 256, 256)]


def test_images_of_one_canvas_run_in_batches_of_at_most_batch_size() -> None:
    program = ContentProgram()
    found = FaceDetector(program, max_size=400, score_threshold=0.0, batch_size=2).detect(
        [photo(100, 100 + i, 10 * i + 10) for i in range(5)])
    assert [shape[0] for shape in program.batches] == [2, 2, 1]
    assert [round(float(f[0, 4]) * 255) for f in found] == [10, 20, 30, 40, 50]  # each image its own row


def test_a_fixed_size_program_gets_a_square_canvas_and_only_its_own_max_size() -> None:
    program = ContentProgram()
    detector = FaceDetector(program, max_size=384, score_threshold=0.0, canvas_side=384, batch_size=1)
    np.testing.assert_allclose(detector.detect([photo(300, 200, 51)])[0][:, :4], [[0, 0, 200, 300]])
    assert program.batches == [(1, 3, 384, 384)]
    with pytest.raises(DetectionInputError, match="max_size 512: this model was exported for 384 × 384 inputs only"):
        detector.detect([photo(300, 200, 51)], max_size=512)


@pytest.mark.parametrize("params, message", [
    ({"max_size": 64}, r"max_size 64: expected a whole number of pixels from 128 to 4096"),
    ({"max_size": 5000}, r"max_size 5000: expected a whole number of pixels from 128 to 4096"),
    ({"max_size": 400.5}, r"max_size 400.5: expected a whole number"),
    ({"score_threshold": 1.5}, r"score_threshold 1.5: expected a number from 0 to 1"),
    ({"score_threshold": -0.1}, r"score_threshold -0.1: expected a number from 0 to 1"),
])
def test_parameters_out_of_range_are_named(params: dict, message: str) -> None:
    detector = FaceDetector(ContentProgram(), max_size=400, score_threshold=0.5)
    with pytest.raises(DetectionInputError, match=message):
        detector.detect([photo(100, 100, 10)], **params)
