"""Models of earlier versions still detect; a model that is no face detector is refused by name."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from jobs.serving.inputs import DetectionInputError
from jobs.serving.loading import DetectorLoadError, load_detector


def photo_png(height: int, width: int) -> bytes:
    rng = np.random.default_rng(height + width)
    image = cv2.resize(rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8), (width, height))
    return cv2.imencode(".png", image)[1].tobytes()


@pytest.mark.slow
def test_a_fixed_size_pt2_model_of_an_earlier_version_detects_behind_the_letterbox(tmp_path) -> None:
    """Earlier versions logged `mlflow.pytorch.log_model(wrapper, serialization_format="pt2",
    input_example=zeros([1, 3, S, S]), metadata={"export_size": S})`: a program of that one size."""
    import mlflow.pytorch

    from isrn_model.builder import build_isrn
    from isrn_model.config import InferenceConfig, ModelConfig
    from isrn_model.export import ExportableISRN

    torch.manual_seed(0)
    model = build_isrn(ModelConfig(depth=18, base_width=16, fpn_channels=32, head_channels=32),
                       inference=InferenceConfig(score_threshold=0.005, keep_top_k=20)).eval()
    path = tmp_path / "legacy"
    mlflow.pytorch.save_model(ExportableISRN(model).eval(), str(path), serialization_format="pt2",
                              input_example=np.zeros((1, 3, 256, 256), np.float32), metadata={"export_size": 256})

    loaded = load_detector(str(path))
    assert loaded.legacy and loaded.faces.max_size == 256 and loaded.faces.canvas_side == 256
    faces = loaded.predict(pd.DataFrame({"image": [photo_png(300, 400), photo_png(128, 200)]}), {"score_threshold": 0.0})
    assert list(faces.columns) == ["image", "x1", "y1", "x2", "y2", "score"]
    assert set(faces["image"]) == {0, 1} and (faces["score"] > 0).all()
    first = faces[faces["image"] == 0]
    assert first["x2"].max() <= 400 and first["y2"].max() <= 300  # the photo's own pixels (300 × 400 → 192 × 256)
    with pytest.raises(DetectionInputError, match="exported for 256 × 256 inputs only"):
        loaded.predict(pd.DataFrame({"image": [photo_png(300, 400)]}), {"max_size": 512})


def test_a_model_that_is_no_face_detector_is_refused_with_what_to_do(tmp_path) -> None:
    import mlflow.pytorch

    path = tmp_path / "linear"
    mlflow.pytorch.save_model(torch.nn.Linear(2, 1), str(path), serialization_format="pickle")
    with pytest.raises(DetectorLoadError, match=rf"model {path} is not an ISRN face detector .*give the URI of a "
                                                r"model that `isrn train` logged"):
        load_detector(str(path))
    with pytest.raises(DetectorLoadError, match=rf"cannot find model {tmp_path / 'missing'}"):
        load_detector(str(tmp_path / "missing"))
