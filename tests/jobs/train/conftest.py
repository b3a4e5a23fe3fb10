"""The training loop in one CPU process: `run_worker` through `LocalSession` on local shards."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_shards.manifest import manifest_url
from data_shards.shard_writer import build_split
from data_shards.synth import SynthConfig, generate_dataset
from jobs.spec import load_spec
from jobs.train import worker
from jobs.train.tracking import NullTracker


class RecordingTracker(NullTracker):
    """What rank 0 would log to MLflow, kept in memory."""

    def __init__(self) -> None:
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.texts: dict[str, str] = {}
        self.artifacts: list[tuple[str, str | None]] = []

    def log_metrics(self, metrics, step) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_artifact(self, path, artifact_path=None) -> None:
        self.artifacts.append((Path(path).name, artifact_path))

    def log_text(self, text: str, artifact_file: str) -> None:
        self.texts[artifact_file] = text

    def history(self, key: str) -> list[tuple[int, float]]:
        return [(step, m[key]) for step, m in self.metrics if key in m]


@pytest.fixture(scope="session")
def local_shards(tmp_path_factory) -> str:
    """A tiny generated WIDER set, sharded into a local folder (8 train, 2 val images)."""
    root = tmp_path_factory.mktemp("wider")
    generate_dataset(root, train=8, val=2, seed=4, config=SynthConfig(image_width=192, max_face=96))
    out = str(tmp_path_factory.mktemp("shards"))
    for split in ("train", "val"):
        build_split(root, split, out, progress=False)
    return out


def run_local(shards: str, checkpoints: Path, monkeypatch, *overrides: str, restore: Path | None = None):
    """The smoke spec at a tiny size for one CPU process; returns (session, tracker, final state)."""
    spec = load_spec("smoke", [f"data.shards={shards}", "train.epochs=1", "loader.num_workers=0",
                               "loader.batches_per_epoch=1", "loader.augment.out_size=128", "loader.val_max_size=192",
                               "checkpoint.every_steps=null", *overrides])
    job = worker.WorkerJob(train_manifest=manifest_url(shards, "train"), val_manifest=manifest_url(shards, "val"),
                           tracking_uri="", run_id=None)
    tracker = RecordingTracker()
    session = worker.LocalSession(checkpoints, restore_from=restore, device="cpu")
    state = worker.run_worker(spec, job, session, tracker=tracker)
    return session, tracker, state
