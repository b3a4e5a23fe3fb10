"""The training loop of one worker: a trainer object that owns the loop's state.

    trainer = Trainer.build(spec, job, session, tracker)     # model, optimizer, loader, restore
    state = trainer.fit()                                    # epochs until spec.train.epochs

`Trainer` holds what the loop shares between its steps (the model, optimizer, train loader,
session, tracker, progress sink, timer, and where training stands); its methods are the loop's
parts: `fit` → `train_epoch` → `train_step` (`jobs/train/steps.py`), `evaluate`, `report`. The
session (`jobs/train/session.py`: Ray Train, one CPU process, torchrun) and the tracker (MLflow on
rank 0, nothing elsewhere) are passed in: tests and benches inject their own, nothing is patched.

Every rank calls `session.report` the same number of times (it is a barrier), rank 0 attaches the
checkpoints and logs to MLflow; collectives (evaluation's gather, the parameter checksum, the AP
broadcast, the choice of checkpoint to resume from) run on every rank, with their tensors on the
worker's device (NCCL has no CPU tensors).
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
from torch import Tensor

from data_shards.loader import make_train_loader, make_val_loader
from data_shards.storage import S3Settings
from isrn_model.builder import build_isrn
from jobs import metrics as M
from jobs.spec import JobSpec
from jobs.train.checkpoint_store import UNEVALUATED
from jobs.train.checkpoints import TrainingState, load_checkpoint, save_checkpoint, unwrap
from jobs.train.evaluation import ValEvaluation, ground_truth_of
from jobs.train.init_from import initialise_from
from jobs.train.progress import EpochEnded, EpochStarted, Evaluated, ProgressSink, Resumed, StepDone
from jobs.train.schedule import build_optimizer, learning_rate, set_learning_rate
from jobs.train.collectives import broadcast_from_rank_0, parameter_spread
from jobs.train.session import Session
from jobs.train.steps import BatchFeeder, train_step
from jobs.train.timing import GradientClock, StepTimer
from jobs.train.tracking import Tracker, describe

log = logging.getLogger(__name__)

TRACKER_FLUSH_S = 10.0
"""How long a checkpoint report waits for MLflow to receive the metrics logged before it."""


class NonFiniteLossError(FloatingPointError):
    """A loss went NaN or infinite; the message carries the step and every loss term."""


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
    lease: dict[str, str] | None = None
    """The writer lease the driver holds (`{"path", "holder"}`, jobs/train/lease.py): rank 0 checks it
    before it prunes or uploads a checkpoint. None: no check (one process, no Ray)."""


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    steps_per_epoch: int
    epochs: int
    images_per_step: int

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs


class LossLog:
    """The step losses since they were last read, kept on the device.

    Reading a loss makes the host wait for the device, so the trainer reads them only when it logs,
    reports a checkpoint or ends an epoch: all pending steps in one transfer. A non-finite loss in
    any of them stops the run, naming the first such step and its terms.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[int, dict[str, Tensor]]] = []
        self.last: dict[str, float] = {}
        """The most recently read step's values."""

    def add(self, step: int, losses: dict[str, Tensor]) -> None:
        self._pending.append((step, losses))

    def read(self) -> dict[str, float]:
        """The latest step's values as floats (checking every pending step); {} before the first step."""
        if not self._pending:
            return self.last
        names = list(self._pending[-1][1])
        rows = torch.stack([torch.stack([losses[n].float() for n in names]) for _, losses in self._pending]).cpu()
        for (step, _), row in zip(self._pending, rows.tolist()):
            values = dict(zip(names, row))
            if not all(math.isfinite(v) for n, v in values.items() if n.startswith("loss")):
                self._pending.clear()
                raise NonFiniteLossError(f"non-finite loss at step {step}: {values}")
        self.last = dict(zip(names, rows[-1].tolist()))
        self._pending.clear()
        return self.last


class Trainer:
    """One worker's training loop (see the module docstring)."""

    def __init__(self, *, spec: JobSpec, job: WorkerJob, session: Session, tracker: Tracker, progress: ProgressSink,
                 model: torch.nn.Module, optimizer: torch.optim.Optimizer, train_loader: Any, state: TrainingState,
                 device: torch.device, settings: S3Settings) -> None:
        self.spec, self.job, self.session, self.tracker, self.progress = spec, job, session, tracker, progress
        self.model, self.optimizer, self.train_loader, self.state = model, optimizer, train_loader, state
        self.device, self.settings = device, settings
        self.is_main = session.rank == 0
        steps_per_epoch = len(train_loader) // spec.train.grad_accum_steps
        if steps_per_epoch == 0:
            raise ValueError(f"loader.batch_size × train.grad_accum_steps × {session.world_size} workers exceeds the "
                             f"training split ({job.train_manifest}): no full step per epoch")
        self.plan = EpochPlan(steps_per_epoch=steps_per_epoch, epochs=spec.train.epochs,
                              images_per_step=spec.loader.batch_size * spec.train.grad_accum_steps * session.world_size)
        self.timer = StepTimer(device)
        self.clock = GradientClock(model, self.timer)
        self.feeder = BatchFeeder(device, pin_memory=spec.train.pin_memory,
                                  channels_last=spec.train.channels_last)
        self.losses = LossLog()
        self.evaluation: ValEvaluation | None = None
        self.previous_breakdown = None
        """Rank 0's latest evaluation breakdown, which the next evaluation's bar chart compares with."""

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def build(cls, spec: JobSpec, job: WorkerJob, session: Session, tracker: Tracker,
              progress: ProgressSink | None = None) -> "Trainer":
        """Seed, build the model (from `model.init_from`, or the checkpoint it resumes from), wrap it for
        the session, build the optimizer and the train loader."""
        if spec.train.torch_threads:
            torch.set_num_threads(spec.train.torch_threads)
        torch.manual_seed(spec.train.seed + session.rank)
        np.random.seed(spec.train.seed + session.rank)
        device = session.device()
        settings = S3Settings.from_env()  # this process's environment: credentials never travel with the job
        progress = progress or ProgressSink(None)

        model = build_isrn(spec.model, loss=spec.loss, inference=spec.inference)
        restore = session.restore_dir()
        if restore is None and spec.model.init_from:
            # Another run's weights start a new run only: a resumed run has its own (ISRN's stage 2).
            report = initialise_from(model, spec.model.init_from, settings=settings, tracking_uri=job.tracking_uri)
            tracker.log_text(report.table(), "init_from/report.md")
        model = prepare_for_device(model, spec, device, distributed=session.world_size > 1)
        model = session.prepare_model(model)
        optimizer = build_optimizer(model, spec.optim)
        state = TrainingState()
        if restore is not None:
            state, _ = load_checkpoint(restore, model, optimizer)
            session.restored()
            log.info("rank %d resumed from %s at step %d (epoch %d)", session.rank, restore, state.step, state.epoch)
            tracker.log_metrics({M.RESUMED_FROM_STEP: state.step}, step=state.step)
            progress.emit(Resumed(step=state.step, epoch=state.epoch))
        train_loader = make_train_loader(job.train_manifest, spec.loader, rank=session.rank,
                                         world_size=session.world_size, settings=settings)
        train_loader.set_epoch(state.epoch)  # a resumed run continues with its epoch's shard order
        return cls(spec=spec, job=job, session=session, tracker=tracker, progress=progress, model=model,
                   optimizer=optimizer, train_loader=train_loader, state=state, device=device, settings=settings)

    # ---- the loop -------------------------------------------------------------------------------
    def fit(self) -> TrainingState:
        """Epochs until `train.epochs`: train, evaluate when due, report with a checkpoint."""
        spec, state = self.spec, self.state
        while state.epoch < spec.train.epochs:
            self.timer.reset()
            epoch_started = time.perf_counter()
            metrics = self.train_epoch()
            breakdown: dict[str, float] = {}
            if state.epoch % spec.eval.every_epochs == 0 or state.epoch == spec.train.epochs:
                with self.timer.wall("evaluation"):
                    metrics.update(self.evaluate())
                if self.previous_breakdown is not None:  # rank 0: to MLflow, and into this checkpoint
                    breakdown = M.breakdown_metrics(self.previous_breakdown)
            with self.timer.wall("checkpoint"):
                # Logged before the checkpoint is reported (which flushes them): a run resumed from this
                # checkpoint starts at the next epoch, so this epoch's metrics must already be in MLflow.
                # The breakdown is not reported to Ray: Tune's tables would list every subset.
                self.tracker.log_metrics({**metrics, **breakdown}, step=state.step)
                self.report(metrics)
            # The shares are of the epoch's whole wall time: `other` is what no timer covers
            # (host-to-device copies, metric logging, progress events, the loop itself).
            shares = self.timer.shares(time.perf_counter() - epoch_started)
            shares = {M.time_share(part): share for part, share in shares.items()}
            self.tracker.log_metrics(shares, step=state.step)
            if self.is_main:
                log.info("epoch %d: %s", state.epoch, describe({**metrics, **breakdown, **shares}))
        return state

    def train_epoch(self) -> dict[str, float]:
        """The remaining steps of the current epoch, with step metrics and mid-epoch checkpoints; returns
        the epoch's metrics."""
        spec, plan, state = self.spec, self.plan, self.state
        accum = spec.train.grad_accum_steps
        done_in_epoch = state.step - state.epoch * plan.steps_per_epoch
        self.progress.emit(EpochStarted(epoch=state.epoch + 1, epochs=plan.epochs, steps=plan.steps_per_epoch,
                                        done=done_in_epoch))
        batches = iter(self.train_loader)
        # A run resumed mid-epoch skips the batches it had trained on, so it sees the same batches an
        # uninterrupted run sees (the epoch's stream is a pure function of seed, epoch and rank).
        for _ in itertools.islice(batches, done_in_epoch * accum):
            pass
        epoch_started = interval_started = waited = time.perf_counter()
        interval = _Interval()
        for _ in range(plan.steps_per_epoch - done_in_epoch):
            micro_batches = list(itertools.islice(batches, accum))
            started = time.perf_counter()
            self.timer.add("data_wait", started - waited)
            interval.data_s += started - waited
            interval.skipped += sum(int(b.get("skipped", 0)) for b in micro_batches)
            lr = learning_rate(state.step, plan.total_steps, spec.optim)
            set_learning_rate(self.optimizer, lr)
            self.losses.add(state.step + 1, self.train_step(micro_batches))
            state.step += 1
            interval.steps += 1
            self.session.step_done(state.step)
            logged = state.step % spec.train.log_every_steps == 0 or state.step == plan.total_steps
            step_in_epoch = state.step - state.epoch * plan.steps_per_epoch
            if logged:
                losses = self.losses.read()  # the host waits for the device here, once per interval
                now = time.perf_counter()
                wall = max(now - interval_started, 1e-9)
                images_per_s = interval.steps * plan.images_per_step / wall
                self.tracker.log_metrics({**losses, M.LEARNING_RATE: lr, M.DATA_SECONDS: interval.data_s / interval.steps,
                                          M.COMPUTE_SECONDS: (wall - interval.data_s) / interval.steps,
                                          M.IMAGES_PER_SECOND: images_per_s, M.SKIPPED_SAMPLES: interval.skipped},
                                         step=state.step)
                log.info("step %d/%d %s", state.step, plan.total_steps, describe(losses))
                self.progress.emit(StepDone(step_in_epoch, loss=losses[M.LOSS], images_per_s=images_per_s))
                interval_started, interval = now, _Interval()
            else:
                self.progress.emit(StepDone(step_in_epoch))
            every = spec.checkpoint.every_steps
            if every and state.step % every == 0 and state.step != (state.epoch + 1) * plan.steps_per_epoch:
                with self.timer.wall("checkpoint"):
                    self.report({M.LOSS: self.losses.read()[M.LOSS]})
            waited = time.perf_counter()
        last = self.losses.read()
        state.epoch += 1
        steps = plan.steps_per_epoch - done_in_epoch
        train_s = time.perf_counter() - epoch_started
        self.progress.emit(EpochEnded(epoch=state.epoch, epochs=plan.epochs, steps=steps,
                                      loss=last.get(M.LOSS, math.nan),
                                      images_per_s=steps * plan.images_per_step / max(train_s, 1e-9)))
        return {
            M.EPOCH: state.epoch,
            # Wall time of the epoch's steps, mid-epoch checkpoint reports included (bench/train_overhead.py).
            M.EPOCH_TRAIN_SECONDS: train_s,
            M.EPOCH_STEPS: steps,
            M.PARAM_DIVERGENCE: parameter_spread(unwrap(self.model), self.device),
        }

    def train_step(self, micro_batches: list[dict[str, Any]]) -> dict[str, Tensor]:
        """One optimiser step; the losses stay on the device (`LossLog`)."""
        return train_step(self.model, micro_batches, self.optimizer, feeder=self.feeder, timer=self.timer,
                          clock=self.clock, amp=self.spec.train.amp, grad_clip_norm=self.spec.train.grad_clip_norm)

    def evaluate(self) -> dict[str, float]:
        """The official WIDER FACE AP of the current weights, the same on every rank (`val_ap_<setting>`);
        rank 0 keeps the breakdown by face subset (`previous_breakdown`)."""
        spec, state = self.spec, self.state
        started = time.perf_counter()
        if self.evaluation is None:  # the ground truth is fetched at the first evaluation
            self.evaluation = ValEvaluation.of(spec, ground_truth_of(self.job.val_manifest, self.settings),
                                               self.device, self.tracker, self.is_main)
        val_loader = make_val_loader(self.job.val_manifest, spec.loader, rank=self.session.rank,
                                     world_size=self.session.world_size, settings=self.settings)
        breakdown = self.evaluation.run(self.model, val_loader, epoch=state.epoch, previous=self.previous_breakdown)
        ap = None if breakdown is None else {setting: _reported_ap(breakdown, setting) for setting in M.VAL_AP}
        ap = broadcast_from_rank_0(ap, self.device)  # every rank reports the same numbers
        state.last_ap, state.last_ap_epoch = ap, state.epoch
        state.best_ap_hard = max(state.best_ap_hard, ap["hard"])
        self.progress.emit(Evaluated(epoch=state.epoch, epochs=self.plan.epochs, ap=ap,
                                     seconds=time.perf_counter() - started))
        if breakdown is not None:
            self.previous_breakdown = breakdown
        return {M.VAL_AP[setting]: value for setting, value in ap.items()}

    def report(self, extra: dict[str, float]) -> None:
        """Report metrics on every rank; rank 0 attaches a checkpoint of the unwrapped model.

        `val_ap_*` is the latest evaluation's (what Tune's scheduler and search compare); the
        checkpoint's own score is `checkpoint_score`, an AP only when these weights were evaluated
        (`extra` holds the fresh `val_ap_*` then).
        """
        state = self.state
        evaluated = M.VAL_AP_HARD in extra
        metrics = {
            M.STEP: state.step, M.EPOCH: state.epoch,
            **{M.VAL_AP[setting]: value for setting, value in state.last_ap.items()},
            M.VAL_AP_HARD: state.last_ap.get("hard", 0.0),
            M.CHECKPOINT_SCORE: float(extra[M.VAL_AP_HARD]) if evaluated else UNEVALUATED,
            M.EVALUATED_EPOCH: state.last_ap_epoch,
            **extra,
        }
        if not self.is_main:
            self.session.report(metrics, None)
            return
        # What was logged up to this checkpoint reaches MLflow before a run can resume from it; a rank 0
        # lost afterwards loses only what follows, which the resumed run logs again. Bounded, so that
        # training goes on while MLflow is away (the metrics wait in the queue meanwhile).
        if not self.tracker.flush(timeout_s=TRACKER_FLUSH_S):
            log.warning("MLflow has not received the metrics logged before the checkpoint at step %d within %.0f s;"
                        " training goes on, they are sent when it answers", state.step, TRACKER_FLUSH_S)
        # The session owns the directory from here (Ray deletes it after its background upload).
        directory = Path(tempfile.mkdtemp(prefix="isrn-ckpt-"))
        save_checkpoint(directory, unwrap(self.model), self.optimizer, state, self.spec.to_dict(),
                        breakdown=self.previous_breakdown.to_json() if evaluated and self.previous_breakdown else None)
        self.session.report(metrics, directory)


@dataclasses.dataclass
class _Interval:
    """What happened since the last logged step."""

    steps: int = 0
    data_s: float = 0.0
    skipped: int = 0


def prepare_for_device(model: torch.nn.Module, spec: JobSpec, device: torch.device, *,
                       distributed: bool) -> torch.nn.Module:
    """The model on `device` with the spec's device options (the GPU-only ones ignored on the CPU).

    - channels-last weights (`train.channels_last`), on any device (the field says what it gains);
    - SyncBatchNorm for `model.norm: bn` with several GPU workers (it runs on GPU modules only);
    - cuDNN's autotuner (`train.cudnn_benchmark`): the training crops have one fixed size;
    - `torch.compile` of the dense part (`train.compile`): backbone, neck and heads, compiled in place
      so the state dict keeps its names. Anchor matching, the losses and post-processing stay eager:
      their shapes depend on the number of faces and detections of each batch.
    """
    train, gpu = spec.train, device.type == "cuda"
    if gpu:
        torch.cuda.set_device(device)  # the device NCCL's object collectives use (`torch.cuda.current_device`)
        torch.backends.cudnn.benchmark = train.cudnn_benchmark
        if spec.model.norm == "bn" and distributed:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if gpu and train.compile:
        for part in (model.backbone, model.neck, *model.heads):
            part.compile()
    return model


def _reported_ap(breakdown: Any, setting: str) -> float:
    """The setting's official AP, or 0.0 when the val set holds none of its faces.

    The official protocol's AP of a setting without faces is 0/0 (NaN); Ray keeps its checkpoint
    bookkeeping as strict JSON and MLflow cannot rank NaN, so a report says 0.0 and the log says why
    (a small or filtered val set, e.g. generated images with no face large enough for Easy).
    """
    if breakdown.faces(setting) == 0:
        log.warning("the val set has no %s faces: %s is reported as 0", setting, M.VAL_AP[setting])
        return 0.0
    return float(breakdown.ap(setting))

