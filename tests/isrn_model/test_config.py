"""Config validation names the field; dict round trip rejects unknown keys by name."""

import pytest

from isrn_model.config import InferenceConfig, LossConfig, ModelConfig


def test_round_trip_and_unknown_key():
    cfg = ModelConfig(depth=50, stem="standard", stc_levels=(2, 3))
    d = cfg.to_dict()
    assert d["stc_levels"] == [2, 3]
    assert ModelConfig.from_dict(d) == cfg
    assert ModelConfig(**{k: v for k, v in d.items() if k not in ("stc_levels", "str_levels")}).depth == 50
    with pytest.raises(ValueError, match="unknown key.*'widht'"):
        ModelConfig.from_dict({"widht": 3})
    assert LossConfig.from_dict(LossConfig().to_dict()) == LossConfig()
    assert InferenceConfig.from_dict(InferenceConfig().to_dict()) == InferenceConfig()


@pytest.mark.parametrize(("cls", "kwargs", "field"), [
    (ModelConfig, {"depth": 20}, "ModelConfig.depth"),
    (ModelConfig, {"norm": "ln"}, "ModelConfig.norm"),
    (ModelConfig, {"head_channels": 30}, "ModelConfig.head_channels"),
    (ModelConfig, {"stc_levels": (1, 2)}, "ModelConfig.stc_levels"),
    (LossConfig, {"step1_neg_iou": 0.8}, "LossConfig.step1_neg_iou"),
    (InferenceConfig, {"keep_top_k": 0}, "InferenceConfig.keep_top_k"),
    (InferenceConfig, {"nms_threshold": 1.5}, "InferenceConfig.nms_threshold"),
])
def test_bad_field_is_named(cls, kwargs, field):
    with pytest.raises(ValueError, match=field):
        cls(**kwargs)


def test_keyword_only():
    with pytest.raises(TypeError):
        ModelConfig(18)  # type: ignore[misc]
