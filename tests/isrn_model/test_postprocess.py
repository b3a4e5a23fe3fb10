"""Post-processing for evaluation: the same detections as the per-image reference, two syncs a batch, float32."""

import pytest
import torch

import isrn_model.nms as nms_mod
from isrn_model.config import InferenceConfig
from isrn_model.host_syncs import count_host_syncs, require_explicit_device
from isrn_model.postprocess import _compact, select_detections
from tests.isrn_model import reference

COUNTS = [2 * 32 * 64, 2 * 16 * 32, 2 * 8 * 16, 2 * 4 * 8, 2 * 2 * 4, 2 * 1 * 2]  # a 128 × 256 input
N = sum(COUNTS)


def dense(batch: int, seed: int, tied: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (a few percent above 0.05) and boxes of 4 to 60 px, some partly or wholly outside a
    100 × 200 image (they clip, or clip to nothing)."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(batch, N, generator=g) ** 8
    if tied:
        scores = (scores * 20).round() / 20  # steps of 0.05: ties everywhere
    xy = torch.rand(batch, N, 2, generator=g) * torch.tensor([260.0, 140.0]) - 20
    wh = torch.rand(batch, N, 2, generator=g) * 56 + 4
    return scores, torch.cat([xy, xy + wh], dim=2)


CONFIGS = [
    InferenceConfig(),                                        # the released code's values
    InferenceConfig(score_threshold=0.0, keep_top_k=40),     # every anchor a candidate, keep_top_k cut
    InferenceConfig(pre_nms_top_k=300, nms_threshold=0.3),    # the per-level cut on the first two levels
    InferenceConfig(score_threshold=0.2, keep_top_k=5, nms_threshold=0.6),
]


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("read_rows", [512, None])  # NMS's schedule on the CPU, on a GPU
def test_detections_equal_the_per_image_reference(cfg, read_rows, monkeypatch):
    monkeypatch.setattr(nms_mod, "HOST_READ_ROWS", read_rows)
    scores, boxes = dense(3, seed=cfg.keep_top_k + cfg.pre_nms_top_k)
    sizes = [(100, 200), (128, 256), (60, 250)]
    expected = reference.select_detections(scores, boxes, COUNTS, sizes, cfg)
    got = select_detections(scores, boxes, COUNTS, sizes, cfg)
    for e, d in zip(expected, got, strict=True):
        assert torch.equal(d["boxes"], e["boxes"]) and torch.equal(d["scores"], e["scores"])
    assert any(len(d["scores"]) > 1 for d in got)


def test_tied_scores_keep_the_reference_order():
    # With no per-level cut, tied candidates are ordered by anchor index in both implementations.
    scores, boxes = dense(2, seed=4, tied=True)
    cfg = InferenceConfig(score_threshold=0.1, keep_top_k=60)
    expected = reference.select_detections(scores, boxes, COUNTS, [(128, 256)] * 2, cfg)
    got = select_detections(scores, boxes, COUNTS, [(128, 256)] * 2, cfg)
    for e, d in zip(expected, got, strict=True):
        assert torch.equal(d["boxes"], e["boxes"]) and torch.equal(d["scores"], e["scores"])


@pytest.mark.parametrize("batch", [1, 4])
def test_two_host_syncs_for_the_whole_batch_on_a_gpus_schedule(batch, monkeypatch):
    # The starting code: per image, one per level (the threshold's nonzero) and more per NMS block
    # and round. (On the CPU, NMS reads its boxes in blocks, syncs being free there: a GPU's schedule.)
    monkeypatch.setattr(nms_mod, "HOST_READ_ROWS", None)
    scores, boxes = dense(batch, seed=batch)
    with count_host_syncs() as syncs, require_explicit_device():
        select_detections(scores, boxes, COUNTS, [(128, 256)] * batch, InferenceConfig(score_threshold=0.01))
    assert syncs.total == 2, syncs.by_op


def test_bf16_predictions_are_post_processed_in_float32():
    scores, boxes = dense(1, seed=9)
    det = select_detections(scores.bfloat16(), boxes.bfloat16(), COUNTS, [(128, 256)], InferenceConfig())[0]
    assert det["scores"].dtype == det["boxes"].dtype == torch.float32
    exact = select_detections(scores.bfloat16().float(), boxes.bfloat16().float(), COUNTS, [(128, 256)],
                              InferenceConfig())[0]
    assert torch.equal(det["boxes"], exact["boxes"])


def test_compact_by_hand():
    # True at 1, 2 and 5: ranks 0, 1, 2; the False entries all go to the spare slot 3, then dropped
    mask = torch.tensor([False, True, True, False, False, True])
    assert _compact(mask, 3).tolist() == [1, 2, 5]
    assert _compact(torch.zeros(4, dtype=torch.bool), 0).tolist() == []
