"""Configuration sections: errors name the field, unknown keys are refused by name, every field is
described, and the job spec sees those descriptions (one mechanism: ``isrn_model.section``)."""

import dataclasses

import pytest

from data_shards.config import AugmentConfig, LoaderConfig, SynthConfig
from isrn_model.config import InferenceConfig, LossConfig, ModelConfig
from isrn_model.section import ConfigError, field_descriptions

SECTIONS = (ModelConfig, LossConfig, InferenceConfig, AugmentConfig, LoaderConfig, SynthConfig)


def test_round_trip_and_unknown_key():
    cfg = ModelConfig(depth=50, stem="standard", stc_levels=(2, 3))
    d = cfg.to_dict()
    assert d["stc_levels"] == [2, 3]
    assert ModelConfig.from_dict(d) == cfg
    assert ModelConfig(**{k: v for k, v in d.items() if k not in ("stc_levels", "str_levels")}).depth == 50
    with pytest.raises(ConfigError, match=r"^ModelConfig\.widht: unknown key$"):
        ModelConfig.from_dict({"widht": 3})
    with pytest.raises(ConfigError, match=r"ModelConfig\.widht: unknown key"):
        ModelConfig(widht=3)
    for cls in SECTIONS:
        assert cls.from_dict(cls().to_dict()) == cls()
    nested = LoaderConfig(augment=AugmentConfig(out_size=128))
    assert nested.to_dict()["augment"]["out_size"] == 128 and LoaderConfig.from_dict(nested.to_dict()) == nested
    with pytest.raises(ConfigError, match=r"LoaderConfig\.augment\.out_sise: unknown key"):
        LoaderConfig.from_dict({"augment": {"out_sise": 3}})


@pytest.mark.parametrize(("cls", "kwargs", "message"), [
    (ModelConfig, {"depth": 20}, r"ModelConfig\.depth: Input should be 18, 34, 50 or 101"),
    (ModelConfig, {"norm": "ln"}, r"ModelConfig\.norm: Input should be 'gn', 'bn' or 'frozen_bn'"),
    (ModelConfig, {"head_channels": 30}, r"ModelConfig\.head_channels: Input should be a multiple of 4"),
    (ModelConfig, {"stc_levels": (1, 2)}, r"ModelConfig\.stc_levels\.0: Input should be 2, 3, 4, 5, 6 or 7"),
    (ModelConfig, {"stc_levels": (2, 2)}, r"ModelConfig: stc_levels must list distinct levels"),
    (ModelConfig, {"stc_threshold": 1.5}, r"ModelConfig\.stc_threshold: Input should be less than or equal to 1"),
    (LossConfig, {"step1_neg_iou": 0.8}, r"LossConfig: step1_neg_iou \(0\.8\) exceeds step1_pos_iou \(0\.7\)"),
    (InferenceConfig, {"keep_top_k": 0}, r"InferenceConfig\.keep_top_k: Input should be greater than 0"),
    (InferenceConfig, {"nms_threshold": 1.5}, r"InferenceConfig\.nms_threshold"),
    (AugmentConfig, {"zoom_out_max": 0.5}, r"AugmentConfig\.zoom_out_max: Input should be greater than or equal to 1"),
    (AugmentConfig, {"das_anchor_sizes": (16.0, 8.0)}, r"AugmentConfig: das_anchor_sizes must be positive and ascending"),
    (SynthConfig, {"min_face": 30, "max_face": 20}, r"SynthConfig: need min_face <= max_face"),
])
def test_bad_field_is_named(cls, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        cls(**kwargs)


def test_keyword_only_frozen_and_replace_validates():
    with pytest.raises(TypeError, match="keyword arguments only"):
        ModelConfig(18)  # type: ignore[misc]
    cfg = ModelConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.depth = 50  # type: ignore[misc]
    assert dataclasses.replace(cfg, depth=50).depth == 50
    with pytest.raises(ConfigError, match=r"ModelConfig\.depth"):
        dataclasses.replace(cfg, depth=51)


@pytest.mark.parametrize("cls", SECTIONS, ids=lambda c: c.__name__)
def test_every_field_has_a_description(cls):
    missing = [name for name, text in field_descriptions(cls).items() if not text]
    assert not missing, f"{cls.__name__} fields without a docstring: {missing}"


def test_the_job_spec_sees_the_library_descriptions():
    from jobs.spec import JobSpec

    schema = JobSpec.json_schema()["$defs"]
    assert schema["ModelConfig"]["properties"]["stc_threshold"]["description"].startswith("STC background confidence")
    assert "augment.out_size" in schema["LoaderConfig"]["properties"]["augment"]["description"]
    assert schema["AugmentConfig"]["properties"]["das_allow_larger"]["description"].startswith("False: the target")
    assert JobSpec.__pydantic_fields__["loader"].annotation is LoaderConfig



def test_the_defaults_are_the_recipe_of_isrn_md():
    # "STC and STR", "Anchors", "Inference" (released code's values) and "Training recipe" of docs/model.md
    model = ModelConfig()
    assert (model.stc_levels, model.str_levels, model.stc_threshold) == ((2, 3, 4), (5, 6, 7), 0.99)
    loss = LossConfig()
    assert (loss.step1_neg_iou, loss.step1_pos_iou, loss.step2_neg_iou, loss.step2_pos_iou) == (0.3, 0.7, 0.4, 0.5)
    assert (loss.box_loss_weight, loss.stc_filter_regression) == (1.0, False)
    inference = InferenceConfig()
    assert (inference.score_threshold, inference.pre_nms_top_k, inference.nms_threshold, inference.keep_top_k,
            inference.max_test_size, inference.vote_threshold) == (0.05, 6000, 0.4, 750, 2100, 0.5)
    augment = AugmentConfig()
    assert (augment.zoom_out_prob, augment.zoom_out_max, augment.crop_full_side_prob, augment.crop_scale_min) == (
        1.0, 4.0, 0.5, 0.5)
    assert (augment.das_allow_larger, augment.das_size_jitter) == (False, 1.0)
