"""Saving, loading and exporting an ISRN model.

* :func:`save_model` / :func:`load_model` — one file holding the state dict and the three configs
  (``torch.load(..., weights_only=True)``-safe: tensors and plain values only).
* :class:`ExportableISRN` — a fixed-input-size wrapper whose ``forward(images)`` returns
  Tensor[B, keep_top_k, 5] (x1, y1, x2, y2, score; by descending score; unused rows zero). It includes
  the whole post-processing with static shapes, so ``torch.export`` captures it and the exported
  program detects on its own. To log it with MLflow (default "pt2" format = ``torch.export``)::

      wrapper = ExportableISRN(model, height=640, width=640).eval()
      example = np.zeros((1, 3, 640, 640), np.float32)          # raw RGB 0..255
      mlflow.pytorch.log_model(wrapper, name="model", input_example=example)
      loaded = mlflow.pytorch.load_model(uri)                    # loaded(torch.from_numpy(x)) -> [B, 750, 5]

* :func:`export_program` — ``torch.export.export`` of that wrapper at a fixed size.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn

from isrn_model.builder import build_isrn
from isrn_model.config import InferenceConfig, LossConfig, ModelConfig
from isrn_model.detector import ISRN
from isrn_model.postprocess import select_detections_fixed

FORMAT = "isrn-checkpoint/1"
EXPORT_CANDIDATES = 1000
"""Boxes entering the fixed-shape NMS of the exported module (the K×K IoU matrix bounds its cost)."""
EXPORT_NMS_ITERATIONS = 20
"""Fixed-point rounds of the exported NMS (exact greedy NMS when suppression chains are ≤ 20 long)."""


def save_model(model: ISRN, path: str | Path) -> None:
    """Write ``model``'s state dict and configs to ``path`` (one file)."""
    payload = {
        "format": FORMAT,
        "model_config": model.model_config.to_dict(),
        "loss_config": model.loss_config.to_dict(),
        "inference_config": model.inference_config.to_dict(),
        "state_dict": model.state_dict(),
    }
    torch.save(payload, Path(path))


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> ISRN:
    """Rebuild the model saved by :func:`save_model` (in eval mode).

    ``pretrained_path`` is dropped from the stored config: the state dict already holds the weights.
    Raises FileNotFoundError or ValueError naming the file.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"model file {str(file)!r} does not exist")
    payload = torch.load(file, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{str(file)!r} is not an ISRN checkpoint (expected format {FORMAT!r})")
    configs = _upgrade_configs(payload)
    cfg = replace(ModelConfig.from_dict(configs["model_config"]), pretrained_path=None)
    model = build_isrn(cfg, loss=LossConfig.from_dict(configs["loss_config"]),
                       inference=InferenceConfig.from_dict(configs["inference_config"]))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"{str(file)!r}: state dict does not fit its config: {err}") from err
    return model.eval()


def _upgrade_configs(payload: dict) -> dict[str, dict]:
    """The three config dicts of a saved model, older files brought up to date.

    Before issue 14 the STC threshold was stored twice: ``loss_config.stc_threshold`` (θ) and
    ``inference_config.stc_score_threshold`` (1 − θ); it is now ``model_config.stc_threshold`` alone.
    """
    model = dict(payload["model_config"])
    loss = dict(payload["loss_config"])
    inference = dict(payload["inference_config"])
    theta = loss.pop("stc_threshold", None)
    face = inference.pop("stc_score_threshold", None)
    if "stc_threshold" not in model and (theta is not None or face is not None):
        model["stc_threshold"] = 1.0 - face if face is not None else theta
    return {"model_config": model, "loss_config": loss, "inference_config": inference}


class ExportableISRN(nn.Module):
    """Fixed-size detector: Tensor[B, 3, height, width] float32 raw RGB → Tensor[B, keep_top_k, 5].

    Same network and thresholds as ``model`` in eval mode; only the post-processing differs for static
    shapes (see :func:`isrn_model.postprocess.select_detections_fixed`): at most ``candidates`` boxes
    enter NMS and NMS runs ``nms_iterations`` rounds. Flip / multi-scale test is not included.
    """

    def __init__(self, model: ISRN, height: int, width: int, *, candidates: int = EXPORT_CANDIDATES,
                 nms_iterations: int = EXPORT_NMS_ITERATIONS) -> None:
        super().__init__()
        if height <= 0 or width <= 0:
            raise ValueError(f"export size must be positive, got {height}×{width}")
        self.model = model
        self.height = height
        self.width = width
        self.candidates = candidates
        self.nms_iterations = nms_iterations
        self.counts = model.anchor_counts(height, width)

    def forward(self, images: Tensor) -> Tensor:
        if tuple(images.shape[-2:]) != (self.height, self.width):
            raise ValueError(f"this export takes {self.height}×{self.width} images, got {list(images.shape)}")
        scores, boxes = self.model.predict_raw(images)
        return select_detections_fixed(scores, boxes, self.counts, self.height, self.width,
                                       self.model.inference_config, self.candidates, self.nms_iterations)


def export_program(model: ISRN, height: int, width: int, batch_size: int = 1, **kwargs: int) -> torch.export.ExportedProgram:
    """``torch.export`` the :class:`ExportableISRN` wrapper at a fixed size (static batch size too)."""
    wrapper = ExportableISRN(model.eval(), height, width, **kwargs).eval()
    example = torch.zeros(batch_size, 3, height, width)
    with torch.no_grad():
        return torch.export.export(wrapper, (example,))
