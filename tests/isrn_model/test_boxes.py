"""Box geometry, worked by hand."""

import pytest
import torch

from isrn_model.boxes import box_area, box_iou, clip_boxes, degenerate_boxes


def test_area_and_iou_by_hand():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0]])
    assert box_area(b).tolist() == [100.0, 100.0, 100.0]
    # overlap 5 × 10 = 50; union 100 + 100 − 50 = 150 → 1/3; disjoint → 0; identical → 1
    assert box_iou(a, b)[0].tolist() == pytest.approx([1 / 3, 0.0, 1.0])


def test_iou_of_zero_area_pair_is_zero_not_nan():
    z = torch.tensor([[3.0, 3.0, 3.0, 3.0]])
    assert box_iou(z, z).item() == 0.0


def test_clip_and_degenerate():
    boxes = torch.tensor([[-5.0, -2.0, 50.0, 8.0]])
    assert clip_boxes(boxes, height=6, width=40).tolist() == [[0.0, 0.0, 40.0, 6.0]]
    bad = torch.tensor([[0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 2.0, 5.0], [0.0, 3.0, 4.0, 1.0], [0.0, 0.0, float("nan"), 1.0]])
    assert degenerate_boxes(bad).tolist() == [False, True, True, True]
