"""Loading another model's weights by name: what is loaded, skipped and left new; shape mismatches refused."""

import pytest
import torch

from isrn_model.builder import build_isrn
from isrn_model.config import ModelConfig
from isrn_model.weights import load_by_name, state_dict_of

TINY = {"depth": 18, "base_width": 16, "fpn_channels": 32, "head_channels": 32}


def _model(**kwargs):
    return build_isrn(ModelConfig(**{**TINY, **kwargs}))


def test_same_config_loads_every_tensor():
    torch.manual_seed(0)
    source, target = _model(), _model()
    report = load_by_name(target, source.state_dict(), source="run-a")
    assert report.skipped == () and report.new == ()
    assert set(report.loaded) == set(source.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
    assert report.summary() == f"run-a: {len(report.loaded)} tensors loaded, 0 skipped (not in the model), 0 newly initialised"


def test_a_second_head_is_new_and_a_missing_one_skipped():
    shared, separate = _model(share_heads=True), _model(share_heads=False)
    report = load_by_name(separate, shared.state_dict(), source="shared")
    assert report.new and all(name.startswith("heads.1.") for name in report.new)  # step-2 head: fresh init
    assert report.skipped == ()
    back = load_by_name(_model(share_heads=True), separate.state_dict(), source="separate")
    assert back.skipped == report.new and back.new == ()
    table = report.table()
    assert "| `heads.1.cls_pred.bias` | newly initialised |" in table and "| `heads.0.cls_pred.bias` | loaded |" in table


def test_a_shape_mismatch_names_the_layer_and_both_shapes():
    target = _model()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    # fpn_channels 48 vs 32: C7 = 3×3 conv C6 (256 channels at base width 16) → fpn_channels
    with pytest.raises(ValueError, match=r"run-b: .*neck\.c7\.0\.weight: model \[32, 64, 3, 3\] vs source \[48, 64, 3, 3\]"):
        load_by_name(target, _model(fpn_channels=48).state_dict(), source="run-b")
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # nothing loaded


def test_state_dict_of_every_file_format():
    weights = {"w": torch.zeros(2)}
    assert state_dict_of({"model": weights, "optimizer": {}}) == weights  # training checkpoint
    assert state_dict_of({"format": "isrn-checkpoint/1", "state_dict": weights}) == weights  # export.save_model
    assert state_dict_of(weights) == weights
    with pytest.raises(ValueError, match="x.pt: holds no model state dict"):
        state_dict_of({"spec": {}}, "x.pt")
