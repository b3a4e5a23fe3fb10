"""Augmentation worked by hand: one affine map for pixels and boxes, and the box rule.

Rule under test (data_shards.augment): a box is kept iff its centre lies inside the crop window;
kept boxes are clipped to the window; boxes under `min_box_size` output pixels are then dropped.
"""

import numpy as np
import pytest

from data_shards.augment import AugmentConfig, TrainTransform, photometric, sample_train_transform, val_resize

BOX = [[60.0, 10.0, 80.0, 30.0]]  # xyxy in a 200 (w) x 100 (h) source image


def test_crop_moves_box():
    # window x0=50, y0=0, side=100 -> out 100: scale 1, x' = x - 50
    t = TrainTransform(x0=50, y0=0, side=100, out_size=100)
    boxes, keep = t.apply_boxes(np.array(BOX))
    np.testing.assert_allclose(boxes, [[10, 10, 30, 30]])
    assert keep.tolist() == [True]


def test_crop_and_resize_moves_box():
    # side 50 -> out 100: scale 2; x' = (60 - 50) * 2 = 20, (80 - 50) * 2 = 60; y' = 10 * 2, 30 * 2
    t = TrainTransform(x0=50, y0=0, side=50, out_size=100)
    np.testing.assert_allclose(t.apply_boxes(np.array(BOX))[0], [[20, 20, 60, 60]])


def test_flip_mirrors_box():
    # crop as above, then x' -> 100 - x': [10, 30] -> [70, 90]
    t = TrainTransform(x0=50, y0=0, side=100, out_size=100, flip=True)
    np.testing.assert_allclose(t.apply_boxes(np.array(BOX))[0], [[70, 10, 90, 30]])


def test_box_cut_by_crop_is_clipped_or_dropped():
    t = TrainTransform(x0=50, y0=0, side=100, out_size=100, min_box_size=2)
    boxes = np.array([
        [40, 10, 70, 30],  # -> [-10, 10, 20, 30]: centre x 5 inside -> kept, clipped to [0, 10, 20, 30]
        [20, 10, 58, 30],  # -> [-30, 10, 8, 30]: centre x -11 outside -> dropped
        [48, 10, 52, 30],  # -> [-2, 10, 2, 30]: centre x 0 inside -> clipped [0, 10, 2, 30], width 2 kept
        [140, 90, 160, 120],  # -> [90, 90, 110, 120]: centre (100, 105) outside (window is [0, 100)) -> dropped
    ], dtype=np.float32)
    out, keep = t.apply_boxes(boxes)
    assert keep.tolist() == [True, False, True, False]
    np.testing.assert_allclose(out, [[0, 10, 20, 30], [0, 10, 2, 30]])
    # the same narrow box is dropped once min_box_size exceeds its clipped width of 2
    _, keep = TrainTransform(x0=50, y0=0, side=100, out_size=100, min_box_size=3).apply_boxes(boxes)
    assert keep.tolist() == [True, False, False, False]


def test_image_follows_the_same_map():
    image = np.zeros((100, 200, 3), np.uint8)
    image[20, 70] = 255  # pixel (x=70, y=20)
    t = TrainTransform(x0=50, y0=0, side=100, out_size=100, flip=True)
    out = t.apply_image(image)
    # x' = 100 - (70 - 50) = 80 in continuous coordinates; pixel centres: 70.5 -> 100 - 20.5 = 79.5 -> index 79
    ys, xs = np.nonzero(out[:, :, 0] == 255)
    assert (ys.tolist(), xs.tolist()) == ([20], [79])


def test_zoom_out_region_takes_the_fill_colour():
    image = np.full((10, 10, 3), 7, np.uint8)
    out = TrainTransform(x0=-10, y0=-10, side=40, out_size=40, fill=(1, 2, 3)).apply_image(image)
    assert out[0, 0].tolist() == [1, 2, 3] and out[15, 15].tolist() == [7, 7, 7]


def test_photometric_identity_and_saturation():
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(photometric(image, 0.0, 1.0, 1.0, 0.0), image)
    grey = photometric(image, 0.0, 1.0, 0.0, 0.0)  # saturation 0: every channel equal
    assert np.abs(grey.astype(int) - grey[:, :, :1]).max() <= 1


def test_sampling_is_seeded():
    cfg = AugmentConfig(out_size=64)
    draw = lambda seed: sample_train_transform(np.random.default_rng(seed), (100, 200), np.array(BOX), cfg)
    assert draw(3) == draw(3)


@pytest.mark.parametrize("seed", range(20))
def test_data_anchor_sampling_puts_the_face_at_an_anchor_scale(seed):
    # one face of sqrt-area 40 px: nearest anchor 32 (index 1), so the target anchor is 16, 32 or 64
    # and the face's output size is in [16 / 2, 64 * 2]; the face lies inside the window.
    cfg = AugmentConfig(out_size=128, data_anchor_sampling_prob=1.0)
    face = np.array([[100.0, 50.0, 140.0, 90.0]])
    t = sample_train_transform(np.random.default_rng(seed), (300, 400), face, cfg)
    assert 8.0 <= 40 * t.scale <= 128.0
    out, keep = t.apply_boxes(face)
    assert keep.tolist() == [True]


def test_val_resize_caps_long_side():
    image = np.zeros((300, 2000, 3), np.uint8)
    out, scale = val_resize(image, 1000)
    assert out.shape[:2] == (150, 1000) and scale == 0.5
    same, one = val_resize(image[:, :500], 1000)
    assert same.shape[:2] == (300, 500) and one == 1.0
