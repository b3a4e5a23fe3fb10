"""Save/load round trip; one torch.export program for every batch and image size, equal to eager; its
ONNX file gives the same detections under onnxruntime."""

import numpy as np
import pytest
import torch

from isrn_model.anchors import anchors_for_feature_sizes
from isrn_model.builder import build_isrn
from isrn_model.config import LEVELS, InferenceConfig, ModelConfig
from isrn_model.export import ExportableISRN, export_onnx, export_program, load_model, save_model, traced_grid_anchors

TINY = ModelConfig(depth=18, base_width=16, fpn_channels=32, head_channels=32, share_heads=False)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    # A low threshold so the untrained model yields plenty of boxes (the prior is 0.01).
    model = build_isrn(TINY, inference=InferenceConfig(score_threshold=0.005, keep_top_k=100)).eval()
    with torch.no_grad():
        # Untrained, every score sits within 1e-3 of the prior and hundreds tie to 1e-7, where float
        # differences between runtimes reorder them. Scaled, the logits spread the scores over (0, 1).
        for head in model.heads:
            head.cls_pred.weight.mul_(50.0)
    return model


@pytest.fixture(scope="module")
def program(model):
    return export_program(model)  # ~30 s of CPU for this tiny model


def photos(batch: int, height: int, width: int) -> torch.Tensor:
    """Smooth random images (raw RGB 0..255): blobs and edges, rather than pixel noise."""
    generator = torch.Generator().manual_seed(height * 7 + width + batch)
    coarse = torch.rand(batch, 3, height // 16, width // 16, generator=generator) * 255
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)


def test_save_load_round_trip(model, tmp_path):
    path = tmp_path / "isrn.pt"
    save_model(model, path)
    loaded = load_model(path)
    assert loaded.model_config == TINY and loaded.inference_config == model.inference_config
    x = torch.rand(1, 3, 128, 128) * 255
    with torch.no_grad():
        a, b = model(x)[0], loaded(x)[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model(tmp_path / "missing.pt")


@pytest.mark.parametrize("stride, height, width", [(4, 96, 64), (32, 12, 8), (128, 3, 2)])
def test_traced_anchors_are_the_cached_anchors(stride, height, width):
    level = stride.bit_length() - 1
    assert torch.equal(traced_grid_anchors(height, width, stride), anchors_for_feature_sizes((level,), [(height, width)]))


@pytest.mark.slow
def test_one_exported_program_matches_eager_at_every_size(model, program):
    for batch, height, width in [(2, 256, 384), (1, 384, 256)]:
        x = photos(batch, height, width)
        with torch.no_grad():
            exported = program.module()(x)
            wrapper = ExportableISRN(model)(x)
            eager = model(x)
        assert exported.shape == (batch, 100, 5)
        torch.testing.assert_close(exported, wrapper)
        for i in range(batch):
            assert len(eager[i]["scores"]) == 100  # enough candidates to fill keep_top_k
            torch.testing.assert_close(exported[i, :, :4], eager[i]["boxes"])
            torch.testing.assert_close(exported[i, :, 4], eager[i]["scores"])


@pytest.mark.slow
def test_the_program_checks_its_input_size(program):
    # torch.export's own checks, e.g. "Guard failed: images.size()[2] >= 256"
    for height in (448, 128):  # not a multiple of 128; below MIN_SIDE
        with pytest.raises(Exception, match=r"images.size\(\)\[2\]|height_blocks"):
            program.module()(torch.zeros(1, 3, height, 256))


@pytest.mark.slow
def test_the_onnx_file_detects_the_same_faces(program, tmp_path):
    import onnxruntime

    path = export_onnx(program, tmp_path / "isrn_face.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["detections"]
    for batch, height, width in [(2, 256, 384), (1, 512, 256)]:
        x = photos(batch, height, width)
        with torch.no_grad():
            expected = program.module()(x).numpy()
        got = session.run(None, {"images": x.numpy()})[0]
        assert got.shape == expected.shape == (batch, 100, 5)
        assert (expected[..., 4] > 0).sum() > 50  # a real comparison: many detections
        np.testing.assert_allclose(got, expected, atol=1e-3, rtol=1e-4)


@pytest.mark.slow
def test_export_leaves_no_fake_anchors_behind(model, program):
    # Anchors are cached per size for eager runs, but not while torch.export traces (a tensor made
    # there is a fake tensor): an eager run at the exported example's size (256 × 384) gets real ones.
    anchors = anchors_for_feature_sizes(LEVELS, [(256 >> lvl, 384 >> lvl) for lvl in LEVELS], "cpu")
    assert type(anchors) is torch.Tensor and anchors.shape == (2 * 8190, 4)  # 64·96 + 32·48 + … + 2·3 = 8190 locations
    with torch.no_grad():
        assert len(model(torch.rand(1, 3, 256, 384) * 255)) == 1
