"""Log a trained detector to MLflow as the face-detector pyfunc (`jobs.serving.pyfunc`), ready for the registry."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from isrn_model.builder import build_isrn
from jobs import metrics as M
from jobs import tags
from jobs.spec import JobSpec
from jobs.train.checkpoints import load_checkpoint

log = logging.getLogger(__name__)

MODEL_NAME = "model"


def detector_from_checkpoint(checkpoint_dir: Path, spec: JobSpec | None = None):
    """The eager ISRN of a training checkpoint (in eval mode) and the spec it was trained with."""
    _, payload = load_checkpoint(checkpoint_dir)
    spec = spec or JobSpec.from_dict(payload["spec"])
    model = build_isrn(spec.model, loss=spec.loss, inference=spec.inference)
    model.load_state_dict(payload["model"])
    return model.eval(), spec


def model_requirements() -> list[str]:
    """What loading and running the logged model needs besides this package: torch (the exported
    program), numpy, OpenCV (decoding, letterbox) and mlflow (pyfunc), pinned to what logged it.
    MLflow's inference would add everything this process imported (colorama, boto3, ...), which a
    user loading the champion then gets warned about."""
    from importlib.metadata import version

    import mlflow

    torch_version = torch.__version__.split("+")[0]  # "2.13.0+cpu": the build is the installer's choice
    return [f"torch=={torch_version}", f"numpy=={np.__version__}", f"mlflow=={mlflow.__version__}",
            f"opencv-python-headless=={version('opencv-python-headless')}"]


def log_detector(tracking_uri: str, run_id: str, checkpoint_dir: Path, spec: JobSpec, *,
                 checkpoint_uri: str | None = None) -> str:
    """Log the checkpoint's model into `run_id` as the face-detector pyfunc; returns the model URI (`models:/m-…`).

    The logged model takes a column `image` of encoded photos and returns one row per face in each
    photo's pixels (`jobs.serving.pyfunc`). Its params default to the spec's evaluation settings:
    `max_size` = `loader.val_max_size`, `score_threshold` = `inference.score_threshold`, so the
    served model gives the AP training measured.
    """
    import mlflow

    from jobs.serving.pyfunc import log_face_detector

    model, _ = detector_from_checkpoint(checkpoint_dir, spec)
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.tracking.MlflowClient(tracking_uri)
    before = client.get_run(run_id).info
    # The fluent API refuses a run of another experiment than the process's active one.
    mlflow.set_experiment(experiment_id=before.experiment_id)
    with mlflow.start_run(run_id=run_id):
        info = log_face_detector(
            model, name=MODEL_NAME, max_size=spec.loader.val_max_size, score_threshold=spec.inference.score_threshold,
            pip_requirements=model_requirements(), params={"checkpoint": checkpoint_uri or str(checkpoint_dir)},
            metadata={"max_size": spec.loader.val_max_size, "output": "image,x1,y1,x2,y2,score",
                      "spec_fingerprint": spec.fingerprint()},
        )
        mlflow.set_tags({tags.MODEL_URI: info.model_uri, tags.BEST_CHECKPOINT: checkpoint_uri or ""})
    if before.end_time:
        # A finished run (a Tune trial) stays as it ended: leaving `start_run` marked it ended now.
        client.set_terminated(run_id, status=before.status, end_time=before.end_time)
    log.info("logged model %s", info.model_uri)
    return info.model_uri


def log_model_metrics(tracking_uri: str, run_id: str, model_uri: str, ap: Mapping[str, float], *, epoch: int,
                      step: int, val_manifest: str | None, breakdown: Mapping[str, float] | None = None) -> None:
    """Record the AP of the logged model's own weights on the model and on the run.

    `ap` maps `easy`/`medium`/`hard` to the AP that evaluating exactly the weights of `model_uri`
    (`models:/m-…`) gave on the val manifest `val_manifest`, after `epoch` at `step` (and `breakdown`,
    that evaluation's `val_ap_hard_<subset>` metrics). The LoggedModel
    gets metrics `val_ap_*` (step `step`, dataset digest = the val manifest) and params `best_epoch`,
    `best_step`; the run gets `best_val_ap_*`, `best_epoch`, `best_step`. `isrn promote` compares
    the model's `val_ap_*`, never the run's last value. (MLflow also adds the model's metrics to the
    run's `val_ap_*` history at `step`, where the evaluation that measured them already is.)
    """
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    model_id = model_uri.removeprefix("models:/")
    now = int(time.time() * 1000)
    dataset = {"dataset_name": "val", "dataset_digest": val_manifest} if val_manifest else {}
    on_model = [Metric(M.VAL_AP[k], float(v), now, step, model_id=model_id, **dataset) for k, v in ap.items()]
    # The same evaluation's Hard AP per face subset, which promotion shows beside the champion's.
    on_model += [Metric(k, float(v), now, step, model_id=model_id, **dataset) for k, v in (breakdown or {}).items()]
    on_run = [Metric(M.BEST_VAL_AP[k], float(v), now, step) for k, v in ap.items()]
    on_run += [Metric(M.BEST_EPOCH, float(epoch), now, step), Metric(M.BEST_STEP, float(step), now, step)]
    client.log_batch(run_id, metrics=on_model + on_run, synchronous=True)
    client.log_model_params(model_id, {M.BEST_EPOCH: str(epoch), M.BEST_STEP: str(step)})
