"""The per-worker training function: a short recipe of plain steps.

Ray Train calls `train_loop_per_worker` on every worker; `run_worker` is the same loop with the
distribution and reporting passed in, so it also runs in one CPU process (tests, bench):

    run_worker(spec, job, LocalSession(Path("/tmp/ckpt")))
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from data_shards.loader import make_train_loader, make_val_loader
from data_shards.storage import S3Settings
from isrn_model.builder import build_isrn
from jobs.spec import JobSpec
from jobs.train import faults
from jobs.train.checkpoint_store import CheckpointStore, StoredCheckpoint, checkpoint_dir_name, step_of
from jobs.train.checkpoints import TrainingState, load_checkpoint, save_checkpoint, unwrap
from jobs.train.evaluation import evaluate_epoch, ground_truth_of
from jobs.train.schedule import build_optimizer, learning_rate, set_learning_rate
from jobs.train.steps import train_step
from jobs.train.tracking import describe, make_tracker

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WorkerJob:
    """What the driver resolved for the workers (plain values: it travels through Ray)."""

    train_manifest: str
    val_manifest: str
    tracking_uri: str
    run_id: str | None
    faults: tuple[dict[str, Any], ...] = ()
    """Fault-injection plan of the platform's own tests (`jobs/train/faults.py`); empty otherwise."""


class Session(Protocol):
    """How a worker meets the outside: its rank, the model wrapper, reports and restores."""

    rank: int
    world_size: int

    def device(self) -> torch.device: ...
    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module: ...
    def restore_dir(self) -> Path | None: ...
    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None: ...
    def step_done(self, step: int) -> None: ...


class LocalSession:
    """One process, no Ray: checkpoints go to `checkpoint_root/step_N`, complete ones resume."""

    rank = 0
    world_size = 1

    def __init__(self, checkpoint_root: Path, restore_from: Path | None = None) -> None:
        self.checkpoint_root = Path(checkpoint_root)
        self.store = CheckpointStore.local(self.checkpoint_root)
        self._restore = restore_from
        self.reports: list[dict[str, Any]] = []

    def device(self) -> torch.device:
        return torch.device("cpu")

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def restore_dir(self) -> Path | None:
        if self._restore is not None:
            return self._restore
        latest = self.store.latest()
        return Path(latest.path) if latest else None

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        import shutil

        self.reports.append(dict(metrics))
        if checkpoint_dir is not None:
            self.store.upload(checkpoint_dir, step=metrics["step"], epoch=metrics["epoch"], metrics=metrics)
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
            self._restore = None

    def step_done(self, step: int) -> None:
        pass


class RaySession:
    """Inside a Ray Train worker: checkpoints in the run's storage folder, step-named, with markers."""

    def __init__(self, fault_plan: tuple[dict[str, Any], ...] = ()) -> None:
        import ray.train

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        storage = context.get_storage()  # a DeveloperAPI: Ray's own filesystem and run folder
        self.store = CheckpointStore(storage.storage_filesystem, storage.experiment_fs_path)
        self.faults = tuple(faults.Fault(**f) for f in fault_plan)

    def device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def restore_dir(self) -> Path | None:
        """A local copy of the checkpoint to resume from, the same on every rank (None: start fresh).

        Ray's registered checkpoint or the newest complete one in storage, whichever is later: a
        worker that died between its upload and Ray's collection of the report left the newer one
        in storage only (jobs/train/checkpoint_store.py).
        """
        import ray.train

        choice: StoredCheckpoint | None = None
        if self.rank == 0:
            registered = ray.train.get_checkpoint()
            stored = self.store.latest()
            choice = stored
            if registered is not None and (stored is None or (step_of(registered.path) or 0) > stored.step):
                choice = self.store.read(registered.path) or StoredCheckpoint(
                    step=step_of(registered.path) or 0, epoch=-1, path=registered.path)
            if choice is not None:
                source = "registered by Ray" if registered is not None and registered.path.rstrip("/") == choice.path \
                    else "found in storage, never registered by Ray"
                log.info("resuming from %s (step %d, %s)", choice.path, choice.step, source)
            # No upload of this run is in flight while a worker group starts: folders without a
            # marker are half uploads of a dead worker. (Later ones cannot exist: we resume from
            # the newest complete one and will overwrite the same step names.)
            for path in self.store.prune_incomplete():
                log.warning("removed the incomplete checkpoint folder %s", path)
        choice = _broadcast_from_rank_0(choice)
        if choice is None:
            return None
        return self.store.download(choice.path, Path(tempfile.mkdtemp(prefix="isrn-restore-")))

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        import ray.train
        from ray.train import CheckpointUploadMode

        if checkpoint_dir is None:
            # A barrier: every rank calls it the same number of times, only rank 0 passes a checkpoint.
            ray.train.report(metrics)
            return
        step, epoch = int(metrics["step"]), int(metrics["epoch"])

        def upload(checkpoint: "ray.train.Checkpoint", name: str) -> "ray.train.Checkpoint":
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


def _broadcast_from_rank_0(value: Any) -> Any:
    """Rank 0's `value` on every rank (a collective; the value itself without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=_collective_device())
    return box[0]


def _collective_device() -> torch.device | None:
    """NCCL moves objects through the GPU, gloo through the CPU."""
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: `config` = {"spec": resolved spec dict, "job": WorkerJob fields}."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    job = WorkerJob(**config["job"])
    run_worker(JobSpec.model_validate(config["spec"]), job, RaySession(job.faults))


def run_worker(spec: JobSpec, job: WorkerJob, session: Session) -> TrainingState:
    is_main = session.rank == 0
    if spec.train.torch_threads:
        torch.set_num_threads(spec.train.torch_threads)
    torch.manual_seed(spec.train.seed + session.rank)
    np.random.seed(spec.train.seed + session.rank)
    device = session.device()

    model = build_isrn(spec.model, loss=spec.loss, inference=spec.inference)
    if spec.model.norm == "bn" and session.world_size > 1 and device.type == "cuda":
        # SyncBatchNorm runs on GPU modules only; on CPU workers BN keeps per-worker statistics.
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = session.prepare_model(model.to(device))
    optimizer = build_optimizer(model, spec.optim)

    state = TrainingState()
    restore = session.restore_dir()
    tracker = make_tracker(is_main, job.tracking_uri, job.run_id)
    if restore is not None:
        state, _ = load_checkpoint(restore, model, optimizer)
        log.info("rank %d resumed from %s at step %d (epoch %d)", session.rank, restore, state.step, state.epoch)
        tracker.log_metrics({"resumed_from_step": state.step}, step=state.step)

    settings = S3Settings.from_env()  # this process's environment: credentials never travel with the job
    train_loader = make_train_loader(job.train_manifest, spec.loader, rank=session.rank,
                                     world_size=session.world_size, settings=settings)
    steps_per_epoch = len(train_loader) // spec.train.grad_accum_steps
    if steps_per_epoch == 0:
        raise ValueError(
            f"loader.batch_size × train.grad_accum_steps × {session.world_size} workers exceeds the "
            f"training split ({job.train_manifest}): no full step per epoch"
        )
    total_steps = steps_per_epoch * spec.train.epochs
    images_per_step = spec.loader.batch_size * spec.train.grad_accum_steps * session.world_size

    train_loader.set_epoch(state.epoch)  # a resumed run continues with its epoch's shard order
    while state.epoch < spec.train.epochs:
        done_in_epoch = state.step - state.epoch * steps_per_epoch
        batches = iter(train_loader)
        epoch_started = waited = time.perf_counter()
        for _ in range(steps_per_epoch - done_in_epoch):
            micro_batches = list(itertools.islice(batches, spec.train.grad_accum_steps))
            started = time.perf_counter()
            lr = learning_rate(state.step, total_steps, spec.optim)
            set_learning_rate(optimizer, lr)
            losses = train_step(model, micro_batches, optimizer, step=state.step, device=device,
                                amp=spec.train.amp, grad_clip_norm=spec.train.grad_clip_norm)
            finished = time.perf_counter()
            state.step += 1
            session.step_done(state.step)
            data_s, compute_s = started - waited, finished - started
            if state.step % spec.train.log_every_steps == 0 or state.step == total_steps:
                metrics = {**losses, "lr": lr, "data_s": data_s, "compute_s": compute_s,
                           "images_per_s": images_per_step / max(finished - waited, 1e-9),
                           "skipped_samples": sum(int(b.get("skipped", 0)) for b in micro_batches)}
                tracker.log_metrics(metrics, step=state.step)
                if is_main:
                    log.info("step %d/%d %s", state.step, total_steps, describe(metrics))
            every = spec.checkpoint.every_steps
            at_epoch_end = state.step == (state.epoch + 1) * steps_per_epoch
            if every and state.step % every == 0 and not at_epoch_end:
                _report(session, model, optimizer, state, spec, {"loss": losses["loss"]})
            waited = time.perf_counter()
        state.epoch += 1
        epoch_metrics: dict[str, float] = {
            "epoch": state.epoch,
            # Wall time of the epoch's steps, mid-epoch checkpoint reports included (bench/train_overhead.py).
            "epoch_train_s": time.perf_counter() - epoch_started,
            "epoch_steps": steps_per_epoch - done_in_epoch,
            "ddp_param_divergence": parameter_divergence(model),
        }
        if state.epoch % spec.eval.every_epochs == 0 or state.epoch == spec.train.epochs:
            val_loader = make_val_loader(job.val_manifest, spec.loader, rank=session.rank,
                                         world_size=session.world_size, settings=settings)
            ap = evaluate_epoch(model, val_loader, device, ground_truth=ground_truth_of(job.val_manifest, settings),
                                epoch=state.epoch, is_main=is_main, tracker=tracker, grid_size=spec.eval.image_grid)
            if ap is not None:
                state.last_ap = ap
                state.best_ap_hard = max(state.best_ap_hard, ap["hard"])
                epoch_metrics.update({f"val_ap_{k}": v for k, v in ap.items()})
        tracker.log_metrics(epoch_metrics, step=state.step)
        if is_main:
            log.info("epoch %d: %s", state.epoch, describe(epoch_metrics))
        _report(session, model, optimizer, state, spec, epoch_metrics)
    return state


def parameter_divergence(model: torch.nn.Module) -> float:
    """Largest difference between ranks of a float64 checksum of the parameters (0.0 when in sync).

    A collective: every rank calls it. DDP keeps replicas identical; this proves it each epoch.
    """
    import torch.distributed as dist

    checksum = torch.tensor(
        [float(sum(p.detach().double().sum() for p in unwrap(model).parameters()))], dtype=torch.float64
    )
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 0.0
    gathered = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, checksum)
    values = torch.cat(gathered)
    return float(values.max() - values.min())


def _report(session: Session, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: TrainingState,
            spec: JobSpec, extra: dict[str, float]) -> None:
    """Report metrics on every rank; rank 0 attaches a checkpoint of the unwrapped model."""
    metrics = {
        "step": state.step, "epoch": state.epoch,
        # Present in every report: Ray ranks checkpoints by it (the latest is always kept too).
        "val_ap_hard": state.last_ap.get("hard", 0.0),
        **{f"val_ap_{k}": v for k, v in state.last_ap.items()},
        **extra,
    }
    if session.rank != 0:
        session.report(metrics, None)
        return
    # The session owns the directory from here (Ray deletes it after its background upload).
    directory = Path(tempfile.mkdtemp(prefix="isrn-ckpt-"))
    save_checkpoint(directory, unwrap(model), optimizer, state, spec.to_dict())
    session.report(metrics, directory)
