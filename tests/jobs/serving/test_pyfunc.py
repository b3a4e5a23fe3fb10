"""The pyfunc's contract on a stand-in program: rows of photos in, one row per face out, bad rows → HTTP 400."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from jobs.serving.inference import FaceDetector
from jobs.serving.pyfunc import FaceDetectorModel, detections_frame, example_photo, signature

from tests.jobs.serving.stand_ins import ContentProgram


def png(height: int, width: int, red: int) -> bytes:
    image = np.full((height, width, 3), 40, np.uint8)
    image[..., 2] = red  # BGR: red is the last channel
    return cv2.imencode(".png", image)[1].tobytes()  # lossless: the stand-in's score is exact


@pytest.fixture
def model() -> FaceDetectorModel:
    python_model = FaceDetectorModel()
    python_model.detector = FaceDetector(ContentProgram(), max_size=400, score_threshold=0.1)
    return python_model


def test_one_row_per_face_with_the_input_row_and_its_pixels(model: FaceDetectorModel) -> None:
    frame = pd.DataFrame({"image": [png(500, 1000, 204), base64.b64encode(png(120, 200, 102)).decode()]})
    out = model.predict(None, frame)
    assert list(out.columns) == ["image", "x1", "y1", "x2", "y2", "score"]
    assert out["image"].dtype == np.int64 and out["score"].dtype == np.float64
    np.testing.assert_allclose(out.to_numpy(), [[0, 0, 0, 1000, 500, 0.8], [1, 0, 0, 200, 120, 0.4]], rtol=1e-6)
    # params: a threshold above the second face's score leaves one row
    assert out.shape[0] == 2 and model.predict(None, frame, {"score_threshold": 0.5}).shape[0] == 1


def test_no_face_is_an_empty_frame_with_the_columns(model: FaceDetectorModel) -> None:
    out = model.predict(None, pd.DataFrame({"image": [png(100, 100, 10)]}), {"score_threshold": 0.9})
    assert out.empty and list(out.columns) == ["image", "x1", "y1", "x2", "y2", "score"]


@pytest.mark.parametrize("frame, params, message", [
    (pd.DataFrame({"image": []}), None, "the request has no rows"),
    (pd.DataFrame({"photo": [b"x"]}), None, r"no column 'image' in the request \(columns: \['photo'\]\)"),
    (pd.DataFrame({"image": [b"\xff\xd8\xff" + b"\0" * 10, b"hello"]}), None, r"row 0: unusable JPEG file of 13 bytes"),
    (pd.DataFrame({"image": [png(100, 100, 10), b"hello"]}), None, r"row 1: not a JPEG, PNG or WebP file"),
    (pd.DataFrame({"image": [png(100, 100, 10)]}), {"max_size": 10}, r"max_size 10: expected"),
])
def test_bad_input_is_mlflows_invalid_parameter_value_so_http_400(model, frame, params, message) -> None:
    with pytest.raises(MlflowException, match=message) as caught:
        model.predict(None, frame, params)
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE" and caught.value.get_http_status_code() == 400


def test_detections_frame_takes_a_dict_of_columns_too() -> None:
    detector = FaceDetector(ContentProgram(), max_size=400, score_threshold=0.0)
    out = detections_frame(detector, {"image": [png(100, 100, 10)]})
    assert out[["x1", "y1", "x2", "y2"]].to_numpy().tolist() == [[0, 0, 100, 100]]


def test_signature_declares_a_binary_image_column_and_both_params_with_their_defaults() -> None:
    sig = signature(max_size=1600, score_threshold=0.05)
    assert sig.inputs.to_dict() == [{"type": "binary", "name": "image", "required": True}]
    assert sig.outputs.input_names() == ["image", "x1", "y1", "x2", "y2", "score"]
    assert {p["name"]: (p["type"], p["default"]) for p in sig.params.to_dict()} == {
        "score_threshold": ("double", 0.05), "max_size": ("long", 1600)}


def test_the_input_example_is_a_jpeg_of_faces() -> None:
    data = example_photo()
    assert data[:3] == b"\xff\xd8\xff" and cv2.imdecode(np.frombuffer(data, np.uint8), 1).shape[1] == 320
