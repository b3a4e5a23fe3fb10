"""Plain step functions of the training loop. They run the same in one CPU process or a DDP worker."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from data_shards.loader import release_images
from isrn_model.tta import with_tta


class NonFiniteLossError(FloatingPointError):
    """A loss went NaN or infinite; the message carries the step and every loss term."""


def to_device(batch: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    images = batch["images"].to(device, non_blocking=True)
    targets = [{"boxes": t["boxes"].to(device, non_blocking=True)} for t in batch["targets"]]
    return images, targets


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPU when asked; a no-op on CPU (CPU autocast is slower for convs here)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class GradientClock:
    """When the last gradient of a backward pass was produced, from post-accumulate-grad hooks.

    DDP all-reduces gradient buckets while backward still computes, then `backward()` waits for
    the last buckets: the time from the last gradient to `backward()`'s return is the
    communication that training waits for (the rest overlaps compute).
    """

    def __init__(self, model: nn.Module) -> None:
        self.last = 0.0
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.register_post_accumulate_grad_hook(self._tick)

    def _tick(self, _parameter: torch.Tensor) -> None:
        self.last = time.perf_counter()


def train_step(
    model: nn.Module,
    micro_batches: list[dict[str, Any]],
    optimizer: torch.optim.Optimizer,
    *,
    step: int,
    device: torch.device,
    amp: bool = False,
    grad_clip_norm: float | None = None,
    clock: GradientClock | None = None,
    seconds: dict[str, float] | None = None,
) -> dict[str, float]:
    """One optimiser step over `micro_batches` (gradient accumulation); returns the mean losses.

    With DDP the gradients are all-reduced only on the last micro-batch (`no_sync` before it).
    `seconds` (when given) accumulates wall time under `forward`, `backward`, `ddp_comm` (the
    all-reduce backward waited for, measured with `clock`) and `optimizer`.
    """
    seconds = {} if seconds is None else seconds
    model.train()
    optimizer.zero_grad(set_to_none=True)
    totals: dict[str, float] = {}
    for index, batch in enumerate(micro_batches):
        images, targets = to_device(batch, device)
        last = index == len(micro_batches) - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            started = time.perf_counter()
            with autocast(device, amp):
                losses = model(images, targets)
            # The model has read the uint8 images (normalised them into float32, on the device):
            # the loader's worker may write a later batch into their buffer.
            release_images(batch)
            loss = sum(losses.values()) / len(micro_batches)
            values = {name: float(value.detach()) for name, value in losses.items()}
            if not all(math.isfinite(v) for v in values.values()):
                raise NonFiniteLossError(f"non-finite loss at step {step}: {values}")
            forwarded = time.perf_counter()
            loss.backward()
            finished = time.perf_counter()
        waited = max(0.0, finished - clock.last) if clock is not None and last and hasattr(model, "no_sync") else 0.0
        _add(seconds, forward=forwarded - started, backward=finished - forwarded - waited, ddp_comm=waited)
        for name, value in values.items():
            totals[name] = totals.get(name, 0.0) + value / len(micro_batches)
    started = time.perf_counter()
    if grad_clip_norm is not None:
        totals["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm))
    optimizer.step()
    _add(seconds, optimizer=time.perf_counter() - started)
    totals["loss"] = sum(v for k, v in totals.items() if k.startswith("loss_"))
    return totals


def _add(seconds: dict[str, float], **parts: float) -> None:
    for name, value in parts.items():
        seconds[name] = seconds.get(name, 0.0) + value


@torch.no_grad()
def detect_batch(model: nn.Module, batch: dict[str, Any],
                 device: torch.device) -> Iterator[tuple[tuple[str, str], np.ndarray, np.ndarray]]:
    """Detections of the valid images of a val batch, in original-image pixels.

    Yields ((event, image name), float64 [K, 4] boxes x1, y1, x2, y2, float64 [K] scores). Flip /
    multi-scale test runs when the model's `inference_config` asks for it.
    """
    model.eval()
    outputs = with_tta(model)(batch["images"].to(device))
    for output, key, scale, valid in zip(outputs, batch["keys"], batch["scales"], batch["valid"]):
        if not bool(valid):
            continue
        boxes = output["boxes"].double().cpu().numpy() / float(scale)
        yield tuple(key), boxes, output["scores"].double().cpu().numpy()
