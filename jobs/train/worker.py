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
from jobs.train.checkpoints import TrainingState, load_checkpoint, save_checkpoint, unwrap
from jobs.train.evaluation import evaluate_epoch
from jobs.train.init_from import initialise_from
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
    s3: dict[str, Any]

    @property
    def s3_settings(self) -> S3Settings:
        return S3Settings(**self.s3)


class Session(Protocol):
    """How a worker meets the outside: its rank, the model wrapper, reports and restores."""

    rank: int
    world_size: int

    def device(self) -> torch.device: ...
    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module: ...
    def restore_dir(self) -> Path | None: ...
    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None: ...


class LocalSession:
    """One process, no Ray: checkpoints go to `checkpoint_root/step_N`."""

    rank = 0
    world_size = 1

    def __init__(self, checkpoint_root: Path, restore_from: Path | None = None) -> None:
        self.checkpoint_root = Path(checkpoint_root)
        self._restore = restore_from
        self.reports: list[dict[str, Any]] = []

    def device(self) -> torch.device:
        return torch.device("cpu")

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def restore_dir(self) -> Path | None:
        return self._restore

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir is not None:
            import shutil

            target = self.checkpoint_root / f"step_{metrics['step']:08d}"
            shutil.move(checkpoint_dir, target)
            self._restore = target


class RaySession:
    """Inside a Ray Train worker."""

    def __init__(self) -> None:
        import ray.train

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()

    def device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def restore_dir(self) -> Path | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        # A local copy: the checkpoint may live in S3.
        return Path(checkpoint.to_directory(tempfile.mkdtemp(prefix="isrn-restore-")))

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        import ray.train
        from ray.train import CheckpointUploadMode

        if checkpoint_dir is None:
            # A barrier: every rank calls it the same number of times, only rank 0 passes a checkpoint.
            ray.train.report(metrics)
            return
        # The upload to S3 runs in the background while training goes on (bench/train_overhead.py:
        # a synchronous upload cost ~15% of step time); Ray deletes the local copy once uploaded.
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint_dir)),
                         checkpoint_upload_mode=CheckpointUploadMode.ASYNC,
                         delete_local_checkpoint_after_upload=True)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: `config` = {"spec": resolved spec dict, "job": WorkerJob fields}."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_worker(JobSpec.model_validate(config["spec"]), WorkerJob(**config["job"]), RaySession())


def run_worker(spec: JobSpec, job: WorkerJob, session: Session) -> TrainingState:
    is_main = session.rank == 0
    if spec.train.torch_threads:
        torch.set_num_threads(spec.train.torch_threads)
    torch.manual_seed(spec.train.seed + session.rank)
    np.random.seed(spec.train.seed + session.rank)
    device = session.device()

    model = build_isrn(spec.model, loss=spec.loss, inference=spec.inference)
    restore = session.restore_dir()
    # Another run's weights start a new run only: a resumed run has its own (issue 14, ISRN's stage 2).
    init_report = None if restore is not None else initialise_from(
        model, spec.model.init_from, settings=job.s3_settings, tracking_uri=job.tracking_uri)
    if spec.model.norm == "bn" and session.world_size > 1 and device.type == "cuda":
        # SyncBatchNorm runs on GPU modules only; on CPU workers BN keeps per-worker statistics.
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = session.prepare_model(model.to(device))
    optimizer = build_optimizer(model, spec.optim)

    state = TrainingState()
    tracker = make_tracker(is_main, job.tracking_uri, job.run_id)
    if init_report is not None:
        tracker.log_text(init_report.table(), "init_from/report.md")
    if restore is not None:
        state, _ = load_checkpoint(restore, model, optimizer)
        log.info("rank %d resumed from %s at step %d (epoch %d)", session.rank, restore, state.step, state.epoch)
        tracker.log_metrics({"resumed_from_step": state.step}, step=state.step)

    settings = job.s3_settings
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
            ap = evaluate_epoch(model, val_loader, device, job=job, epoch=state.epoch, step=state.step,
                                is_main=is_main, tracker=tracker, grid_size=spec.eval.image_grid)
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
