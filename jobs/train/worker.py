"""The per-worker training function: a short recipe of plain steps, read top to bottom.

Ray Train calls `train_loop_per_worker` on every worker; `run_worker` is the same loop with the
distribution and reporting passed in (`jobs/train/session.py`), so it also runs in one CPU process
(tests, benches):

    run_worker(spec, job, LocalSession(Path("/tmp/ckpt")))

Every rank calls `session.report` the same number of times (it is a barrier), rank 0 attaches the
checkpoints and logs to MLflow; collectives (evaluation's gather, the parameter checksum) run on
every rank.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_shards.loader import make_train_loader, make_val_loader
from data_shards.storage import S3Settings
from isrn_model.builder import build_isrn
from jobs.spec import JobSpec
from jobs.train.checkpoints import TrainingState, load_checkpoint, save_checkpoint, unwrap
from jobs.train.evaluation import evaluate_epoch, ground_truth_of
from jobs.train.init_from import initialise_from
from jobs.train.progress import ProgressSink
from jobs.train.schedule import build_optimizer, learning_rate, set_learning_rate
from jobs.train.session import LocalSession, RaySession, Session
from jobs.train.steps import GradientClock, train_step
from jobs.train.tracking import NullTracker, describe, make_tracker

__all__ = ["LocalSession", "RaySession", "WorkerJob", "run_worker", "train_loop_per_worker"]

log = logging.getLogger(__name__)

CHECKPOINT_SCORE = "checkpoint_score"
"""Ray ranks checkpoints by this: AP Hard of the checkpoint's own weights, UNEVALUATED for a checkpoint
no evaluation saw (kept only while it is the latest, to resume from; issue 12)."""
UNEVALUATED = -1.0
"""The score of an unevaluated checkpoint: below every AP (APs lie in [0, 1]) and finite, because Ray
writes its checkpoint bookkeeping as strict JSON, where -inf becomes null and a resumed run's
controller then fails to rank the checkpoints it restored."""


def is_evaluated(score: float) -> bool:
    """Whether a checkpoint score is an AP of the checkpoint's own weights."""
    return math.isfinite(score) and score >= 0.0


@dataclasses.dataclass(frozen=True)
class WorkerJob:
    """What the driver resolved for the workers (plain values, nothing secret: it travels through Ray)."""

    train_manifest: str
    val_manifest: str
    tracking_uri: str
    run_id: str | None
    faults: tuple[dict[str, Any], ...] = ()
    """Fault-injection plan of the platform's own tests (`jobs/train/faults.py`); empty otherwise."""
    progress: Any = None
    """A `ray.util.queue.Queue` the driver draws progress from (None: no display)."""
    verbose: bool = False
    """Keep Ray Train's per-report INFO lines (`isrn -v`)."""


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    steps_per_epoch: int
    epochs: int
    images_per_step: int

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: `config` = {"spec": resolved spec dict, "job": WorkerJob fields}."""
    job = WorkerJob(**config["job"])
    level = logging.INFO if job.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A Ray worker's root logger has its handlers already (basicConfig does nothing then): the
    # levels are set on the loggers themselves. Our per-step and per-epoch lines, and Ray Train's
    # "Reporting training result …" and "Checkpoint successfully created …" for every report, are
    # what the driver's progress display says once per epoch; `isrn -v` shows them.
    logging.getLogger("jobs").setLevel(level)
    if not job.verbose:
        from ray.train.v2._internal.execution import context as train_context

        logging.getLogger("ray.train").setLevel(logging.WARNING)
        # Train V2 names this logger by its file path, outside the "ray.train" tree.
        train_context.logger.setLevel(logging.WARNING)
    run_worker(JobSpec.model_validate(config["spec"]), job, RaySession(job.faults))


def run_worker(spec: JobSpec, job: WorkerJob, session: Session) -> TrainingState:
    is_main = session.rank == 0
    if spec.train.torch_threads:
        torch.set_num_threads(spec.train.torch_threads)
    torch.manual_seed(spec.train.seed + session.rank)
    np.random.seed(spec.train.seed + session.rank)
    device = session.device()
    settings = S3Settings.from_env()  # this process's environment: credentials never travel with the job
    tracker = make_tracker(is_main, job.tracking_uri, job.run_id)
    progress = ProgressSink(job.progress if is_main else None)

    model = build_isrn(spec.model, loss=spec.loss, inference=spec.inference)
    restore = session.restore_dir()
    if restore is None and spec.model.init_from:
        # Another run's weights start a new run only: a resumed run has its own (ISRN's stage 2).
        report = initialise_from(model, spec.model.init_from, settings=settings, tracking_uri=job.tracking_uri)
        tracker.log_text(report.table(), "init_from/report.md")
    if spec.model.norm == "bn" and session.world_size > 1 and device.type == "cuda":
        # SyncBatchNorm runs on GPU modules only; on CPU workers BN keeps per-worker statistics.
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = session.prepare_model(model.to(device))
    optimizer = build_optimizer(model, spec.optim)
    state = TrainingState()
    if restore is not None:
        state, _ = load_checkpoint(restore, model, optimizer)
        session.restored()
        log.info("rank %d resumed from %s at step %d (epoch %d)", session.rank, restore, state.step, state.epoch)
        tracker.log_metrics({"resumed_from_step": state.step}, step=state.step)
        progress.emit("resume", step=state.step, epoch=state.epoch)

    train_loader = make_train_loader(job.train_manifest, spec.loader, rank=session.rank,
                                     world_size=session.world_size, settings=settings)
    plan = EpochPlan(steps_per_epoch=len(train_loader) // spec.train.grad_accum_steps, epochs=spec.train.epochs,
                     images_per_step=spec.loader.batch_size * spec.train.grad_accum_steps * session.world_size)
    if plan.steps_per_epoch == 0:
        raise ValueError(f"loader.batch_size × train.grad_accum_steps × {session.world_size} workers exceeds the "
                         f"training split ({job.train_manifest}): no full step per epoch")
    train_loader.set_epoch(state.epoch)  # a resumed run continues with its epoch's shard order
    clock = GradientClock(model)
    try:
        _train(spec, job, plan, model, optimizer, train_loader, state, session, tracker, progress, device, clock,
               settings)
    except BaseException:
        try:  # what was logged before the failure should still reach the run; the failure is what matters
            tracker.close(timeout_s=30)
        except Exception as error:  # noqa: BLE001
            log.warning("could not flush the MLflow logs: %s", error)
        raise
    tracker.close()
    return state


def _train(spec: JobSpec, job: WorkerJob, plan: EpochPlan, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
           train_loader, state: TrainingState, session: Session, tracker: NullTracker, progress: ProgressSink,
           device: torch.device, clock: GradientClock, settings: S3Settings) -> None:
    """Epochs until `spec.train.epochs`: train, evaluate when due, report with a checkpoint."""
    is_main = session.rank == 0
    while state.epoch < spec.train.epochs:
        seconds: dict[str, float] = {}
        epoch_started = time.perf_counter()
        epoch_metrics = run_epoch(spec, plan, model, optimizer, train_loader, state, session, tracker, progress,
                                  device, clock, seconds)
        if state.epoch % spec.eval.every_epochs == 0 or state.epoch == spec.train.epochs:
            started = time.perf_counter()
            val_loader = make_val_loader(job.val_manifest, spec.loader, rank=session.rank,
                                         world_size=session.world_size, settings=settings)
            ap = evaluate_epoch(model, val_loader, device, ground_truth=ground_truth_of(job.val_manifest, settings),
                                epoch=state.epoch, is_main=is_main, tracker=tracker, grid_size=spec.eval.image_grid)
            seconds["evaluation"] = time.perf_counter() - started
            ap = _broadcast_ap(ap)  # every rank reports the same numbers (rank 1 used to report 0.0)
            state.last_ap, state.last_ap_epoch = ap, state.epoch
            state.best_ap_hard = max(state.best_ap_hard, ap["hard"])
            epoch_metrics.update({f"val_ap_{k}": v for k, v in ap.items()})
            progress.emit("evaluation", epoch=state.epoch, epochs=plan.epochs, ap=ap, seconds=seconds["evaluation"])
        started = time.perf_counter()
        _report(session, model, optimizer, state, spec, epoch_metrics)
        seconds["checkpoint"] = seconds.get("checkpoint", 0.0) + time.perf_counter() - started
        # What no timer covers (host-to-device copies, metric logging, progress events, the loop
        # itself): with it the shares are of the epoch's whole wall time (issue 16).
        seconds["other"] = max(0.0, time.perf_counter() - epoch_started - sum(seconds.values()))
        epoch_metrics.update(time_shares(seconds))
        tracker.log_metrics(epoch_metrics, step=state.step)
        if is_main:
            log.info("epoch %d: %s", state.epoch, describe(epoch_metrics))


def run_epoch(spec: JobSpec, plan: EpochPlan, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              train_loader, state: TrainingState, session: Session, tracker: NullTracker, progress: ProgressSink,
              device: torch.device, clock: GradientClock, seconds: dict[str, float]) -> dict[str, float]:
    """The remaining steps of `state.epoch`, with step metrics and mid-epoch checkpoints; returns the
    epoch's metrics. `seconds` accumulates where the time went (see `time_shares`)."""
    done_in_epoch = state.step - state.epoch * plan.steps_per_epoch
    progress.emit("epoch_start", epoch=state.epoch + 1, epochs=plan.epochs, steps=plan.steps_per_epoch,
                  done=done_in_epoch)
    batches = iter(train_loader)
    # A run resumed mid-epoch skips the batches it had trained on, so it sees the same batches an
    # uninterrupted run sees (the epoch's stream is a pure function of seed, epoch and rank).
    for _ in itertools.islice(batches, done_in_epoch * spec.train.grad_accum_steps):
        pass
    epoch_started = waited = time.perf_counter()
    losses: dict[str, float] = {}
    for _ in range(plan.steps_per_epoch - done_in_epoch):
        micro_batches = list(itertools.islice(batches, spec.train.grad_accum_steps))
        started = time.perf_counter()
        seconds["data_wait"] = seconds.get("data_wait", 0.0) + started - waited
        lr = learning_rate(state.step, plan.total_steps, spec.optim)
        set_learning_rate(optimizer, lr)
        losses = train_step(model, micro_batches, optimizer, step=state.step, device=device, amp=spec.train.amp,
                            grad_clip_norm=spec.train.grad_clip_norm, clock=clock, seconds=seconds)
        finished = time.perf_counter()
        state.step += 1
        session.step_done(state.step)
        images_per_s = plan.images_per_step / max(finished - waited, 1e-9)
        if state.step % spec.train.log_every_steps == 0 or state.step == plan.total_steps:
            metrics = {**losses, "lr": lr, "data_s": started - waited, "compute_s": finished - started,
                       "images_per_s": images_per_s,
                       "skipped_samples": sum(int(b.get("skipped", 0)) for b in micro_batches)}
            tracker.log_metrics(metrics, step=state.step)
            log.info("step %d/%d %s", state.step, plan.total_steps, describe(metrics))
        progress.emit("step", step_in_epoch=state.step - state.epoch * plan.steps_per_epoch, loss=losses["loss"],
                      images_per_s=images_per_s)
        every = spec.checkpoint.every_steps
        if every and state.step % every == 0 and state.step != (state.epoch + 1) * plan.steps_per_epoch:
            checkpointed = time.perf_counter()
            _report(session, model, optimizer, state, spec, {"loss": losses["loss"]})
            seconds["checkpoint"] = seconds.get("checkpoint", 0.0) + time.perf_counter() - checkpointed
        waited = time.perf_counter()
    state.epoch += 1
    steps = plan.steps_per_epoch - done_in_epoch
    train_s = time.perf_counter() - epoch_started
    progress.emit("epoch_end", epoch=state.epoch, epochs=plan.epochs, steps=steps, loss=losses.get("loss", math.nan),
                  images_per_s=steps * plan.images_per_step / max(train_s, 1e-9))
    return {
        "epoch": state.epoch,
        # Wall time of the epoch's steps, mid-epoch checkpoint reports included (bench/train_overhead.py).
        "epoch_train_s": train_s,
        "epoch_steps": steps,
        "ddp_param_divergence": parameter_divergence(model),
    }


def time_shares(seconds: dict[str, float]) -> dict[str, float]:
    """`time_share_<part>`: each part's fraction of the epoch's wall time (they sum to 1; `other` is
    what no timer covered)."""
    total = sum(seconds.values())
    return {f"time_share_{name}": value / total for name, value in sorted(seconds.items())} if total > 0 else {}


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


def _broadcast_ap(ap: dict[str, float] | None) -> dict[str, float]:
    from jobs.train.session import broadcast_from_rank_0

    return broadcast_from_rank_0(ap)


def _report(session: Session, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: TrainingState,
            spec: JobSpec, extra: dict[str, float]) -> None:
    """Report metrics on every rank; rank 0 attaches a checkpoint of the unwrapped model.

    `val_ap_*` is the latest evaluation's (what Tune's scheduler and search compare); the checkpoint's
    own score is `checkpoint_score`, an AP only when these weights were evaluated (`extra` holds
    the fresh `val_ap_*` then).
    """
    evaluated = "val_ap_hard" in extra
    metrics = {
        "step": state.step, "epoch": state.epoch,
        **{f"val_ap_{k}": v for k, v in state.last_ap.items()},
        "val_ap_hard": state.last_ap.get("hard", 0.0),
        CHECKPOINT_SCORE: float(extra["val_ap_hard"]) if evaluated else UNEVALUATED,
        "evaluated_epoch": state.last_ap_epoch,
        **extra,
    }
    if session.rank != 0:
        session.report(metrics, None)
        return
    # The session owns the directory from here (Ray deletes it after its background upload).
    directory = Path(tempfile.mkdtemp(prefix="isrn-ckpt-"))
    save_checkpoint(directory, unwrap(model), optimizer, state, spec.to_dict())
    session.report(metrics, directory)
