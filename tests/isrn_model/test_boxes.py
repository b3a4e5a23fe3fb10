"""Box geometry and NMS, worked by hand."""

import pytest
import torch

from isrn_model.boxes import box_area, box_iou, clip_boxes, degenerate_boxes, nms, nms_fixed_shape


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


def _reference_nms(boxes, scores, thr):
    order = scores.argsort(descending=True).tolist()
    keep = []
    for i in order:
        if all(box_iou(boxes[i:i + 1], boxes[j:j + 1]).item() <= thr for j in keep):
            keep.append(i)
    return keep


def test_nms_chain_by_hand():
    # A (0.9) overlaps B (0.8) by 1/3 > 0.3 → B dropped; B overlaps C (0.7) but B is gone → C kept.
    boxes = torch.tensor([[0.0, 0, 10, 10], [5.0, 0, 15, 10], [10.0, 0, 20, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.3).tolist() == [0, 2]
    assert nms(boxes, scores, 0.3, max_keep=1).tolist() == [0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_matches_sequential_greedy_across_blocks(seed, monkeypatch):
    import isrn_model.boxes as boxes_mod

    monkeypatch.setattr(boxes_mod, "NMS_BLOCK", 16)  # force several blocks
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(120, 2, generator=g) * 60
    wh = torch.rand(120, 2, generator=g) * 20 + 4
    boxes = torch.cat([xy, xy + wh], dim=1)
    scores = torch.rand(120, generator=g)
    expected = _reference_nms(boxes, scores, 0.4)
    assert nms(boxes, scores, 0.4).tolist() == expected
    order = scores.argsort(descending=True)
    keep = nms_fixed_shape(boxes[order][None], scores[order][None], 0.4, iterations=120)[0]
    assert sorted(order[keep].tolist()) == sorted(expected)
