"""`model.init_from`: fetch another run's weights and load them into a fresh model, by name.

    report = initialise_from(model, spec.model.init_from, settings=job.s3_settings, tracking_uri=job.tracking_uri)

The source is one of
* a training checkpoint: a folder holding `training_state.pt` (`jobs/train/checkpoints.py`), as
  `s3://bucket/prefix/…/checkpoint_…` or a local path, or the `.pt` file itself;
* an MLflow model URI (`models:/name@alias`, `models:/m-…`, `runs:/RUN_ID/model`): the logged model
  carries the eager model as its extra file `isrn_model.pt` (`jobs/train/model_logging.py`).
Loading by name, and the report of what was loaded, skipped and left new, is `isrn_model.weights`.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import torch
from torch import Tensor, nn

from data_shards.storage import S3Settings, open_store
from isrn_model.weights import InitReport, load_by_name, state_dict_of
from jobs.train.checkpoints import STATE_FILE

log = logging.getLogger(__name__)

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
EAGER_MODEL_FILE = "isrn_model.pt"
"""The eager model file inside a logged model (`log_detector`'s extra file)."""


def _load(path: Path, source: str) -> dict[str, Tensor]:
    # weights_only: a checkpoint holds tensors and plain values only, and the file may come from anywhere.
    return state_dict_of(torch.load(path, map_location="cpu", weights_only=True), source)


def fetch_state_dict(uri: str, *, settings: S3Settings | None = None, tracking_uri: str | None = None) -> dict[str, Tensor]:
    """The model state dict at `uri` (see the module docstring); errors name the URI and what was expected."""
    with tempfile.TemporaryDirectory(prefix="isrn-init-") as directory:
        if uri.startswith(MLFLOW_SCHEMES):
            import mlflow

            try:
                local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=directory,
                                                                 tracking_uri=tracking_uri))
            except Exception as error:  # MlflowException, OSError: name the URI whatever failed
                raise FileNotFoundError(f"model.init_from {uri}: cannot download it from MLflow: {error}") from None
            found = [local] if local.name == EAGER_MODEL_FILE else sorted(local.rglob(EAGER_MODEL_FILE))
            if not found:
                raise FileNotFoundError(f"model.init_from {uri}: no {EAGER_MODEL_FILE} in the logged model (models "
                                        f"logged by `isrn train` carry it; give a checkpoint URL instead)")
            return _load(found[0], uri)
        folder, name = uri.rstrip("/").rsplit("/", 1) if uri.endswith(".pt") else (uri, STATE_FILE)
        target = Path(directory) / name
        store = open_store(folder, settings)
        if store.stat(name) is None:
            raise FileNotFoundError(f"model.init_from {uri}: no {store.url(name)}; give a checkpoint folder "
                                    f"(…/checkpoint_…), its {STATE_FILE}, or an MLflow model URI")
        with store.open(name) as stream, target.open("wb") as out:  # to disk: a checkpoint can be large
            shutil.copyfileobj(stream, out)
        return _load(target, uri)


def initialise_from(model: nn.Module, uri: str | None, *, settings: S3Settings | None = None,
                    tracking_uri: str | None = None) -> InitReport | None:
    """Load `uri`'s weights into `model` by name (nothing when `uri` is None); returns the report."""
    if uri is None:
        return None
    report = load_by_name(model, fetch_state_dict(uri, settings=settings, tracking_uri=tracking_uri), source=uri)
    log.info("%s", report.summary())
    return report
