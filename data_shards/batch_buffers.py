"""Training batches written into reused shared memory instead of a fresh segment per batch.

A tensor a dataloader worker returns travels to the training process through shared memory:
PyTorch copies it into a new segment for every batch, and the kernel allocates, zeroes and maps
every page of that segment on first touch. For one 8 × 3 × 640² uint8 batch (9.8 MB) a worker
spent ~22 ms of CPU on batching and that copy (py-spy: `UntypedStorage._share_fd_cpu_` in the
queue's feeder thread), against ~55 ms to decode and augment the 8 images. A worker here writes
each batch straight into a buffer that already lives in shared memory and was handed back (~8 ms
per batch): the pages are mapped once per worker, and the queue sends only the buffer's file
descriptor. bench/loader_throughput.py prints the loader's share of the decode limit.

    buffers = BatchBuffers(capacity=4)              # in the worker
    images = buffers.take((8, 3, 640, 640))         # uint8, shared, released by the trainer
    write_rgb_planes(bgr_image, images[0])          # the contract's RGB [3, S, S] layout
    ...                                             # (DataLoader sends it)
    losses = model(images, targets); release(images)  # in the training process, once read

Each buffer's storage holds the batch and one trailing flag byte (1: handed out, 0: free). The
worker reuses a buffer only when its flag is 0; the receiving process sets it to 0 after it has
finished reading the batch (the training step does, through `release_images`, once the model has
normalised the images into float32). When every buffer is out (a consumer that keeps its batches),
`take` allocates a fresh one: never a wait, never an overwrite of a batch still in use.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

_FREE, _TAKEN = 0, 1


def _flag(storage: torch.UntypedStorage, offset: int) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8).set_(storage, offset, (1,))


class BatchBuffers:
    """Up to `capacity` uint8 batch buffers in shared memory, owned by one worker process."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._buffers: list[tuple[torch.UntypedStorage, torch.Tensor]] = []
        self.allocated = 0
        """Shared segments created so far (the pool's and fresh ones): a measure of reuse."""

    def take(self, shape: tuple[int, ...]) -> torch.Tensor:
        """A uint8 tensor of `shape` in shared memory that no consumer holds (contents undefined)."""
        size = math.prod(shape)
        for storage, flag in self._buffers:
            if storage.nbytes() == size + 1 and int(flag) == _FREE:
                break
        else:
            storage = torch.UntypedStorage._new_shared(size + 1)
            flag = _flag(storage, size)
            self.allocated += 1
            if len(self._buffers) < self.capacity:
                self._buffers.append((storage, flag))
        flag.fill_(_TAKEN)
        return torch.empty(0, dtype=torch.uint8).set_(storage, 0, shape)


def release(images: torch.Tensor) -> None:
    """Hand a `BatchBuffers` batch back to its worker (call once its contents have been read).

    A tensor that does not end one byte before its storage (not a `take` result) is left alone.
    """
    storage = images.untyped_storage()
    if images.storage_offset() == 0 and storage.nbytes() == images.numel() + 1:
        _flag(storage, images.numel()).fill_(_FREE)


_BGR_TO_RGB_PLANES = [2, 0, 1, 1, 0, 2]  # (source channel, destination plane) pairs for cv2.mixChannels


def write_rgb_planes(image: np.ndarray, out: torch.Tensor) -> None:
    """BGR uint8 [H, W, 3] `image` -> RGB planes of uint8 [3, H, W] `out`, in one pass (no temporary)."""
    planes = out.numpy()
    cv2.mixChannels([image], [planes[0], planes[1], planes[2]], _BGR_TO_RGB_PLANES)
