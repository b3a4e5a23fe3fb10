"""What a person sees while training runs: one progress bar per epoch and one line per evaluation.

Rank 0 sends small events through a Ray queue to the driver (`ProgressSink`), and the driver draws
them (`ProgressDisplay`): a tqdm bar with steps, images/s, loss and ETA on a terminal, one line per
epoch otherwise (a Ray job's log, CI). Ray Train's own per-report lines stay in the workers' logs
at INFO and reach the terminal only with `isrn -v` or when something goes wrong.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any, TextIO

log = logging.getLogger(__name__)


class ProgressSink:
    """The worker side: rank 0 emits, other ranks and runs without a display (Tune trials) do nothing."""

    def __init__(self, queue: Any | None) -> None:
        self.queue = queue

    def emit(self, kind: str, **data: Any) -> None:
        if self.queue is None:
            return
        try:
            self.queue.put_nowait((kind, data))
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
            self.handle(*event)

    def _drain(self) -> None:
        try:
            while not self.queue.empty():
                self.handle(*self.queue.get_nowait())
        except Exception:  # noqa: BLE001
            pass

    # ---- events ---------------------------------------------------------------------------------
    def handle(self, kind: str, data: dict[str, Any]) -> None:
        getattr(self, f"_on_{kind}", lambda _: None)(data)

    def _print(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.out)
        else:
            print(text, file=self.out, flush=True)

    def _on_resume(self, d: dict[str, Any]) -> None:
        self._print(f"resumed from the checkpoint of step {d['step']} (epoch {d['epoch']})")

    def _on_epoch_start(self, d: dict[str, Any]) -> None:
        self._epoch_started = time.monotonic()
        if not self.tty:
            return
        from tqdm import tqdm

        if self._bar is not None:
            self._bar.close()
        self._bar = tqdm(total=d["steps"], initial=d["done"], desc=f"epoch {d['epoch']}/{d['epochs']}",
                         unit="step", file=self.out, dynamic_ncols=True, leave=True)

    def _on_step(self, d: dict[str, Any]) -> None:
        if self._bar is None:
            return
        self._bar.update(d["step_in_epoch"] - self._bar.n)
        self._bar.set_postfix(loss=f"{d['loss']:.3f}", img_s=f"{d['images_per_s']:.1f}", refresh=False)

    def _on_epoch_end(self, d: dict[str, Any]) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            return
        self._print(f"epoch {d['epoch']}/{d['epochs']}: {d['steps']} steps, {d['images_per_s']:.1f} images/s, "
                    f"loss {d['loss']:.3f}, {time.monotonic() - self._epoch_started:.0f} s")

    def _on_evaluation(self, d: dict[str, Any]) -> None:
        self._print(f"epoch {d['epoch']}/{d['epochs']} val AP  {format_ap(d['ap'])}  ({d['seconds']:.0f} s)")
