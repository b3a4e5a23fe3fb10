"""Inference with a trained detector: photos in, face boxes in each photo's own pixels out.

One path serves every caller: the MLflow pyfunc that training logs and `mlflow models serve` runs,
`isrn detect` (which calls that pyfunc as a client would) and `isrn evaluate --model`.

* :mod:`jobs.serving.inputs` — a request row (an encoded JPEG, PNG or WebP, bytes or base64) → pixels;
* :mod:`jobs.serving.inference` — letterbox, run the exported program, boxes back to image pixels;
* :mod:`jobs.serving.pyfunc` — the pyfunc (``FaceDetectorModel``), its signature, and how it is logged;
* :mod:`jobs.serving.loading` — load a model URI, including the fixed-size models of earlier versions.

Bad input raises :class:`DetectionInputError` (the pyfunc turns it into MLflow's INVALID_PARAMETER_VALUE,
HTTP 400), naming the row or parameter and the cause.
"""

from jobs.serving.inference import FaceDetector, onnx_program, torch_program
from jobs.serving.inputs import DetectionInputError

__all__ = ["DetectionInputError", "FaceDetector", "onnx_program", "torch_program"]
