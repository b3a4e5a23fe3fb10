"""Anchor layout checked against values worked by hand from the SRN code's rules."""

import pytest

from isrn_model.anchors import anchors_for_image, cell_anchors, grid_anchors


def test_p2_cell_by_hand():
    # stride 4: w0 = round(√(16/1.25)) = round(3.58) = 4, h0 = round(4 · 1.25) = 5
    # scale 2 → 8 × 10; centre (4 − 1)/2 = 1.5 → [1.5 − 3.5, 1.5 − 4.5, 1.5 + 3.5, 1.5 + 4.5]
    # scale 2.828427 → 11.31 × 14.14 → half-extents (11.31 − 1)/2 = 5.157, (14.14 − 1)/2 = 6.571
    a = cell_anchors(4)
    assert a[0].tolist() == pytest.approx([-2.0, -3.0, 5.0, 6.0])
    assert a[1].tolist() == pytest.approx([1.5 - 5.156854, 1.5 - 6.571068, 1.5 + 5.156854, 1.5 + 6.571068], abs=1e-5)


def test_p7_nominal_sizes():
    # stride 128: w0 = round(√(16384/1.25)) = round(114.5) = 114, h0 = round(142.5) = 142 (half to even)
    # inclusive sizes x2 − x1 + 1: 228 × 284 and 322.4 × 401.6
    a = cell_anchors(128)
    sizes = (a[:, 2:] - a[:, :2] + 1).tolist()
    assert sizes[0] == pytest.approx([228.0, 284.0])
    assert sizes[1] == pytest.approx([114 * 2.828427, 142 * 2.828427])


def test_grid_order_and_centres():
    # 2 × 3 grid at stride 8, order (y, x, anchor): index (y·3 + x)·2 + a
    g = grid_anchors(2, 3, 8)
    assert g.shape == (12, 4)
    centres = (g[:, :2] + g[:, 2:]) / 2
    # centre = (8 − 1)/2 + k·8 = 3.5 + 8k
    assert centres[(1 * 3 + 2) * 2 + 1].tolist() == pytest.approx([3.5 + 16, 3.5 + 8])
    assert centres[(0 * 3 + 1) * 2 + 0].tolist() == pytest.approx([3.5 + 8, 3.5])


def test_count_at_1024():
    # 2 · (256² + 128² + 64² + 32² + 16² + 8²) = 2 · 87,360
    assert anchors_for_image(1024, 1024).shape == (174_720, 4)


def test_size_must_be_multiple_of_128():
    with pytest.raises(ValueError, match="multiple of the largest stride 128"):
        anchors_for_image(100, 128)
