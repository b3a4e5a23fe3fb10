"""How a training worker meets the outside: its rank, the model wrapper, reports, restores, progress.

`RaySession` is a Ray Train worker; `LocalSession` runs the same loop in one CPU process (tests,
benches). The loop in `jobs/train/worker.py` sees only the `Session` protocol, so distribution is a
wrapper around it, not a rewrite (Ray Train's own examples do the same with `prepare_model`).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

import torch

from jobs import metrics as M
from jobs.train.collectives import broadcast_from_rank_0
from jobs.train import faults
from jobs.train.checkpoint_store import COMPLETE_MARKER, CheckpointStore, StoredCheckpoint, checkpoint_dir_name
from jobs.train.lease import check_held

log = logging.getLogger(__name__)


class Session(Protocol):
    rank: int
    world_size: int

    def device(self) -> torch.device: ...
    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module: ...
    def restore_dir(self) -> Path | None: ...
    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None: ...
    def step_done(self, step: int) -> None: ...
    def restored(self) -> None: ...


class LocalSession:
    """One process, no Ray: checkpoints go to `checkpoint_root/step_N` with their markers, and a new
    session over the same root resumes from the newest complete one."""

    rank = 0
    world_size = 1

    def __init__(self, checkpoint_root: Path, restore_from: Path | None = None,
                 device: str | torch.device | None = None) -> None:
        self.checkpoint_root = Path(checkpoint_root)
        self.store = CheckpointStore.local(self.checkpoint_root)
        self._restore = restore_from
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.reports: list[dict[str, Any]] = []

    def device(self) -> torch.device:
        """The GPU when there is one (or the device given), else the CPU."""
        return self._device

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def restore_dir(self) -> Path | None:
        if self._restore is not None:
            return self._restore
        latest = self.store.latest()
        return Path(latest.path) if latest else None

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir is not None:
            self.store.upload(checkpoint_dir, step=metrics[M.STEP], epoch=metrics[M.EPOCH], metrics=metrics)
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
            self._restore = None

    def step_done(self, step: int) -> None:
        pass

    def restored(self) -> None:
        pass


class RaySession:
    """Inside a Ray Train worker: checkpoints in the run's storage folder, step-named, with markers."""

    def __init__(self, fault_plan: tuple[dict[str, Any], ...] = (), lease: dict[str, str] | None = None) -> None:
        import ray.train

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        storage = context.get_storage()  # a DeveloperAPI: Ray's own filesystem and run folder
        self.store = CheckpointStore(storage.storage_filesystem, storage.experiment_fs_path)
        self.faults = tuple(faults.Fault(**f) for f in fault_plan)
        self.lease = lease
        self._restore_copy: Path | None = None

    def _check_lease(self) -> None:
        """Before rank 0 deletes or uploads: the driver still holds the run (jobs/train/lease.py)."""
        if self.lease is not None:
            check_held(self.store.filesystem, self.lease["path"], self.lease["holder"])

    def device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def restore_dir(self) -> Path | None:
        """A local copy of the checkpoint to resume from, the same on every rank (None: start fresh).

        Ray's registered checkpoint or the newest complete one in storage, whichever is later
        (`choose_restore`); Ray's only once its marker is read back.
        """
        import ray.train

        choice: StoredCheckpoint | None = None
        if self.rank == 0:
            registered = ray.train.get_checkpoint()
            choice, source = choose_restore(self.store, registered.path if registered is not None else None)
            if choice is not None:
                log.warning("resuming from %s (step %d, %s)", choice.path, choice.step, source)
            # No upload of this run is in flight while a worker group starts: folders without a
            # marker are half uploads of a dead worker. Only the lease's holder deletes.
            self._check_lease()
            for path in self.store.prune_incomplete():
                log.warning("removed the incomplete checkpoint folder %s", path)
        choice = broadcast_from_rank_0(choice, self.device())
        if choice is None:
            return None
        self._restore_copy = self.store.download(choice.path, Path(tempfile.mkdtemp(prefix="isrn-restore-")))
        return self._restore_copy

    def restored(self) -> None:
        """The checkpoint is loaded: remove the local copy `restore_dir` made."""
        if self._restore_copy is not None:
            shutil.rmtree(self._restore_copy, ignore_errors=True)
            self._restore_copy = None

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        import ray.train
        from ray.train import CheckpointUploadMode

        if checkpoint_dir is None:
            # A barrier: every rank calls it the same number of times, only rank 0 passes a checkpoint.
            ray.train.report(metrics)
            return
        step, epoch = int(metrics[M.STEP]), int(metrics[M.EPOCH])

        def upload(checkpoint: "ray.train.Checkpoint", name: str) -> "ray.train.Checkpoint":
            self._check_lease()
            path = self.store.upload(Path(checkpoint.path), step=step, epoch=epoch, metrics=metrics)
            for index in faults.due(self.faults, "checkpoint_uploaded", step, self.rank):
                faults.fire(index, self.faults[index], self.store.filesystem, self.store.run_path)
            return ray.train.Checkpoint(path=path, filesystem=self.store.filesystem)

        # The upload runs in the background while training goes on (bench/train_overhead.py: a
        # synchronous upload cost ~15% of step time); Ray deletes the local copy once uploaded.
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint_dir)),
                         checkpoint_dir_name=checkpoint_dir_name(step),
                         checkpoint_upload_mode=CheckpointUploadMode.ASYNC,
                         delete_local_checkpoint_after_upload=True, checkpoint_upload_fn=upload)

    def step_done(self, step: int) -> None:
        for index in faults.due(self.faults, "step_end", step, self.rank):
            if self.faults[index].after_commit:
                import ray.train
                from ray.train import CheckpointConsistencyMode

                ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED)
            faults.fire(index, self.faults[index], self.store.filesystem, self.store.run_path)


def choose_restore(store: CheckpointStore, registered_path: str | None) -> tuple[StoredCheckpoint | None, str]:
    """(the checkpoint to resume from, where it was found): Ray's registered checkpoint or the newest
    complete one in `store`, whichever has the later step; None when there is neither.

    A worker that died between its upload and Ray's collection of the report left the newer one in
    storage only (jobs/train/checkpoint_store.py). Ray's registered checkpoint is trusted only once
    its marker is read back: a registered folder without one (a half upload, or deleted since) is
    passed over for the newest complete folder, and is pruned as incomplete before anyone loads it.
    """
    latest = store.latest()
    if registered_path is None:
        return latest, "found complete in storage"
    registered = store.read(registered_path)
    if registered is None:
        log.warning("Ray's registered checkpoint %s has no %s: not resuming from it", registered_path,
                    COMPLETE_MARKER)
        return latest, "found complete in storage; Ray's registered checkpoint was incomplete"
    if latest is None or registered.step >= latest.step:
        return registered, "registered by Ray"
    return latest, "found complete in storage, never registered by Ray"

