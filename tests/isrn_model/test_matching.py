"""IoU matching with the ignore band, worked by hand."""

import torch

from isrn_model.matching import BACKGROUND, IGNORE, match_boxes


def test_ignore_band_step1_and_step2():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    anchors = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],   # IoU 1
        [0.0, 0.0, 10.0, 8.0],    # 80 / 100 = 0.8
        [0.0, 0.0, 10.0, 6.0],    # 60 / 100 = 0.6
        [0.0, 0.0, 10.0, 4.5],    # 45 / 100 = 0.45
        [0.0, 0.0, 10.0, 3.5],    # 35 / 100 = 0.35
        [0.0, 0.0, 10.0, 2.0],    # 20 / 100 = 0.2
    ])
    step1 = match_boxes(anchors, gt, 0.3, 0.7, allow_low_quality=False)
    assert step1.tolist() == [0, 0, IGNORE, IGNORE, IGNORE, BACKGROUND]
    step2 = match_boxes(anchors, gt, 0.4, 0.5, allow_low_quality=False)
    assert step2.tolist() == [0, 0, 0, IGNORE, BACKGROUND, BACKGROUND]


def test_each_face_gets_its_best_anchor():
    # face 1 (20..24 × 20..30) has best IoU 0.4 with anchor 1 (20..30 × 20..30: 40 / 100): below 0.7,
    # still positive under low-quality matching; anchor 2 (IoU 0) stays background.
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 24.0, 30.0]])
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [50.0, 50.0, 60.0, 60.0]])
    assert match_boxes(anchors, gt, 0.3, 0.7, allow_low_quality=False).tolist() == [0, IGNORE, BACKGROUND]
    assert match_boxes(anchors, gt, 0.3, 0.7, allow_low_quality=True).tolist() == [0, 1, BACKGROUND]


def test_no_faces_is_all_background_and_chunks_agree(monkeypatch):
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)
    assert match_boxes(anchors, torch.zeros(0, 4), 0.3, 0.7, True).tolist() == [BACKGROUND] * 3
    import isrn_model.matching as m

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g) * 100
    anchors = torch.cat([xy, xy + 12], dim=1)
    gxy = torch.rand(9, 2, generator=g) * 100
    gt = torch.cat([gxy, gxy + torch.rand(9, 2, generator=g) * 20 + 3], dim=1)
    whole = match_boxes(anchors, gt, 0.4, 0.5, True)
    monkeypatch.setattr(m, "IOU_CHUNK_ELEMENTS", 400)  # 2 faces per chunk
    assert torch.equal(match_boxes(anchors, gt, 0.4, 0.5, True), whole)


def test_batched_matching_equals_per_image_on_padded_faces(monkeypatch):
    import isrn_model.matching as m
    from isrn_model.matching import match_boxes_batched
    from tests.isrn_model import reference

    g = torch.Generator().manual_seed(1)
    xy = torch.rand(3, 150, 2, generator=g) * 100
    refs = torch.cat([xy, xy + 12], dim=2)  # per-image references, as step 2's refined boxes
    counts = [4, 0, 9]
    faces = []
    for n in counts:
        gxy = torch.rand(n, 2, generator=g) * 100
        faces.append(torch.cat([gxy, gxy + torch.rand(n, 2, generator=g) * 20 + 3], dim=1))
    gt = torch.tensor([0.0, 0.0, 50.0, 50.0]).repeat(3, 9, 1)  # padding overlaps references: `valid` hides it
    valid = torch.zeros(3, 9, dtype=torch.bool)
    for i, f in enumerate(faces):
        gt[i, :len(f)], valid[i, :len(f)] = f, True
    for low_quality in (True, False):
        expected = torch.stack([reference.match_boxes(refs[i], f, 0.4, 0.5, low_quality) for i, f in enumerate(faces)])
        assert torch.equal(match_boxes_batched(refs, gt, valid, 0.4, 0.5, low_quality), expected)
        monkeypatch.setattr(m, "IOU_CHUNK_ELEMENTS", 3 * 150 * 2)  # 2 faces a chunk
        assert torch.equal(match_boxes_batched(refs, gt, valid, 0.4, 0.5, low_quality), expected)
        monkeypatch.undo()
    shared = match_boxes_batched(refs[0], gt, valid, 0.3, 0.7, True)  # one set of anchors for the batch
    assert torch.equal(shared[2], reference.match_boxes(refs[0], faces[2], 0.3, 0.7, True))
