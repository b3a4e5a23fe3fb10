"""Where an epoch's wall time goes: one `StepTimer` for the whole loop, and the gradient clock DDP needs.

Parts (`time_share_<part>` metrics, which sum to 1 over the epoch's wall time):
`data_wait` (the host waiting for the loader), `forward`, `backward`, `ddp_comm` (the gradient
all-reduce that backward waited for; the rest of it overlaps backward), `optimizer`, `checkpoint`
(reports, mid-epoch and at the epoch's end), `evaluation`, and `other` (what no timer covers).

On CPU every part is a wall-clock interval. On a GPU the host only enqueues work, so the compute
parts (forward, backward, ddp_comm, optimizer) are timed by CUDA events recorded on the stream —
the device's work, not the enqueue — and read once, at the end of the epoch (one wait per epoch,
not per step). Host-side parts (data wait, checkpoint, evaluation) stay wall-clock; on a GPU the
data wait overlaps the device's work on the previous step, so the parts can add up to more than
the wall time, and the shares are then of their sum.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

Mark = Any
"""A point in time: `time.perf_counter()` on CPU, a recorded `torch.cuda.Event` on a GPU."""


class StepTimer:
    """Seconds per part of the epoch (see the module docstring); `reset()` at each epoch's start."""

    def __init__(self, device: torch.device) -> None:
        self.on_cuda = device.type == "cuda"
        self._seconds: dict[str, float] = defaultdict(float)
        self._intervals: list[tuple[str, Mark, Mark]] = []

    def reset(self) -> None:
        self._seconds.clear()
        self._intervals.clear()

    def mark(self) -> Mark:
        """Now, on the device's clock (a CUDA event recorded on the current stream) or the host's."""
        if not self.on_cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def interval(self, part: str, start: Mark, end: Mark) -> None:
        """Add the time from `start` to `end` (two `mark()`s) to `part`; CUDA intervals are read later."""
        if self.on_cuda:
            self._intervals.append((part, start, end))
        else:
            self._seconds[part] += max(0.0, end - start)

    @contextlib.contextmanager
    def wall(self, part: str) -> Iterator[None]:
        """Time a host-side part (data wait, checkpoint, evaluation) by the wall clock."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self._seconds[part] += time.perf_counter() - started

    def add(self, part: str, seconds: float) -> None:
        self._seconds[part] += seconds

    def seconds(self) -> dict[str, float]:
        """Seconds per part so far; on a GPU this waits for the last recorded event (once)."""
        if self._intervals:
            self._intervals[-1][2].synchronize()
            for part, start, end in self._intervals:
                self._seconds[part] += start.elapsed_time(end) / 1000.0
            self._intervals.clear()
        return dict(self._seconds)

    def shares(self, wall_s: float) -> dict[str, float]:
        """Each part's fraction of the epoch (keys are part names), with `other` = wall time no part covers."""
        seconds = self.seconds()
        seconds["other"] = max(0.0, wall_s - sum(seconds.values()))
        total = sum(seconds.values())
        return {part: value / total for part, value in sorted(seconds.items())} if total > 0 else {}


class GradientClock:
    """When the last gradient of a backward pass was produced, from post-accumulate-grad hooks.

    DDP all-reduces gradient buckets while backward still computes, then `backward()` waits for
    the last buckets: the time from the last gradient to `backward()`'s return is the communication
    that training waits for (the rest overlaps compute). On a GPU the hook records a CUDA event (the
    same one, again and again: the last record is the last gradient), so the interval is the
    device's.
    """

    def __init__(self, model: nn.Module, timer: StepTimer) -> None:
        self.timer = timer
        self.last: Mark = None
        self.fired = False
        """Whether a gradient was produced since `start_backward` (else there is no last one)."""
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.register_post_accumulate_grad_hook(self._tick)

    def start_backward(self) -> None:
        self.fired = False
        self.last = torch.cuda.Event(enable_timing=True) if self.timer.on_cuda else None

    def _tick(self, _parameter: torch.Tensor) -> None:
        self.fired = True
        if self.timer.on_cuda:
            self.last.record()
        else:
            self.last = time.perf_counter()
