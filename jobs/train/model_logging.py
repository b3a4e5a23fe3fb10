"""Log a trained detector to MLflow as a PyTorch model (pt2: torch.export) ready for the registry."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from isrn_model.builder import build_isrn
from isrn_model.export import ExportableISRN, save_model
from jobs import tags
from jobs.spec import JobSpec
from jobs.train.checkpoints import load_checkpoint

log = logging.getLogger(__name__)

MODEL_NAME = "model"


def detector_from_checkpoint(checkpoint_dir: Path, spec: JobSpec | None = None):
    """The eager ISRN of a training checkpoint (in eval mode) and the spec it was trained with."""
    _, payload = load_checkpoint(checkpoint_dir)
    spec = spec or JobSpec.model_validate(payload["spec"])
    model = build_isrn(spec.model, loss=spec.loss, inference=spec.inference)
    model.load_state_dict(payload["model"])
    return model.eval(), spec


def log_detector(tracking_uri: str, run_id: str, checkpoint_dir: Path, spec: JobSpec, *,
                 checkpoint_uri: str | None = None, metrics: dict[str, float] | None = None) -> str:
    """Log the checkpoint's model into `run_id`; returns the model URI (`models:/m-…`).

    The logged model takes float32 [1, 3, S, S] raw RGB 0..255 (S = tracking.export_size) and
    returns float32 [1, keep_top_k, 5] rows (x1, y1, x2, y2, score), zero rows unused. `metrics`
    (the checkpoint's `val_ap_*`, `epoch`, `step`): its APs become the LoggedModel's own metrics,
    linked to it in the MLflow UI (MLflow also adds them to the run's history, at the same step and
    value), its epoch and step the model's params `best_epoch`, `best_step`; promotion compares those.
    """
    import mlflow
    from mlflow.models import infer_signature

    model, _ = detector_from_checkpoint(checkpoint_dir, spec)
    size = spec.tracking.export_size
    wrapper = ExportableISRN(model, size, size).eval()
    example = np.zeros((1, 3, size, size), np.float32)
    with torch.no_grad():
        output = wrapper(torch.from_numpy(example)).numpy()
    mlflow.set_tracking_uri(tracking_uri)
    # The fluent API refuses a run of another experiment than the process's active one.
    mlflow.set_experiment(experiment_id=mlflow.tracking.MlflowClient(tracking_uri).get_run(run_id).info.experiment_id)
    with mlflow.start_run(run_id=run_id), tempfile.TemporaryDirectory(prefix="isrn-model-") as directory:
        eager = Path(directory) / "isrn_model.pt"
        save_model(model, eager)  # the eager model too: flip / multi-scale test need it
        info = mlflow.pytorch.log_model(
            wrapper, name=MODEL_NAME, input_example=example, signature=infer_signature(example, output),
            serialization_format="pt2", extra_files=[str(eager)],
            metadata={"export_size": size, "output": "x1,y1,x2,y2,score", "spec_fingerprint": spec.fingerprint()},
            params={"checkpoint": checkpoint_uri or str(checkpoint_dir)},
        )
        mlflow.set_tags({tags.MODEL_URI: info.model_uri, tags.BEST_CHECKPOINT: checkpoint_uri or ""})
        if metrics:
            step = int(metrics.get("step", 0))
            mlflow.log_metrics({k: v for k, v in metrics.items() if k.startswith("val_ap_")}, step=step,
                               model_id=info.model_id)
            mlflow.log_model_params({"best_epoch": str(int(metrics["epoch"])), "best_step": str(step)},
                                    model_id=info.model_id)
    log.info("logged model %s", info.model_uri)
    return info.model_uri
