"""Load a logged or registered face detector by its MLflow model URI, whatever version logged it.

    detector = load_detector("models:/isrn-face@champion")
    detector.predict(pd.DataFrame({"image": [jpeg_bytes]}), {"score_threshold": 0.5})   # the pyfunc's call
    detector.faces.detect([image_rgb])                                                  # the library's

Two kinds of model answer to the name:

* the pyfunc of ``jobs.serving.pyfunc`` (``FaceDetectorModel``), logged by ``isrn train`` now:
  ``predict`` is ``mlflow.pyfunc.load_model(uri).predict``, exactly a client's call;
* the PyTorch ``pt2`` model of earlier versions: a program fixed at S × S (metadata ``export_size``),
  batch 1, float32 raw RGB in, [1, K, 5] out. It runs behind the same letterbox on an S × S canvas,
  and ``predict`` gives the pyfunc's output; its ``max_size`` is S, always.

Anything else is refused with a ``DetectorLoadError`` naming the URI, its registered version, and
what to do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from jobs.serving.inference import FaceDetector, module_program


class DetectorLoadError(RuntimeError):
    """The URI names no loadable ISRN face detector; the message names the URI and the fix."""


@dataclass(frozen=True)
class LoadedDetector:
    """A face detector loaded from MLflow.

    Attributes:
        uri: the model URI it was loaded from.
        faces: the library detector (letterbox, program, boxes in image pixels).
        predict: ``predict(frame, params)`` → DataFrame ``image, x1, y1, x2, y2, score``, the pyfunc's contract.
        legacy: True for a fixed-size ``pt2`` model logged before the pyfunc.
    """

    uri: str
    faces: FaceDetector
    predict: Callable[[pd.DataFrame, dict[str, Any] | None], pd.DataFrame]
    legacy: bool = False


def load_detector(model_uri: str) -> LoadedDetector:
    """The face detector at ``model_uri`` (any MLflow model URI) on the current tracking server."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from jobs.serving.pyfunc import FaceDetectorModel, detections_frame

    try:
        info = mlflow.models.get_model_info(model_uri)
    except Exception as error:  # MlflowException, OSError, …: name the URI whatever failed
        raise DetectorLoadError(f"cannot find model {model_uri}: {error}") from None
    what = _describe(model_uri, info)
    metadata = info.metadata or {}
    try:
        if "pytorch" in info.flavors and metadata.get("export_size"):
            import mlflow.pytorch

            side = int(metadata["export_size"])
            # The old program returned every detection above the spec's threshold, which is not recorded.
            faces = FaceDetector(module_program(mlflow.pytorch.load_model(model_uri)), max_size=side,
                                 score_threshold=0.0, canvas_side=side, batch_size=1)
            return LoadedDetector(model_uri, faces, lambda frame, params: detections_frame(faces, frame, params),
                                  legacy=True)
        if "python_function" in info.flavors:
            model = mlflow.pyfunc.load_model(model_uri)
            try:
                python_model = model.unwrap_python_model()
            except MlflowException:  # a flavour's pyfunc (sklearn, …), not a PythonModel
                python_model = None
            if isinstance(python_model, FaceDetectorModel):
                return LoadedDetector(model_uri, python_model.detector,
                                      lambda frame, params: model.predict(frame, params=params))
    except Exception as error:  # MlflowException, OSError, ModuleNotFoundError, …: name the URI
        raise DetectorLoadError(f"cannot load {what}: {error}") from None
    raise DetectorLoadError(f"{what} is not an ISRN face detector (flavors {sorted(info.flavors)}, no "
                            "FaceDetectorModel pyfunc and no export_size metadata): give the URI of a model that "
                            "`isrn train` logged, or log this checkpoint again with the current version")


def _describe(model_uri: str, info: Any) -> str:
    version = getattr(info, "registered_model_version", None)
    return f"model {model_uri}" + (f" (version {version})" if version else "")
