"""What a person sees while training runs: one progress bar per epoch and one line per evaluation.

Rank 0 sends small typed events through a Ray queue to the driver (`ProgressSink`), and the driver
draws them (`ProgressDisplay`): a tqdm bar with steps, images/s, loss and ETA on a terminal, one line
per epoch otherwise (a Ray job's log, CI). Ray Train's own per-report lines stay in the workers' logs
at INFO and reach the terminal only with `isrn -v` or when something goes wrong.

The events are dataclasses, so a misspelt field fails where the event is made, and the display
handles each type explicitly: an event type it does not know is an error, not silently dropped.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
import time
from typing import Any, TextIO

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Resumed:
    step: int
    epoch: int


@dataclasses.dataclass(frozen=True)
class EpochStarted:
    epoch: int
    """1-based number of the epoch starting."""
    epochs: int
    steps: int
    """Steps in the epoch."""
    done: int
    """Steps of this epoch already done (a run resumed mid-epoch)."""


@dataclasses.dataclass(frozen=True)
class StepDone:
    step_in_epoch: int
    loss: float | None = None
    """The step's loss, on logging steps only: reading it makes the host wait for the device."""
    images_per_s: float | None = None


@dataclasses.dataclass(frozen=True)
class EpochEnded:
    epoch: int
    epochs: int
    steps: int
    loss: float
    images_per_s: float


@dataclasses.dataclass(frozen=True)
class Evaluated:
    epoch: int
    epochs: int
    ap: dict[str, float]
    seconds: float


ProgressEvent = Resumed | EpochStarted | StepDone | EpochEnded | Evaluated


class ProgressSink:
    """The worker side: rank 0 emits, other ranks and runs without a display (Tune trials) do nothing."""

    def __init__(self, queue: Any | None) -> None:
        self.queue = queue

    def emit(self, event: ProgressEvent) -> None:
        if self.queue is None:
            return
        try:
            self.queue.put_nowait(event)
        except Exception as error:  # noqa: BLE001 - the display is a convenience, never a reason to stop training
            log.debug("progress event dropped: %s", error)
            self.queue = None


def format_ap(ap: dict[str, float]) -> str:
    return "  ".join(f"{setting} {value:.3f}" for setting, value in ap.items())


class ProgressDisplay:
    """The driver side: a thread draining the queue until `close()`."""

    def __init__(self, queue: Any, out: TextIO | None = None, tty: bool | None = None) -> None:
        self.queue, self.out = queue, out or sys.stderr
        self.tty = self.out.isatty() if tty is None else tty
        self._bar: Any = None
        self._epoch_started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="isrn-progress", daemon=True)

    def __enter__(self) -> "ProgressDisplay":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._drain()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                event = self.queue.get(timeout=0.5)
            except Exception:  # noqa: BLE001 - Empty, or the queue actor gone with the cluster
                continue
            self.handle(event)

    def _drain(self) -> None:
        try:
            while not self.queue.empty():
                self.handle(self.queue.get_nowait())
        except Exception:  # noqa: BLE001
            pass

    # ---- events ---------------------------------------------------------------------------------
    def handle(self, event: ProgressEvent) -> None:
        match event:
            case Resumed():
                self._print(f"resumed from the checkpoint of step {event.step} (epoch {event.epoch})")
            case EpochStarted():
                self._epoch_started_at(event)
            case StepDone():
                self._step(event)
            case EpochEnded():
                self._epoch_ended(event)
            case Evaluated():
                self._print(f"epoch {event.epoch}/{event.epochs} val AP  {format_ap(event.ap)}  "
                            f"({event.seconds:.0f} s)")
            case _:
                raise TypeError(f"unknown progress event {event!r}")

    def _print(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.out)
        else:
            print(text, file=self.out, flush=True)

    def _epoch_started_at(self, event: EpochStarted) -> None:
        self._epoch_started = time.monotonic()
        if not self.tty:
            return
        from tqdm import tqdm

        if self._bar is not None:
            self._bar.close()
        self._bar = tqdm(total=event.steps, initial=event.done, desc=f"epoch {event.epoch}/{event.epochs}",
                         unit="step", file=self.out, dynamic_ncols=True, leave=True)

    def _step(self, event: StepDone) -> None:
        if self._bar is None:
            return
        self._bar.update(event.step_in_epoch - self._bar.n)
        if event.loss is not None and event.images_per_s is not None:
            self._bar.set_postfix(loss=f"{event.loss:.3f}", img_s=f"{event.images_per_s:.1f}", refresh=False)

    def _epoch_ended(self, event: EpochEnded) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            return
        self._print(f"epoch {event.epoch}/{event.epochs}: {event.steps} steps, {event.images_per_s:.1f} images/s, "
                    f"loss {event.loss:.3f}, {time.monotonic() - self._epoch_started:.0f} s")
