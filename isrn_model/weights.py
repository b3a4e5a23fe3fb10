"""Start a model from another model's weights, by parameter name (ISRN's COCO pre-training → WIDER FACE).

    report = load_by_name(model, state_dict_of(payload), source="s3://…/checkpoint_000012")
    print(report.table())

Pure: takes a state dict already in memory (fetching it from S3 or MLflow is the training job's
part, ``jobs/train/init_from.py``). A tensor present in both with the same shape is loaded; one only
in the source is skipped (e.g. a head the new model does not have); one only in the model keeps its
fresh initialisation. A tensor present in both with **different shapes is refused**: the two models
were built from different configs, and silently keeping a fresh layer there would hide it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn


@dataclass(frozen=True)
class InitReport:
    """What :func:`load_by_name` did: tensor names per outcome, each sorted."""

    source: str
    loaded: tuple[str, ...]
    """In the source and the model, same shape: copied."""
    skipped: tuple[str, ...]
    """In the source only: not used."""
    new: tuple[str, ...]
    """In the model only: freshly initialised."""

    def summary(self) -> str:
        return (f"{self.source}: {len(self.loaded)} tensors loaded, {len(self.skipped)} skipped (not in the "
                f"model), {len(self.new)} newly initialised")

    def table(self) -> str:
        """A Markdown table, one row per tensor (logged to MLflow as ``init_from/report.md``)."""
        rows = [f"# init_from {self.source}", "", self.summary(), "", "| tensor | outcome |", "| --- | --- |"]
        for outcome, names in (("newly initialised", self.new), ("skipped", self.skipped), ("loaded", self.loaded)):
            rows += [f"| `{name}` | {outcome} |" for name in names]
        return "\n".join(rows) + "\n"


def state_dict_of(payload: Any, source: str = "<payload>") -> dict[str, Tensor]:
    """The model state dict inside a loaded file: a training checkpoint (``{"model": …}``,
    ``jobs/train/checkpoints.py``), a saved model (``{"state_dict": …}``, ``isrn_model.export``) or a
    bare state dict. ValueError names ``source`` otherwise."""
    if isinstance(payload, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(payload.get(key), Mapping):
                return dict(payload[key])
        if payload and all(isinstance(v, Tensor) for v in payload.values()):
            return dict(payload)
    raise ValueError(f"{source}: holds no model state dict (expected a training checkpoint, an ISRN model "
                     f"file or a state dict)")


def load_by_name(model: nn.Module, state: Mapping[str, Tensor], *, source: str = "<state dict>") -> InitReport:
    """Copy every tensor of ``state`` whose name and shape the model has; report the rest.

    Raises ValueError naming each tensor whose shape differs (model shape vs source shape) before
    loading anything.
    """
    own = model.state_dict()
    mismatched = [f"{name}: model {list(own[name].shape)} vs source {list(value.shape)}"
                  for name, value in state.items() if name in own and own[name].shape != value.shape]
    if mismatched:
        raise ValueError(f"{source}: {len(mismatched)} tensor(s) differ in shape from the model (was the source "
                         f"built with another model config?): " + "; ".join(mismatched))
    loaded = sorted(name for name in state if name in own)
    model.load_state_dict({name: state[name] for name in loaded}, strict=False)
    return InitReport(source=source, loaded=tuple(loaded), skipped=tuple(sorted(set(state) - set(own))),
                      new=tuple(sorted(set(own) - set(state))))
