"""What a training checkpoint holds, and how it is written and read (a directory Ray uploads)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

STATE_FILE = "training_state.pt"
BREAKDOWN_FILE = "breakdown.json"
"""Beside an evaluated checkpoint's state: its evaluation's AP by face subset (`WiderBreakdown.to_json`)."""


@dataclasses.dataclass
class TrainingState:
    """Where training stands: restored after a worker-group restart or `isrn train --resume`."""

    step: int = 0
    epoch: int = 0
    """Epochs completed."""
    best_ap_hard: float = 0.0
    last_ap: dict[str, float] = dataclasses.field(default_factory=dict)
    """AP per setting of the latest evaluation."""
    last_ap_epoch: int = 0
    """The epoch whose weights `last_ap` measured (0: none yet)."""


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (save and load the plain model's state)."""
    return model.module if hasattr(model, "module") else model


def save_checkpoint(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainingState,
                    spec: dict[str, Any], breakdown: dict[str, Any] | None = None) -> Path:
    """Write the model, optimiser and counters to `directory/training_state.pt`, and the evaluation of
    these weights by face subset, when they were evaluated, to `directory/breakdown.json`.

    The lr schedule is a pure function of the step and bf16 autocast needs no GradScaler, so
    the step is all the scheduler and scaler state there is.
    """
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "state": dataclasses.asdict(state),
        "spec": spec,
    }
    # Temporary name, then rename: a crash mid-write never leaves a readable half checkpoint.
    partial = directory / (STATE_FILE + ".partial")
    torch.save(payload, partial)
    partial.rename(directory / STATE_FILE)
    if breakdown is not None:
        (directory / BREAKDOWN_FILE).write_text(json.dumps(breakdown))
    return directory


def load_checkpoint(directory: Path, model: nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None) -> tuple[TrainingState, dict[str, Any]]:
    """Restore model and optimiser in place (when given); return the counters and the raw payload."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not an ISRN training checkpoint (no {STATE_FILE})")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if model is not None:
        unwrap(model).load_state_dict(payload["model"])
    if optimizer is not None:
        optimizer.load_state_dict(payload["optimizer"])
    return TrainingState(**payload["state"]), payload
