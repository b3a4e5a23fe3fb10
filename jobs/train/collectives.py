"""Every collective the training worker uses, in one place, each with its tensors on the worker's device.

NCCL (the GPU backend) has no CPU tensors: a collective handed a CPU tensor on an NCCL group raises.
So every tensor here is made on, or moved to, `device` explicitly, and the object collectives
(`broadcast_object_list`, `gather_object`) are given the device their byte tensors travel through
(NCCL's use `torch.cuda.current_device()`, which the trainer sets). `bench/gpu_check.py` runs each
of them in a 1-rank NCCL group on a GPU; on a CPU they run in a gloo group.

Each is a collective: every rank calls it, in the same order. Without a process group they return
the local value; in a group of one they still run (the GPU check depends on that).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _object_device(device: torch.device) -> torch.device | None:
    """Where an object collective's bytes travel: the GPU for NCCL, the CPU (None) for gloo."""
    return device if dist.get_backend() == "nccl" else None


def broadcast_from_rank_0(value: Any, device: torch.device) -> Any:
    """Rank 0's `value` (any picklable object) on every rank."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=_object_device(device))
    return box[0]


def gather_to_rank_0(part: Any, device: torch.device) -> list[Any] | None:
    """Every rank's `part` on rank 0, in rank order (None on the other ranks)."""
    if not is_distributed():
        return [part]
    if dist.get_backend() == "nccl":
        # gather_object's bytes go through torch.cuda.current_device(): it must be this worker's GPU.
        torch.cuda.set_device(device)
    parts: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(part, parts, dst=0)
    return parts


def parameter_spread(model: torch.nn.Module, device: torch.device) -> float:
    """Largest difference between ranks of a float64 checksum of `model`'s parameters (0.0 when in sync).

    DDP keeps the replicas identical; this proves it once an epoch. The checksum is summed on the
    parameters' device and gathered on `device`; one value is read back.
    """
    if not is_distributed():
        return 0.0
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1).to(device)
    gathered = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, checksum)
    values = torch.cat(gathered)
    return float(values.max() - values.min())
