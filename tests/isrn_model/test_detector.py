"""The ISRN module: input contract, errors naming the bad value, CPU smoke tests at tiny size."""

import copy
import time

import pytest
import torch

from isrn_model.anchors import anchors_for_feature_sizes
from isrn_model.boxes import box_iou
from isrn_model.builder import build_isrn
from isrn_model.config import LEVELS, InferenceConfig, ModelConfig
from isrn_model.host_syncs import count_host_syncs, require_explicit_device
from isrn_model.tta import ISRNWithTTA, with_tta

TINY = {"depth": 18, "base_width": 16, "fpn_channels": 32, "head_channels": 32}


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(min(before, 2))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_isrn(ModelConfig(**TINY))


def test_bad_images_are_named(tiny):
    tiny.eval()
    with pytest.raises(TypeError, match="torch.float32 or torch.uint8.*got dtype torch.float16"):
        tiny(torch.zeros(1, 3, 128, 128, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\], got \[1, 1, 128, 128\]"):
        tiny(torch.zeros(1, 1, 128, 128))
    with pytest.raises(ValueError, match=r"got \[3, 128, 128\]"):
        tiny(torch.zeros(3, 128, 128))


def test_bad_targets_are_named(tiny):
    tiny.train()
    images = torch.zeros(2, 3, 128, 128)
    good = {"boxes": torch.tensor([[1.0, 1.0, 20.0, 20.0]])}
    bad = {"boxes": torch.tensor([[1.0, 1.0, 20.0, 20.0], [5.0, 5.0, 30.0, 30.0], [40.0, 10.0, 40.0, 30.0]])}
    with pytest.raises(ValueError, match=r"target 1 box 2 is degenerate.*\[40.0, 10.0, 40.0, 30.0\]"):
        tiny(images, [good, bad])
    with pytest.raises(ValueError, match="list of 2 dicts"):
        tiny(images, [good])
    with pytest.raises(ValueError, match="target 0 'boxes' must have shape"):
        tiny(images, [{"boxes": torch.zeros(3)}, good])
    with pytest.raises(ValueError, match="targets are required"):
        tiny(images)


def test_forward_backward_finite_losses(tiny):
    tiny.train()
    images = torch.rand(2, 3, 128, 128) * 255
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 40.0, 48.0], [40.0, 30.0, 124.0, 120.0]])},
               {"boxes": torch.zeros(0, 4)}]  # an image without faces is fine
    losses = tiny(images, targets)
    assert sorted(losses) == ["loss_box_1", "loss_box_2", "loss_cls_1", "loss_cls_2"]
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    tiny.zero_grad()
    sum(losses.values()).backward()
    grads = [p.grad for p in tiny.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_eval_output_format_and_padding(tiny):
    tiny.eval()
    tiny.inference_config = InferenceConfig(score_threshold=0.0)
    with torch.no_grad():
        dets = tiny(torch.rand(2, 3, 100, 150) * 255)  # padded to 128 × 256 inside
    assert len(dets) == 2
    for det in dets:
        assert det["boxes"].shape[1] == 4 and det["scores"].shape == det["boxes"].shape[:1]
        assert 0 < len(det["scores"]) <= 750
        assert (det["boxes"][:, 2] <= 150).all() and (det["boxes"][:, 3] <= 100).all()  # clipped
        assert (det["scores"][:-1] >= det["scores"][1:]).all()
    tiny.inference_config = InferenceConfig()


def test_first_step_predicts_only_where_used(tiny):
    out = tiny.two_step_outputs(tiny.preprocess(torch.zeros(1, 3, 128, 128)))
    assert sorted(out.cls1) == [2, 3, 4] and sorted(out.box1) == [5, 6, 7]
    assert out.counts == [2 * 32 * 32, 2 * 16 * 16, 2 * 8 * 8, 2 * 4 * 4, 2 * 2 * 2, 2 * 1 * 1]


@pytest.mark.parametrize("levels", [{"str_levels": ()}, {"str_levels": (6, 7)}, {"stc_levels": (), "str_levels": (7,)}])
def test_every_parameter_gets_a_gradient_whatever_levels_have_a_first_step(levels):
    """DDP expects a gradient for every parameter: a level without a first step builds no first-step input."""
    torch.manual_seed(0)
    model = build_isrn(ModelConfig(**TINY, **levels)).train()
    images = torch.rand(2, 3, 128, 128) * 255
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 40.0, 48.0]])}, {"boxes": torch.tensor([[30.0, 20.0, 120.0, 125.0]])}]
    sum(model(images, targets).values()).backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []
    first = {2, 3, 4, 5, 6, 7} & ({*model.model_config.stc_levels} | {*model.model_config.str_levels})
    reduced = {int(key.split(".")[2]) + 2 for key in model.state_dict() if key.startswith("neck.reduce.")}
    assert reduced == first  # each kept reduction under its level's own index, as in the full model


@pytest.mark.parametrize("kwargs", [
    {"norm": "bn", "stem": "standard", "share_heads": False},
    {"norm": "frozen_bn"},
    {"depth": 50, "base_width": 8},
])
def test_variants_build_and_train(kwargs):
    model = build_isrn(ModelConfig(**{**TINY, **kwargs})).train()
    assert len(model.heads) == (2 if kwargs.get("share_heads") is False else 1)
    images = torch.rand(2, 3, 128, 128) * 255
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 40.0, 48.0]])}] * 2
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())


def test_flip_test_wraps_the_real_detector(tiny):
    tiny.eval()
    det = ISRNWithTTA(tiny, InferenceConfig(score_threshold=0.0, flip=True))(torch.rand(1, 3, 128, 128) * 255)[0]
    assert det["boxes"].shape[1] == 4 and len(det["boxes"]) == len(det["scores"])
    assert with_tta(tiny) is tiny  # the model's own config asks for no TTA


def _three_faces_image():
    # A uniform background with three bright "faces", each with a dark "mouth" bar: the smallest is
    # matched on P2/P3, the largest (72 × 80) by P5 anchors (so the STR path is trained too).
    faces = torch.tensor([[6.0, 8.0, 30.0, 38.0], [40.0, 6.0, 66.0, 38.0], [40.0, 44.0, 112.0, 124.0]])
    image = torch.full((1, 3, 128, 128), 90.0)
    for x1, y1, x2, y2 in faces.int().tolist():
        image[0, :, y1:y2, x1:x2] = torch.tensor([225.0, 180.0, 150.0])[:, None, None]
        mouth = y1 + 2 * (y2 - y1) // 3
        image[0, :, mouth:mouth + max(2, (y2 - y1) // 10), x1 + (x2 - x1) // 4:x2 - (x2 - x1) // 4] = 40.0
    return image, faces


@pytest.mark.slow
def test_overfits_one_image_with_three_faces():
    torch.manual_seed(0)
    model = build_isrn(ModelConfig(**TINY))
    image, faces = _three_faces_image()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    start = time.monotonic()
    found = None
    for step in range(1, 301):
        model.train()
        losses = model(image, [{"boxes": faces}])
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        if step % 10 == 0:
            model.eval()
            with torch.no_grad():
                det = model(image)[0]
            top = det["boxes"][det["scores"] >= 0.3]
            if len(top) and (box_iou(faces, top).max(dim=1).values >= 0.5).all():
                found = step
                break
    assert found is not None, f"not every face detected after 300 steps; last losses {losses}"
    assert time.monotonic() - start < 240


def test_uint8_images_are_normalised_exactly_as_their_float32_values(tiny):
    # The training loader sends uint8; the model's first operation converts them, with no float copy before.
    pixels = torch.randint(0, 256, (2, 3, 100, 150), dtype=torch.uint8)
    assert torch.equal(tiny.preprocess(pixels), tiny.preprocess(pixels.float()))
    assert tiny.preprocess(pixels).dtype == torch.float32
    with pytest.raises(TypeError, match="float32 or torch.uint8"):
        tiny.preprocess(pixels.double())


def _faces(counts, size=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    faces = []
    for n in counts:
        wh = torch.rand(n, 1, generator=g) * 60 + 4
        wh = torch.cat([wh, wh * 1.25], dim=1)
        xy = torch.rand(n, 2, generator=g) * (size - wh)
        faces.append({"boxes": torch.cat([xy, xy + wh], dim=1)})
    return faces


def test_a_training_step_makes_a_few_host_syncs_whatever_the_batch_and_faces():
    # forward + losses + backward: the target check is the one sync (whether any box is degenerate);
    # the losses of the whole batch are computed on fixed shapes. The starting code made 19 per image.
    # (A narrower model than TINY: the count does not depend on the width, the test's time does.)
    torch.manual_seed(0)
    model = build_isrn(ModelConfig(depth=18, base_width=8, fpn_channels=8, head_channels=8)).train()
    totals = []
    for batch in (4, 16):
        images = torch.randint(0, 256, (batch, 3, 128, 128), dtype=torch.uint8)
        targets = _faces([(0, 1, 40)[i % 3] for i in range(batch)], seed=batch)  # no face, one, many
        with count_host_syncs() as syncs, require_explicit_device():
            losses = model(images, targets)
            sum(losses.values()).backward()
        totals.append(syncs.total)
        assert syncs.total <= 8, syncs.by_op
    assert totals[0] == totals[1]


def test_channels_last_model_and_images_give_the_same_losses(tiny):
    tiny.train()
    images = torch.rand(2, 3, 128, 128) * 255
    targets = _faces([3, 0], seed=5)
    expected = tiny(images, targets)
    model = copy.deepcopy(tiny).to(memory_format=torch.channels_last)
    losses = model(images.contiguous(memory_format=torch.channels_last), targets)
    for name in expected:
        torch.testing.assert_close(losses[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_anchors_are_built_once_per_size_and_device(tiny):
    x = tiny.preprocess(torch.zeros(1, 3, 128, 256))
    first = tiny.two_step_outputs(x).anchors
    again = tiny.two_step_outputs(x).anchors
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(first, again))  # no rebuild, no copy
    sizes = [(128 >> lvl, 256 >> lvl) for lvl in range(2, 8)]
    assert anchors_for_feature_sizes(LEVELS, sizes, "cpu") is anchors_for_feature_sizes(LEVELS, sizes, "cpu")


def test_anchors_first_built_in_inference_mode_serve_training(tiny):
    # The cache is filled outside inference mode: an eval loop's first call must not leave an
    # inference tensor that a later training step cannot save for backward.
    with torch.inference_mode():
        tiny.eval()(torch.zeros(1, 3, 384, 128))
    tiny.train()
    sum(tiny(torch.zeros(1, 3, 384, 128), _faces([2], seed=1)).values()).backward()
    tiny.zero_grad()
