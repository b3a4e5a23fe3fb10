"""Batched targets and losses: equal to the per-image reference, padded faces worked by hand, no host sync."""

import pytest
import torch

import isrn_model.matching as matching
from isrn_model.anchors import NUM_ANCHORS, anchors_for_feature_sizes
from isrn_model.config import LEVELS, LossConfig
from isrn_model.host_syncs import count_host_syncs
from isrn_model.matching import IGNORE
from isrn_model.stc_str import TwoStepOutputs
from isrn_model.targets import PaddedBoxes, compute_losses
from tests.isrn_model import reference

SIZE = 128  # a 128 × 128 input: feature maps 32² … 1², 2730 anchors


def random_outputs(batch: int, stc_levels, str_levels, seed: int) -> TwoStepOutputs:
    """Head outputs as a detector makes them: logits around the prior (p = 0.01, logit −4.6) with a
    spread, so STC keeps some anchors and drops others, and small deltas."""
    g = torch.Generator().manual_seed(seed)
    sizes = [(SIZE >> lvl, SIZE >> lvl) for lvl in LEVELS]
    counts = [NUM_ANCHORS * h * w for h, w in sizes]
    anchors = anchors_for_feature_sizes(LEVELS, sizes).split(counts)

    def logits(n):
        return (torch.randn(batch, n, generator=g) * 2 - 4.6).requires_grad_()

    def deltas(n):
        return (torch.randn(batch, n, 4, generator=g) * 0.2).requires_grad_()

    return TwoStepOutputs(
        levels=LEVELS, anchors=list(anchors),
        cls1={lvl: logits(n) for lvl, n in zip(LEVELS, counts) if lvl in stc_levels},
        box1={lvl: deltas(n) for lvl, n in zip(LEVELS, counts) if lvl in str_levels},
        cls2=[logits(n) for n in counts], box2=[deltas(n) for n in counts],
    )


def random_faces(counts: list[int], seed: int) -> list[torch.Tensor]:
    """Faces 3 to 120 px wide (small ones on P2, large ones on the STR levels), 1.25 × as tall."""
    g = torch.Generator().manual_seed(1000 + seed)
    faces = []
    for n in counts:
        w = torch.rand(n, 1, generator=g) ** 2 * 117 + 3
        wh = torch.cat([w, w * 1.25], dim=1)
        xy = torch.rand(n, 2, generator=g) * (SIZE - wh).clamp(min=1)
        faces.append(torch.cat([xy, xy + wh], dim=1))
    return faces


def leaves(out: TwoStepOutputs) -> list[torch.Tensor]:
    return [*out.cls1.values(), *out.box1.values(), *out.cls2, *out.box2]


LEVEL_SPLITS = [((2, 3, 4), (5, 6, 7)), ((2, 4), (3, 7)), ((), ()), (LEVELS, LEVELS)]


@pytest.mark.parametrize("stc_levels, str_levels", LEVEL_SPLITS)
@pytest.mark.parametrize("low_quality", [True, False])
@pytest.mark.parametrize("filter_regression", [False, True])
def test_batched_losses_and_gradients_equal_the_per_image_reference(stc_levels, str_levels, low_quality,
                                                                    filter_regression):
    cfg = LossConfig(allow_low_quality_matches=low_quality, stc_filter_regression=filter_regression)
    seed = hash((stc_levels, str_levels, low_quality, filter_regression)) % 1000
    out = random_outputs(5, stc_levels, str_levels, seed)
    faces = random_faces([0, 1, 7, 40, 0], seed)  # no face, one, a few, many, none again

    expected = reference.compute_losses(out, faces, cfg, stc_threshold=0.99)
    expected_grads = torch.autograd.grad(sum(expected.values()), leaves(out), allow_unused=True)
    losses = compute_losses(out, faces, cfg, stc_threshold=0.99)
    grads = torch.autograd.grad(sum(losses.values()), leaves(out), allow_unused=True)

    assert losses.keys() == expected.keys()
    for name in losses:
        torch.testing.assert_close(losses[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)
    for got, want in zip(grads, expected_grads):
        want = torch.zeros_like(got) if want is None else want  # the reference leaves unused levels out
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-8)
    assert all(v.dtype == torch.float32 for v in losses.values())
    if str_levels == (5, 6, 7):
        assert expected["loss_box_1"] > 0  # the faces reach the STR levels: the comparison means something


def test_chunked_matching_gives_the_same_losses(monkeypatch):
    out = random_outputs(3, (2, 3, 4), (5, 6, 7), seed=7)
    faces = random_faces([12, 0, 30], seed=7)
    whole = compute_losses(out, faces, LossConfig(), stc_threshold=0.99)
    monkeypatch.setattr(matching, "IOU_CHUNK_ELEMENTS", 3 * 2730 * 4)  # 4 faces per chunk
    chunked = compute_losses(out, faces, LossConfig(), stc_threshold=0.99)
    for name in whole:
        assert torch.equal(whole[name], chunked[name]), name


def test_padded_boxes_by_hand():
    # image 0: two faces, image 1: none, image 2: one → G = 2; padding rows are the empty box, invalid
    gt = PaddedBoxes.from_list([torch.tensor([[0.0, 0, 10, 10], [20.0, 20, 30, 40]], dtype=torch.float64),
                                torch.zeros(0, 4), torch.tensor([[5.0, 5, 9, 9]])], torch.device("cpu"))
    assert gt.boxes.dtype == torch.float32 and gt.boxes.shape == (3, 2, 4)
    assert gt.valid.tolist() == [[True, True], [False, False], [True, False]]
    assert gt.boxes[1].tolist() == [[0.0] * 4] * 2 and gt.boxes[2, 1].tolist() == [0.0] * 4
    # labels −1 (background), 1 and −2 (ignored) pick face 0, face 1 and face 0 of their image
    matched = gt.matched(torch.tensor([[-1, 1, IGNORE]] * 3))
    assert matched[0].tolist() == [[0.0, 0, 10, 10], [20.0, 20, 30, 40], [0.0, 0, 10, 10]]
    assert PaddedBoxes.from_list([torch.zeros(0, 4)] * 2, torch.device("cpu")).boxes.shape == (2, 1, 4)


def test_losses_make_no_host_sync_whatever_the_batch_and_faces():
    for batch, faces in [(2, [0, 3]), (6, [0, 1, 50, 2, 0, 9])]:
        out = random_outputs(batch, (2, 3, 4), (5, 6, 7), seed=batch)
        gt = random_faces(faces, seed=batch)
        with count_host_syncs() as syncs:
            losses = compute_losses(out, gt, LossConfig(), stc_threshold=0.99)
            sum(losses.values()).backward()
        assert syncs.total == 0, syncs.by_op


@pytest.mark.parametrize("p", [1e-2, 1e-3, 1e-4])
def test_losses_under_bf16_autocast_equal_the_float32_losses(p):
    # Heads under bf16 autocast emit bf16; every logit here sits at face probability p (the prior
    # 0.01 at the start of training, lower later for easy negatives). The losses of those same bf16
    # values computed in float32 are the truth; under autocast they must stay within 1% of it. No
    # faces: every anchor is an easy negative, whose loss bf16 gets wrong (37% at p = 0.01, 0 below
    # p ≈ 0.002), and at the prior the bf16 STC filter dropped them all from the step-2 loss.
    out = random_outputs(2, (2, 3, 4), (5, 6, 7), seed=11)
    logit = torch.tensor(p / (1 - p)).log().item()
    for logits in [*out.cls1.values(), *out.cls2]:
        logits.data.fill_(logit)
    faces = random_faces([0, 0], seed=11)

    def bf16(x):
        return x.detach().bfloat16()

    amp_out = TwoStepOutputs(levels=out.levels, anchors=out.anchors,
                             cls1={k: bf16(v) for k, v in out.cls1.items()},
                             box1={k: bf16(v) for k, v in out.box1.items()},
                             cls2=[bf16(v) for v in out.cls2], box2=[bf16(v) for v in out.box2])
    exact_out = TwoStepOutputs(levels=out.levels, anchors=out.anchors,
                               cls1={k: v.float() for k, v in amp_out.cls1.items()},
                               box1={k: v.float() for k, v in amp_out.box1.items()},
                               cls2=[v.float() for v in amp_out.cls2], box2=[v.float() for v in amp_out.box2])
    exact = compute_losses(exact_out, faces, LossConfig(), stc_threshold=0.99)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = compute_losses(amp_out, faces, LossConfig(), stc_threshold=0.99)
    for name in exact:
        assert amp[name].item() == pytest.approx(exact[name].item(), rel=0.01), name
