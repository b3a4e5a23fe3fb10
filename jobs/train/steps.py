"""Plain step functions of the training loop. They run the same in one CPU process or a DDP worker.

None of them reads a value back from the device: the losses stay tensors on the device until the
trainer reads them, once per logging interval (`jobs/train/trainer.py`), so a GPU never waits on
the host inside a step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from data_shards.loader import release_images
from isrn_model.tta import with_tta
from jobs.train.timing import GradientClock, StepTimer


class BatchFeeder:
    """Moves training batches to the device, keeping the loader's buffer reuse working.

    On a GPU the uint8 images are first copied into one of two reusable pinned (page-locked) host
    buffers, which releases the loader's shared-memory buffer at once (the worker may write the next
    batch into it), and then copied to the device asynchronously from pinned memory
    (`non_blocking=True` is only asynchronous from pinned memory). A buffer is reused only after
    its previous copy has finished (a CUDA event per buffer, normally long complete). On the CPU
    the images are used where they are and released once the model has read them.

    Boxes of the whole batch travel as one tensor (one copy instead of one per image).
    """

    def __init__(self, device: torch.device, *, pin_memory: bool = True, channels_last: bool = False) -> None:
        self.device = device
        self.staged = device.type == "cuda" and pin_memory
        self.channels_last = device.type == "cuda" and channels_last
        self._pinned: list[Tensor | None] = [None, None]
        self._copied: list[Any] = [None, None]
        self._next = 0

    def images(self, batch: dict[str, Any]) -> Tensor:
        """The batch's images on the device (uint8 [B, 3, S, S]; channels-last in memory when asked)."""
        images = batch["images"]
        if self.device.type == "cpu" or images.device == self.device:
            return self._layout(images)
        if not self.staged:
            out = images.to(self.device)
            release_images(batch)
            return self._layout(out)
        slot = self._next
        self._next = 1 - slot
        pinned = self._pinned[slot]
        if pinned is None or pinned.shape != images.shape or pinned.dtype != images.dtype:
            pinned = self._pinned[slot] = torch.empty(images.shape, dtype=images.dtype, pin_memory=True)
        elif self._copied[slot] is not None:
            self._copied[slot].synchronize()  # the copy out of this buffer two batches ago is done
        pinned.copy_(images)
        release_images(batch)
        out = pinned.to(self.device, non_blocking=True)
        event = self._copied[slot] = torch.cuda.Event()
        event.record()
        return self._layout(out)

    def _layout(self, images: Tensor) -> Tensor:
        # The model's weights are channels-last then too; the uint8 copy is a quarter of the float one.
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def targets(self, batch: dict[str, Any]) -> list[dict[str, Tensor]]:
        """The batch's targets with their boxes on the device, copied in one transfer."""
        boxes = [target["boxes"] for target in batch["targets"]]
        if self.device.type == "cpu" or all(b.device == self.device for b in boxes):
            return [{"boxes": b} for b in boxes]
        counts = [int(b.shape[0]) for b in boxes]  # host-side shapes: no device read
        moved = torch.cat(boxes).to(self.device, non_blocking=self.staged)
        return [{"boxes": b} for b in moved.split(counts)]

    def done_with(self, batch: dict[str, Any]) -> None:
        """The model has read the batch: a CPU batch's buffer goes back to the loader's worker."""
        if self.device.type == "cpu":
            release_images(batch)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPU when asked; a no-op on CPU (CPU autocast is slower for convs here).

    The detector computes its losses and post-processing in float32 whatever the autocast dtype.
    """
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(
    model: nn.Module,
    micro_batches: list[dict[str, Any]],
    optimizer: torch.optim.Optimizer,
    *,
    feeder: BatchFeeder,
    timer: StepTimer,
    clock: GradientClock | None = None,
    amp: bool = False,
    grad_clip_norm: float | None = None,
) -> dict[str, Tensor]:
    """One optimiser step over `micro_batches` (gradient accumulation); returns the mean losses.

    The returned values are detached 0-dim tensors on the device: each `loss_*` term, their sum
    `loss`, and `grad_norm` (before clipping) when `grad_clip_norm` is set. With DDP the gradients
    are all-reduced only on the last micro-batch (`no_sync` before it). `timer` accumulates
    `forward`, `backward`, `ddp_comm` (the all-reduce backward waited for, from `clock`) and
    `optimizer`.
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    ddp = hasattr(model, "no_sync")
    totals: dict[str, Tensor] = {}
    for index, batch in enumerate(micro_batches):
        last = index == len(micro_batches) - 1
        images, targets = feeder.images(batch), feeder.targets(batch)
        sync = contextlib.nullcontext() if last or not ddp else model.no_sync()
        with sync:
            started = timer.mark()
            with autocast(feeder.device, amp):
                losses = model(images, targets)
            feeder.done_with(batch)
            loss = sum(losses.values()) / len(micro_batches)
            forwarded = timer.mark()
            if clock is not None:
                clock.start_backward()
            loss.backward()
            finished = timer.mark()
        timer.interval("forward", started, forwarded)
        if clock is not None and ddp and last and clock.fired:
            timer.interval("backward", forwarded, clock.last)
            timer.interval("ddp_comm", clock.last, finished)
        else:
            timer.interval("backward", forwarded, finished)
        for name, value in losses.items():
            value = value.detach() / len(micro_batches)
            totals[name] = totals[name] + value if name in totals else value
    started = timer.mark()
    if grad_clip_norm is not None:
        totals["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm).detach()
    optimizer.step()
    timer.interval("optimizer", started, timer.mark())
    totals["loss"] = torch.stack([v for k, v in totals.items() if k.startswith("loss_")]).sum()
    return totals


@torch.no_grad()
def detect_batch(model: nn.Module, batch: dict[str, Any], device: torch.device, *,
                 amp: bool = False) -> Iterator[tuple[tuple[str, str], np.ndarray, np.ndarray]]:
    """Detections of the valid images of a val batch, in original-image pixels.

    Yields ((event, image name), float64 [K, 4] boxes x1, y1, x2, y2, float64 [K] scores). Flip /
    multi-scale test runs when the model's `inference_config` asks for it. With `amp` on a GPU the
    network runs under bf16 autocast; the detector's post-processing is float32 either way.
    """
    model.eval()
    with autocast(device, amp):
        outputs = with_tta(model)(batch["images"].to(device, non_blocking=True))
    for output, key, scale, valid in zip(outputs, batch["keys"], batch["scales"], batch["valid"]):
        if not bool(valid):
            continue
        boxes = output["boxes"].double().cpu().numpy() / float(scale)
        yield tuple(key), boxes, output["scores"].double().cpu().numpy()
