"""Flip / multi-scale test and box voting, with values worked by hand on a stand-in detector."""

import pytest
import torch
from torch import nn

from isrn_model.config import InferenceConfig
from isrn_model.tta import ISRNWithTTA, box_vote, with_tta


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
