"""`run_worker` under torchrun: the plain-DDP anchor that bench/train_overhead.py holds Ray Train to.

    torchrun --standalone --nproc-per-node 2 bench/torchrun_worker.py CONFIG.json RESULT.json

CONFIG.json is {"spec": resolved spec, "job": WorkerJob fields, "checkpoints": local folder}, what
Ray Train's `train_loop_per_worker` receives plus a folder. Every rank joins a gloo process group
from torchrun's environment and runs `jobs.train.worker.run_worker` with a `TorchrunSession`: rank
and world size from torch.distributed, the model in DistributedDataParallel, rank 0's checkpoints
copied to the folder. Nothing goes to MLflow: rank 0 keeps what it would log and its progress
events with the time each was emitted, and writes them to RESULT.json.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import harness  # noqa: F401 - this checkout first on sys.path
import torch
import torch.distributed as dist

from jobs.spec import JobSpec
from jobs.train import worker
from jobs.train.session import LocalSession
from jobs.train.tracking import NullTracker


class TorchrunSession(LocalSession):
    """A torchrun rank: `LocalSession`'s local checkpoint folder, DDP, rank and size from the process group."""

    def __init__(self, checkpoint_root: Path) -> None:
        super().__init__(checkpoint_root)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return torch.nn.parallel.DistributedDataParallel(model)  # what Ray's prepare_model does on CPU


class RecordingTracker(NullTracker):
    """Rank 0's metrics, kept instead of sent to MLflow."""

    def __init__(self) -> None:
        self.metrics: list[dict[str, float]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.metrics.append({"step": step, **metrics})


class TimedEvents:
    """Takes the place of the driver's progress queue: each event with the wall-clock time it was emitted."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, dict[str, Any]]] = []

    def put_nowait(self, event: Any) -> None:
        self.events.append((time.time(), type(event).__name__, dataclasses.asdict(event)))


def main() -> None:
    config_path, result_path = Path(sys.argv[1]), Path(sys.argv[2])
    config = json.loads(config_path.read_text())
    logging.basicConfig(level=logging.WARNING)
    spec = JobSpec.from_dict(config["spec"])
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=spec.scaling.collective_timeout_s))
    try:
        tracker, events = RecordingTracker(), TimedEvents()
        job = worker.WorkerJob(**{**config["job"], "progress": events})  # only rank 0 emits
        # No MLflow for the anchor: rank 0 records instead.
        worker.run_worker(spec, job, TorchrunSession(Path(config["checkpoints"])),
                          tracker=tracker if dist.get_rank() == 0 else NullTracker())
        if dist.get_rank() == 0:
            result_path.write_text(json.dumps({"events": events.events, "metrics": tracker.metrics}))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
