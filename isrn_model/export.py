"""Saving, loading and exporting an ISRN model.

* :func:`save_model` / :func:`load_model` — one file holding the state dict and the three configs
  (``torch.load(..., weights_only=True)``-safe: tensors and plain values only).
* :class:`ExportableISRN` — the detector with its whole post-processing in fixed-rank tensor ops:
  ``forward(images)`` takes Tensor[B, 3, H, W] float32 raw RGB 0..255, H and W multiples of 128
  (:data:`SIDE_MULTIPLE`) from 256 to 4096, and returns Tensor[B, keep_top_k, 5] (x1, y1, x2, y2,
  score in input pixels; by descending score; unused rows zero). Boxes are clipped to the input.
* :func:`export_program` — ``torch.export.export`` of that wrapper, batch size, height and width
  dynamic: one program for every image size.
* :func:`export_onnx` — the same program as an ONNX file (inputs ``images``, outputs ``detections``)::

      program = export_program(model)
      export_onnx(program, "isrn_face.onnx")
      session = onnxruntime.InferenceSession("isrn_face.onnx")
      session.run(None, {"images": x})[0]                     # x: float32 [B, 3, H, W] -> [B, 750, 5]

An image of another size is letterboxed onto such a canvas first (``jobs.serving.inference``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn

from isrn_model.anchors import cell_anchors, level_stride
from isrn_model.builder import build_isrn
from isrn_model.config import LEVELS, InferenceConfig, LossConfig, ModelConfig
from isrn_model.detector import ISRN, SIZE_DIVISOR
from isrn_model.postprocess import dense_predictions, select_detections_fixed
from isrn_model.stc_str import TwoStepOutputs

FORMAT = "isrn-checkpoint/1"
EXPORT_CANDIDATES = 1000
"""Boxes entering the fixed-shape NMS of the exported module (the K×K IoU matrix bounds its cost)."""
EXPORT_NMS_ITERATIONS = 20
"""Fixed-point rounds of the exported NMS (exact greedy NMS when suppression chains are ≤ 20 long)."""
SIDE_MULTIPLE = SIZE_DIVISOR
"""Input sides of the exported program are multiples of the P7 stride (128), so no padding is decided
inside the graph."""
MIN_SIDE = 2 * SIDE_MULTIPLE
"""Smallest exported side: P7 is then at least 2 × 2. At 1 × 1 torch.export would specialise the
reshapes of the last level to that size (a size-1 dimension broadcasts), so the program could not
take larger inputs."""
MAX_SIDE = 32 * SIDE_MULTIPLE
"""Largest exported side (4096): the program checks its input against this range."""


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
    """The detector as one traceable function: Tensor[B, 3, H, W] float32 raw RGB → Tensor[B, keep_top_k, 5].

    Any H and W run eagerly; :func:`export_program` exports multiples of :data:`SIDE_MULTIPLE`. Rows are (x1, y1, x2, y2, score) in input pixels,
    clipped to the input, by descending score, unused rows zero. Same network and thresholds as
    ``model`` in eval mode; the post-processing differs for fixed shapes (see
    :func:`isrn_model.postprocess.select_detections_fixed`): at most ``candidates`` boxes enter NMS
    and NMS runs ``nms_iterations`` rounds. Anchors are computed from the feature maps' sizes inside
    the graph (:func:`traced_grid_anchors`), so the exported program takes any such H and W. Flip /
    multi-scale test is not included.
    """

    def __init__(self, model: ISRN, *, candidates: int = EXPORT_CANDIDATES,
                 nms_iterations: int = EXPORT_NMS_ITERATIONS) -> None:
        super().__init__()
        self.model = model
        self.candidates = candidates
        self.nms_iterations = nms_iterations

    def forward(self, images: Tensor) -> Tensor:
        height, width = images.shape[-2:]
        model, cfg = self.model, self.model.model_config
        first, second = model.neck(model.backbone(model.preprocess(images)))
        anchors = [traced_grid_anchors(p.shape[-2], p.shape[-1], level_stride(lvl), images.device)
                   for lvl, p in zip(LEVELS, second)]
        head1, head2 = model.heads[0], model.heads[-1]
        out = TwoStepOutputs(  # ISRN.two_step_outputs, with anchors the graph computes
            levels=LEVELS,
            anchors=anchors,
            cls1={lvl: head1.classify(f) for lvl, f in zip(LEVELS, first) if lvl in cfg.stc_levels},
            box1={lvl: head1.regress(f) for lvl, f in zip(LEVELS, first) if lvl in cfg.str_levels},
            cls2=[head2.classify(p) for p in second],
            box2=[head2.regress(p) for p in second],
        )
        scores, boxes = dense_predictions(out, model.stc_face_threshold)
        scores, boxes, counts = _pad_levels(scores, boxes, [a.shape[0] for a in anchors],
                                            model.inference_config.pre_nms_top_k)
        return select_detections_fixed(scores, boxes, counts, height, width, model.inference_config,
                                       self.candidates, self.nms_iterations)


def traced_grid_anchors(height: int, width: int, stride: int, device: torch.device | str = "cpu") -> Tensor:
    """The anchors of :func:`isrn_model.anchors.grid_anchors` built from tensor ops, so that ``height``
    and ``width`` may be symbolic sizes inside a ``torch.export`` graph.

    Returns Tensor[height·width·A, 4] float32 xyxy pixels, in the same order (row, column, anchor) and
    with the same values (float64 sums, then float32) as ``anchors.anchors_for_feature_sizes``.
    """
    cell = torch.from_numpy(cell_anchors(stride)).to(device)  # constant [A, 4]
    ys = torch.arange(height, dtype=torch.float64, device=device) * stride
    xs = torch.arange(width, dtype=torch.float64, device=device) * stride
    shift_y, shift_x = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=-1).reshape(-1, 1, 4)
    return (shifts + cell[None]).reshape(-1, 4).float()


def _pad_levels(scores: Tensor, boxes: Tensor, counts: list[int], top_k: int) -> tuple[Tensor, Tensor, list[int]]:
    """Append ``top_k`` zero-score, zero-size rows to every level.

    ``select_detections_fixed`` takes the ``min(top_k, n_l)`` best of each level: with symbolic level
    sizes that minimum is a branch on the input size, which an exported graph cannot keep. With every
    level at least ``top_k`` long it is ``top_k`` whatever the size, and the padding rows never
    survive (score 0 fails the threshold, zero area fails the size test).
    """
    batch = scores.shape[0]
    padded_scores, padded_boxes, start = [], [], 0
    for n in counts:
        padded_scores += [scores[:, start:start + n], scores.new_zeros(batch, top_k)]
        padded_boxes += [boxes[:, start:start + n], boxes.new_zeros(batch, top_k, 4)]
        start = start + n
    return torch.cat(padded_scores, dim=1), torch.cat(padded_boxes, dim=1), [n + top_k for n in counts]


def export_program(model: ISRN, height: int = MIN_SIDE, width: int = MIN_SIDE + SIDE_MULTIPLE, batch_size: int = 2,
                   **kwargs: int) -> torch.export.ExportedProgram:
    """``torch.export`` the :class:`ExportableISRN` wrapper, traced on a ``batch_size`` × 3 × ``height``
    × ``width`` example, with batch size (1 to 64), height and width (multiples of 128 from 256 to 4096)
    dynamic. The program checks its input against these ranges. ``kwargs``: ``candidates``,
    ``nms_iterations``.

    The example's batch size is not 1, nor its height its width: torch.export would take a size of 1,
    or two equal sizes, for a rule of the model and fix them."""
    from torch.export import Dim

    blocks = {"min": MIN_SIDE // SIDE_MULTIPLE, "max": MAX_SIDE // SIDE_MULTIPLE}
    shapes = {"images": {0: Dim("batch", min=1, max=64), 2: SIDE_MULTIPLE * Dim("height_blocks", **blocks),
                         3: SIDE_MULTIPLE * Dim("width_blocks", **blocks)}}
    wrapper = ExportableISRN(model.eval(), **kwargs).eval()
    example = torch.zeros(batch_size, 3, height, width)
    with torch.no_grad():
        return torch.export.export(wrapper, (example,), dynamic_shapes=shapes)


def export_onnx(program: torch.export.ExportedProgram, path: str | Path) -> Path:
    """Write ``program`` (from :func:`export_program`) as an ONNX model: input ``images`` float32
    [batch, 3, height, width], output ``detections`` float32 [batch, keep_top_k, 5], the same dynamic
    dimensions. Needs the ``onnx`` and ``onnxscript`` packages."""
    path = Path(path)
    # Not optimised here: onnxruntime folds and fuses the graph itself when it loads it, and the
    # exporter's own optimiser would add a quarter to the export's minute of CPU.
    onnx_program = torch.onnx.export(program, input_names=["images"], output_names=["detections"],
                                     dynamo=True, optimize=False, verbose=False)
    onnx_program.save(str(path))
    return path
