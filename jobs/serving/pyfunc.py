"""The registered face detector as an MLflow pyfunc: a column of photos in, one row per face out.

    model = mlflow.pyfunc.load_model("models:/isrn-face@champion")
    faces = model.predict(pd.DataFrame({"image": [Path("a.jpg").read_bytes(), Path("b.png").read_bytes()]}),
                          params={"score_threshold": 0.5})
    # DataFrame: image (the input row), x1, y1, x2, y2 (that image's pixels), score; by image, then score

    mlflow models serve -m models:/isrn-face@champion --env-manager local --port 8080
    curl -s localhost:8080/invocations -H 'Content-Type: application/json' \\
      -d "{\\"dataframe_split\\": {\\"columns\\": [\\"image\\"], \\"data\\": [[\\"$(base64 -w0 a.jpg)\\"]]}}"

Input: column ``image``, one encoded JPEG, PNG or WebP file per row, as bytes or base64 text
(``jobs.serving.inputs``). Parameters (the signature's ``params``): ``score_threshold`` (default the
spec's ``inference.score_threshold``, the threshold of the AP the model carries) and ``max_size``,
the longest side an image is shrunk to (default the spec's ``loader.val_max_size``, the size training
evaluated at: smaller, and small faces shrink below what the detector finds). A row that is not an
image, an image over the pixel limit, an empty request or a parameter out of range raise an
``MlflowException`` (INVALID_PARAMETER_VALUE) naming the row or parameter: the scoring server answers
HTTP 400 with that message and serves the next request.

The logged model (:func:`log_face_detector`) holds three artifacts: the ``torch.export`` program the
pyfunc runs (``isrn_face.pt2``, any batch size and image size), the same program as ONNX
(``isrn_face.onnx``), and the eager model (``isrn_model.pt``, for flip / multi-scale test and
``model.init_from``); its code is ``jobs/serving/pyfunc_model.py`` (MLflow's models from code, no
pickle). Loading it needs this package (``pip install .``, as the platform image does).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from jobs.serving.inference import FaceDetector, torch_program
from jobs.serving.inputs import DetectionInputError, decode_row

log = logging.getLogger(__name__)

IMAGE_COLUMN = "image"
OUTPUT_COLUMNS = ("image", "x1", "y1", "x2", "y2", "score")
PROGRAM_FILE, ONNX_FILE, EAGER_FILE = "isrn_face.pt2", "isrn_face.onnx", "isrn_model.pt"
ARTIFACTS = {"program": PROGRAM_FILE, "onnx": ONNX_FILE, "eager": EAGER_FILE}
"""Artifact name → file name inside the logged model's ``artifacts/`` folder."""


class FaceDetectorModel(mlflow.pyfunc.PythonModel):
    """The pyfunc of a logged ISRN face detector (see the module docstring)."""

    detector: FaceDetector

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        config = context.model_config or {}
        self.detector = FaceDetector(torch_program(context.artifacts["program"]), max_size=int(config["max_size"]),
                                     score_threshold=float(config["score_threshold"]))

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        try:
            return detections_frame(self.detector, model_input, params)
        except DetectionInputError as error:
            from mlflow.exceptions import MlflowException

            raise MlflowException.invalid_parameter_value(str(error)) from None


def detections_frame(detector: FaceDetector, frame: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
    """The pyfunc's contract on a ``FaceDetector``: ``frame[IMAGE_COLUMN]`` rows → one row per face.

    Raises DetectionInputError naming the row (by position, as the output's ``image``) or parameter.
    """
    if not isinstance(frame, pd.DataFrame):
        frame = pd.DataFrame(frame)
    if IMAGE_COLUMN not in frame.columns:
        raise DetectionInputError(f"no column {IMAGE_COLUMN!r} in the request (columns: {list(frame.columns)}): "
                                  "send one encoded image per row in column 'image'")
    if len(frame) == 0:
        raise DetectionInputError("the request has no rows: send at least one encoded image in column 'image'")
    params = params or {}
    images = [decode_row(value, row) for row, value in enumerate(frame[IMAGE_COLUMN])]
    found = detector.detect(images, max_size=params.get("max_size"), score_threshold=params.get("score_threshold"))
    return pd.DataFrame({
        "image": np.concatenate([np.full(len(rows), row, np.int64) for row, rows in enumerate(found)]),
        **{name: np.concatenate([rows[:, column] for rows in found]) for column, name in enumerate(OUTPUT_COLUMNS[1:])},
    }, columns=list(OUTPUT_COLUMNS))


def signature(max_size: int, score_threshold: float) -> mlflow.models.ModelSignature:
    """Input column ``image`` (binary), output rows ``image, x1, y1, x2, y2, score``, and the two params."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec(DataType.binary, IMAGE_COLUMN)]),
        outputs=Schema([ColSpec(DataType.long, "image")] + [ColSpec(DataType.double, c) for c in OUTPUT_COLUMNS[1:]]),
        params=ParamSchema([ParamSpec("score_threshold", DataType.double, float(score_threshold)),
                            ParamSpec("max_size", DataType.long, int(max_size))]),
    )


def example_photo(width: int = 320) -> bytes:
    """A JPEG of faces, the logged input example: a generated WIDER-style image (fixed seed)."""
    import cv2

    from data_shards.synth import SynthConfig, generate_image

    image_bgr, _ = generate_image("val", 0, 0, SynthConfig(image_width=width))
    return cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def log_face_detector(model: Any, *, name: str, max_size: int, score_threshold: float,
                      pip_requirements: list[str], metadata: dict[str, Any],
                      params: dict[str, str]) -> mlflow.models.model.ModelInfo:
    """Export the eager ISRN ``model`` (eval mode) and log it as this pyfunc in the active run.

    ``max_size``, ``score_threshold``: the defaults of the signature's params. Returns MLflow's ModelInfo.
    """
    from isrn_model.export import export_onnx, export_program, save_model

    import torch

    with tempfile.TemporaryDirectory(prefix="isrn-model-") as directory:
        files = {key: Path(directory) / file for key, file in ARTIFACTS.items()}
        program = export_program(model)
        torch.export.save(program, str(files["program"]))
        export_onnx(program, files["onnx"])
        save_model(model, files["eager"])
        return mlflow.pyfunc.log_model(
            name=name, python_model=str(Path(__file__).with_name("pyfunc_model.py")),
            artifacts={k: str(v) for k, v in files.items()},
            model_config={"max_size": int(max_size), "score_threshold": float(score_threshold)},
            signature=signature(max_size, score_threshold),
            input_example=pd.DataFrame({IMAGE_COLUMN: [example_photo()]}),
            pip_requirements=pip_requirements, metadata=metadata, params=params,
        )
