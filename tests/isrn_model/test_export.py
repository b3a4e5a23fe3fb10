"""Save/load round trip and torch.export at a fixed size, outputs equal to eager."""

import pytest
import torch

from isrn_model.anchors import anchors_for_feature_sizes
from isrn_model.builder import build_isrn
from isrn_model.config import LEVELS, InferenceConfig, ModelConfig
from isrn_model.export import ExportableISRN, export_program, load_model, save_model

TINY = ModelConfig(depth=18, base_width=16, fpn_channels=32, head_channels=32, share_heads=False)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    # A low threshold so the untrained model yields plenty of boxes (the prior is 0.01).
    return build_isrn(TINY, inference=InferenceConfig(score_threshold=0.005, keep_top_k=100)).eval()


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


def test_torch_export_matches_eager(model):
    x = torch.rand(1, 3, 256, 256) * 255
    program = export_program(model, 256, 256)
    with torch.no_grad():
        exported = program.module()(x)
        wrapper = ExportableISRN(model, 256, 256)(x)
        eager = model(x)[0]
    assert exported.shape == (1, 100, 5)
    torch.testing.assert_close(exported, wrapper)
    k = len(eager["scores"])
    assert k == 100  # enough candidates to fill keep_top_k
    torch.testing.assert_close(exported[0, :, :4], eager["boxes"])
    torch.testing.assert_close(exported[0, :, 4], eager["scores"])
    with pytest.raises(ValueError, match="256×256"):
        ExportableISRN(model, 256, 256)(torch.zeros(1, 3, 128, 128))


def test_export_leaves_no_fake_anchors_behind(model):
    # Anchors are cached per size for eager runs, but not while torch.export traces (a tensor made
    # there is a fake tensor): an eager run at an exported size gets real anchors.
    export_program(model, 384, 128)
    anchors = anchors_for_feature_sizes(LEVELS, [(384 >> lvl, 128 >> lvl) for lvl in LEVELS], "cpu")
    assert type(anchors) is torch.Tensor and anchors.shape == (2 * 4095, 4)  # 96·32 + 48·16 + … + 3·1 = 4095 locations
    with torch.no_grad():
        assert len(model(torch.rand(1, 3, 384, 128) * 255)) == 1
