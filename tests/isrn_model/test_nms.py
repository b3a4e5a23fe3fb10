"""Greedy NMS worked by hand, equal to the previous implementation, with one host sync on a GPU's schedule."""

import numpy as np
import pytest
import torch

import isrn_model.nms as nms_mod
from isrn_model.boxes import box_iou
from isrn_model.host_syncs import count_host_syncs, require_explicit_device
from isrn_model.nms import greedy_scan, nms, nms_each, nms_fixed_shape, overlap_bits
from tests.isrn_model import reference


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
    monkeypatch.setattr(nms_mod, "NMS_PAIRS", 16 * 120)  # force several row blocks
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
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(37, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + torch.rand(37, 2, generator=g) * 20 + 2], dim=1)
    whole = overlap_bits(boxes, 0.2)
    monkeypatch.setattr(nms_mod, "NMS_PAIRS", 37 * 5)  # 5 rows a block: blocks start off byte boundaries
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
@pytest.mark.parametrize("read_rows", [None, 512, 16])  # a GPU's schedule (all at once), the CPU's, many reads
def test_nms_equals_the_previous_implementation_ties_and_cuts_included(seed, read_rows, monkeypatch):
    boxes, scores = _cases(seed)
    monkeypatch.setattr(reference, "NMS_BLOCK", 64)  # several blocks in the reference too
    monkeypatch.setattr(nms_mod, "HOST_READ_ROWS", read_rows)
    for threshold in (0.3, 0.5):
        for max_keep in (None, 1, 7, 50):
            expected = reference.nms(boxes, scores, threshold, max_keep=max_keep)
            assert torch.equal(nms(boxes, scores, threshold, max_keep=max_keep), expected), (threshold, max_keep)


def test_nms_on_a_gpus_schedule_makes_one_host_sync_for_all_the_sets(monkeypatch):
    monkeypatch.setattr(nms_mod, "HOST_READ_ROWS", None)  # what any device other than the CPU does
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


def test_nms_on_the_cpu_takes_blocks_and_stops_at_max_keep(monkeypatch):
    # 40 disjoint boxes (all kept), 16 a block: 3 blocks for all, 1 for the first 10 or 16, 2 for 17
    monkeypatch.setattr(nms_mod, "HOST_READ_ROWS", 16)
    blocks = []
    monkeypatch.setattr(nms_mod, "overlap_bits", lambda b, t, **kw: blocks.append(len(b)) or overlap_bits(b, t, **kw))
    x = torch.arange(40.0)[:, None] * 20
    boxes = torch.cat([x, torch.zeros(40, 1), x + 10, torch.full((40, 1), 10.0)], dim=1)
    scores = torch.linspace(1.0, 0.1, 40)
    for max_keep, expected_blocks in ((None, [16, 16, 8]), (10, [16]), (16, [16]), (17, [16, 16])):
        blocks.clear()
        kept = nms(boxes, scores, 0.5, max_keep=max_keep)
        assert kept.tolist() == list(range(40 if max_keep is None else max_keep))
        assert blocks == expected_blocks, max_keep
