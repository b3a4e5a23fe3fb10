"""Box geometry and NMS, worked by hand."""

import pytest
import torch

import numpy as np

from isrn_model.boxes import (box_area, box_iou, clip_boxes, degenerate_boxes, greedy_scan, nms, nms_each,
                              nms_fixed_shape, overlap_bits)
from isrn_model.host_syncs import count_host_syncs, require_explicit_device
from tests.isrn_model import reference


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

    monkeypatch.setattr(boxes_mod, "NMS_PAIRS", 16 * 120)  # force several row blocks
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


def test_overlap_bits_by_hand():
    # sorted boxes A [0, 10], B [5, 15] (IoU(A, B) = 50 / 150 = 1/3), C [10, 20] (IoU(B, C) = 1/3,
    # IoU(A, C) = 0), D = A (IoU(A, D) = 1, IoU(B, D) = 1/3, IoU(C, D) = 0); all 10 px tall
    boxes = torch.tensor([[0.0, 0, 10, 10], [5.0, 0, 15, 10], [10.0, 0, 20, 10], [0.0, 0, 10, 10]])
    bits = np.unpackbits(overlap_bits(boxes, 0.3).numpy(), axis=1, bitorder="little")[:, :4]
    # only later boxes (j > i): A overlaps B and D; B overlaps C and D; C nothing later; D nothing later
    assert bits.tolist() == [[0, 1, 0, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    strict = np.unpackbits(overlap_bits(boxes, 1 / 3).numpy(), axis=1, bitorder="little")[:, :4]
    inclusive = np.unpackbits(overlap_bits(boxes, 1 / 3, inclusive=True).numpy(), axis=1, bitorder="little")[:, :4]
    assert strict.tolist()[0] == [0, 0, 0, 1] and inclusive.tolist()[0] == [0, 1, 0, 1]
    # greedy: keep A → drop B, D; C (B is gone) kept → [0, 2]; with limit 1 → [0]
    packed = overlap_bits(boxes, 0.3).numpy()
    assert greedy_scan(packed).tolist() == [0, 2] and greedy_scan(packed, 1).tolist() == [0]
    assert overlap_bits(boxes[:0], 0.3).shape == (0, 0)


def test_overlap_bits_row_blocks_agree(monkeypatch):
    import isrn_model.boxes as boxes_mod

    g = torch.Generator().manual_seed(3)
    xy = torch.rand(37, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + torch.rand(37, 2, generator=g) * 20 + 2], dim=1)
    whole = overlap_bits(boxes, 0.2)
    monkeypatch.setattr(boxes_mod, "NMS_PAIRS", 37 * 5)  # 5 rows a block: blocks start off byte boundaries
    assert torch.equal(overlap_bits(boxes, 0.2), whole)


def _cases(seed):
    """Random boxes in clusters (long suppression chains), scores with many ties."""
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 400, (1,), generator=g))
    centres = torch.rand(n, 2, generator=g) * 80
    wh = torch.rand(n, 2, generator=g) * 30 + 2
    boxes = torch.cat([centres - wh / 2, centres + wh / 2], dim=1)
    scores = torch.randint(0, 12, (n,), generator=g).float() / 12  # 12 levels: ties everywhere
    return boxes, scores


@pytest.mark.parametrize("seed", range(8))
def test_nms_equals_the_previous_implementation_ties_and_cuts_included(seed, monkeypatch):
    boxes, scores = _cases(seed)
    monkeypatch.setattr(reference, "NMS_BLOCK", 64)  # several blocks in the reference too
    for threshold in (0.3, 0.5):
        for max_keep in (None, 1, 7, 50):
            expected = reference.nms(boxes, scores, threshold, max_keep=max_keep)
            assert torch.equal(nms(boxes, scores, threshold, max_keep=max_keep), expected), (threshold, max_keep)


def test_nms_makes_one_host_sync_for_all_the_sets():
    sets = [_cases(seed) for seed in range(4)]
    with count_host_syncs() as syncs, require_explicit_device():
        kept = nms_each([b for b, _ in sets], [s for _, s in sets], 0.4, max_keep=20)
    assert syncs.total == 1, syncs.by_op  # the starting code: one per block and per NMS round
    for (b, s), k in zip(sets, kept):
        assert torch.equal(k, nms(b, s, 0.4, max_keep=20))
    boxes, scores = _cases(5)
    with count_host_syncs() as syncs:
        nms(boxes, scores, 0.4)
    assert syncs.total == 1, syncs.by_op
