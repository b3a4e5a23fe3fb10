"""Augmentation worked by hand: one affine map for pixels and boxes, and the box rule.

Rule under test (data_shards.augment): a box is kept iff its centre lies inside the crop window;
kept boxes are clipped to the window; boxes under `min_box_size` output pixels are then dropped.
"""

import numpy as np
import pytest

from data_shards.augment import (
    AugmentConfig, TrainTransform, own_anchor_index, photometric, sample_train_transform, val_resize, visible_share,
)

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


# ---- the recipe of docs/model.md ("Training recipe"), worked by hand -------------------------------

NO_FACES = np.zeros((0, 4))
SIZES_AT_OR_BELOW_45 = [8.0, 11.313708, 16.0, 22.627416, 32.0, 45.254832]  # 2·4, 2√2·4, … 2√2·16


def test_das_maps_onto_the_detectors_own_anchor_sizes():
    # docs/model.md "Anchors": scales {2, 2√2} × stride on strides 4 … 128 → 8, 11.3, 16, … 256, 362 px
    from isrn_model.anchors import ANCHOR_SCALES, level_stride

    expected = sorted(s * level_stride(level) for level in range(2, 8) for s in ANCHOR_SCALES)
    assert list(AugmentConfig().das_anchor_sizes) == pytest.approx(expected)
    assert AugmentConfig().das_anchor_sizes[0] == 8.0 and AugmentConfig().das_anchor_sizes[-1] == pytest.approx(362.04, abs=0.01)


def test_own_anchor_is_the_nearest_in_ratio():
    sizes = AugmentConfig().das_anchor_sizes
    # f = 40: |ln(32 / 40)| = 0.223 > |ln(45.25 / 40)| = 0.123 → 45.25 (index 5)
    assert own_anchor_index(40.0, sizes) == 5
    # f = 13.5: |ln(11.31 / 13.5)| = 0.177 > |ln(16 / 13.5)| = 0.170 → 16 (index 2); nearest in pixels
    # would be 11.31 (2.19 px away vs 2.5)
    assert own_anchor_index(13.5, sizes) == 2
    assert own_anchor_index(3.0, sizes) == 0 and own_anchor_index(1000.0, sizes) == 11


def _das_face_sizes(cfg, seeds=range(60)):
    face = np.array([[100.0, 50.0, 140.0, 90.0]])  # 40 × 40: sqrt-area 40, own anchor 45.25
    out = []
    for seed in seeds:
        t = sample_train_transform(np.random.default_rng(seed), (300, 400), face, cfg)
        boxes, keep = t.apply_boxes(face)
        assert keep.tolist() == [True]  # the window holds the face
        out.append(40.0 * t.scale)
    return np.array(out)


def test_das_lands_the_face_exactly_on_an_anchor_size_at_or_below_its_own():
    sizes = _das_face_sizes(AugmentConfig(out_size=128, data_anchor_sampling_prob=1.0))
    # every sample: the face is one of the six sizes ≤ 45.25, exactly (side = 128 · 40 / a)
    nearest = np.array(SIZES_AT_OR_BELOW_45)[np.abs(sizes[:, None] - np.array(SIZES_AT_OR_BELOW_45)).argmin(1)]
    np.testing.assert_allclose(sizes, nearest, rtol=1e-9)
    assert set(np.round(nearest, 2)) == set(np.round(SIZES_AT_OR_BELOW_45, 2))  # all six are drawn


def test_das_options_marked_ours():
    larger = _das_face_sizes(AugmentConfig(out_size=128, data_anchor_sampling_prob=1.0, das_allow_larger=True))
    assert larger.max() == pytest.approx(64.0)  # PyramidBox's rule: one size above (64) too
    jitter = _das_face_sizes(AugmentConfig(out_size=128, data_anchor_sampling_prob=1.0, das_size_jitter=2.0))
    assert 8.0 / 2 <= jitter.min() and jitter.max() <= 45.254832 * 2  # U[a / 2, 2a], a ≤ 45.25
    assert not np.isin(np.round(jitter, 6), np.round(SIZES_AT_OR_BELOW_45, 6)).all()


def _crop_sides(cfg, seeds=range(200), hw=(100, 200)):
    return np.array([sample_train_transform(np.random.default_rng(s), hw, NO_FACES, cfg).side for s in seeds])


def test_square_crop_is_the_short_side_or_a_fraction_of_it():
    no_zoom = {"zoom_out_prob": 0.0, "data_anchor_sampling_prob": 0.0}
    # image 100 × 200 (h × w): short side 100
    assert (_crop_sides(AugmentConfig(crop_full_side_prob=1.0, **no_zoom)) == 100.0).all()
    part = _crop_sides(AugmentConfig(crop_full_side_prob=0.0, **no_zoom))
    assert (part >= 50.0).all() and (part < 100.0).all()  # U[0.5, 1] × 100
    mixed = _crop_sides(AugmentConfig(**no_zoom))  # default: either patch with probability 0.5
    assert 0.35 < (mixed == 100.0).mean() < 0.65 and (mixed >= 50.0).all()


def test_zoom_out_expands_every_image_by_one_to_four():
    cfg = AugmentConfig(data_anchor_sampling_prob=0.0, crop_full_side_prob=1.0)
    assert cfg.zoom_out_prob == 1.0  # the recipe lists zoom-out ×[1, 4] with no probability: always
    sides = _crop_sides(cfg)  # side = ratio × short side, ratio ~ U[1, 4]
    assert (sides >= 100.0).all() and (sides <= 400.0).all() and np.median(sides) > 200.0


def test_visible_share_of_a_box_in_a_window():
    boxes = np.array(BOX)  # 20 × 20 px, area 400
    assert visible_share(boxes, (0.0, 0.0, 100.0))[0] == 1.0
    assert visible_share(boxes, (70.0, 0.0, 50.0))[0] == 0.5  # x 70–80 of 60–80, y all: 10 × 20 / 400
    assert visible_share(boxes, (90.0, 0.0, 10.0))[0] == 0.0


def test_crops_redrawn_while_they_cut_a_kept_face():
    # A 60-px face in a 100 × 200 image, crops of 50–100 px without zoom-out: the centre rule alone
    # keeps it cut half the time; with crop_min_visible 0.9 a kept face is nearly always 90 % inside.
    face = np.array([[30.0, 20.0, 90.0, 80.0]])
    base = {"zoom_out_prob": 0.0, "data_anchor_sampling_prob": 0.0}

    def cut_shares(cfg):
        shares = []
        for s in range(300):
            t = sample_train_transform(np.random.default_rng(s), (100, 200), face, cfg)
            if t.apply_boxes(face)[1][0]:
                shares.append(visible_share(face, (t.x0, t.y0, t.side))[0])
        return np.array(shares)

    centre_rule = cut_shares(AugmentConfig(**base))
    whole = cut_shares(AugmentConfig(crop_min_visible=0.9, **base))
    assert (centre_rule < 0.9).mean() > 0.3
    assert (whole < 0.9).mean() < 0.1  # the rest: no attempt of 10 qualified, the least cutting one is used


def test_val_resize_caps_long_side():
    image = np.zeros((300, 2000, 3), np.uint8)
    out, scale = val_resize(image, 1000)
    assert out.shape[:2] == (150, 1000) and scale == 0.5
    same, one = val_resize(image[:, :500], 1000)
    assert same.shape[:2] == (300, 500) and one == 1.0
