"""Flip / multi-scale test and box voting, with values worked by hand on a stand-in detector."""

import pytest
import torch
from torch import nn

from isrn_model.builder import build_isrn
from isrn_model.config import InferenceConfig, ModelConfig
from isrn_model.host_syncs import count_host_syncs, require_explicit_device
from isrn_model.tta import ISRNWithTTA, box_vote, with_tta
from tests.isrn_model import reference


def test_box_vote_by_hand():
    dets = torch.tensor([
        [0.0, 0.0, 10.0, 10.0, 0.9],   # A
        [1.0, 0.0, 11.0, 10.0, 0.6],   # B: IoU with A = 90 / 110 = 0.82
        [50.0, 50.0, 60.0, 60.0, 0.8],  # C: alone → a group of one, dropped (as the released code)
        [2.0, 0.0, 12.0, 10.0, 0.3],   # D: IoU with A = 80 / 120 = 0.67
    ])
    voted = box_vote(dets, iou_threshold=0.5, keep_top_k=750)
    # group {A, B, D}, weights 0.9, 0.6, 0.3 (sum 1.8): x1 = (0 + 0.6 + 0.6) / 1.8 = 0.6667,
    # x2 = (9 + 6.6 + 3.6) / 1.8 = 10.6667; y 0 and 10; score the group's highest, 0.9
    assert voted.tolist() == [pytest.approx([1.2 / 1.8, 0.0, 19.2 / 1.8, 10.0, 0.9], rel=1e-6)]
    assert box_vote(dets[2:3], 0.5, 750).shape == (0, 5)


class BlobDetector(nn.Module):
    """Finds the bright blob of a test image, 2 px to the right of where it is; scores 0.9, then 0.6, …"""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[tuple[int, int]] = []
        self.scores = iter([0.9, 0.6, 0.5, 0.4, 0.3])

    def forward(self, images, image_sizes=None):
        self.sizes.append(tuple(images.shape[-2:]))
        ys, xs = torch.nonzero(images[0, 0] > 128, as_tuple=True)
        box = torch.tensor([[xs.min() + 2.0, ys.min(), xs.max() + 3.0, ys.max() + 1.0]])
        return [{"boxes": box, "scores": torch.tensor([next(self.scores)])}]


def _image():
    image = torch.zeros(1, 3, 80, 100)  # h 80, w 100; blob x 10–30, y 20–60
    image[:, :, 20:60, 10:30] = 255.0
    return image


def test_flip_test_maps_the_flipped_run_back_and_votes():
    detector = BlobDetector()
    det = ISRNWithTTA(detector, InferenceConfig(flip=True))(_image())[0]
    assert detector.sizes == [(80, 100), (80, 100)]
    # plain run: [12, 20, 32, 60] at 0.9. Flipped input: blob at x 70–90 → [72, 20, 92, 60] at 0.6,
    # back in the original: x1' = 100 − 92 = 8, x2' = 100 − 72 = 28 → [8, 20, 28, 60].
    # IoU = 16·40 / (800 + 800 − 640) = 0.667 ≥ 0.5: one group; x1 = (12·0.9 + 8·0.6) / 1.5 = 10.4,
    # x2 = (32·0.9 + 28·0.6) / 1.5 = 30.4
    assert det["boxes"].tolist() == [pytest.approx([10.4, 20.0, 30.4, 60.0], rel=1e-6)]
    assert det["scores"].tolist() == pytest.approx([0.9])


def test_multi_scale_runs_the_released_scales():
    # 80 × 100 = 8,000 px, budget 200² = 40,000: ratio 5 → ×1, its flip, ×0.5, ×1.5^t for
    # t = 1 … ⌊log_2.25 5⌋ = 1 (1.985 → 1), and ×√5 = 2.236 (179 × 224)
    detector = BlobDetector()
    ISRNWithTTA(detector, InferenceConfig(flip=True, multi_scale=True, max_test_size=200))(_image())
    assert detector.sizes == [(80, 100), (80, 100), (40, 50), (120, 150), (179, 224)]


def test_without_tta_the_wrapper_is_the_detector():
    detector = BlobDetector()
    assert ISRNWithTTA(detector, InferenceConfig())(_image())[0]["scores"].tolist() == pytest.approx([0.9])
    assert detector.sizes == [(80, 100)]
    assert with_tta(detector, InferenceConfig()) is detector
    assert isinstance(with_tta(detector, InferenceConfig(flip=True)), ISRNWithTTA)


def _detections(seed: int, n: int) -> torch.Tensor:
    """Boxes in a few clusters (as several runs of a detector give), scores in (0.05, 1]."""
    g = torch.Generator().manual_seed(seed)
    centres = (torch.rand(max(1, n // 6), 2, generator=g) * 300)[torch.randint(0, max(1, n // 6), (n,), generator=g)]
    centres = centres + torch.randn(n, 2, generator=g) * 4
    wh = torch.rand(n, 2, generator=g) * 30 + 10
    scores = torch.rand(n, 1, generator=g) * 0.95 + 0.05
    return torch.cat([centres - wh / 2, centres + wh / 2, scores], dim=1)


@pytest.mark.parametrize("seed", range(6))
def test_box_vote_equals_the_previous_implementation(seed):
    dets = _detections(seed, n=[1, 7, 60, 200, 400, 333][seed])
    for threshold, keep_top_k in [(0.5, 750), (0.3, 750), (0.5, 4)]:
        expected = reference.box_vote(dets, threshold, keep_top_k)
        voted = box_vote(dets, threshold, keep_top_k)
        assert voted.shape == expected.shape
        torch.testing.assert_close(voted, expected, rtol=1e-6, atol=1e-4)  # sums in another order


def test_box_vote_makes_one_host_sync_not_one_per_box():
    dets = _detections(0, n=300)
    with count_host_syncs() as syncs, require_explicit_device():
        voted = box_vote(dets, 0.5, 750)
    assert len(voted) > 10
    assert syncs.total == 1, syncs.by_op


def test_tta_of_the_real_detector_names_the_device_of_every_tensor():
    # On a GPU a tensor made without device= sits on the CPU and meets the detections on the GPU:
    # flip and multi-scale test crashed there. 128² with a 160² budget: ×1, flip, ×0.5 and ×1.25.
    torch.manual_seed(0)
    model = build_isrn(ModelConfig(depth=18, base_width=8, fpn_channels=8, head_channels=8),
                       inference=InferenceConfig(score_threshold=0.0, keep_top_k=50)).eval()
    image = torch.rand(1, 3, 128, 128) * 255
    for cfg in (InferenceConfig(score_threshold=0.0, flip=True),
                InferenceConfig(score_threshold=0.0, flip=True, multi_scale=True, max_test_size=160)):
        with require_explicit_device():
            det = ISRNWithTTA(model, cfg)(image)[0]
        assert det["boxes"].shape[1] == 4 and len(det["boxes"]) == len(det["scores"]) > 0
