"""The validation pipeline: every val image once across ranks, no augmentation, equal batch counts.

Each rank reads its own shards (balanced by sample count), each worker a disjoint subset of them.
Ranks then get different numbers of real batches; `ValLoader` pads the short ones with one-sample
batches whose `valid` is False, so every rank yields `len(val)` batches. The trainer runs padding
batches like any other (their forward keeps collectives in step) and drops their outputs. The batch
contract is in :mod:`data_shards.loader`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import torch
import webdataset as wds

from data_shards.augment import val_resize
from data_shards.config import LoaderConfig
from data_shards.images import MEAN_BGR
from data_shards.samples import SkipCounter, decoded, face_boxes, open_split, received, to_tensor, web_loader, worker_slot
from data_shards.storage import S3Settings


def assign_shards(samples: list[int], world_size: int) -> list[list[int]]:
    """Shard indices per rank, balancing sample counts (largest first onto the lightest rank)."""
    ranks: list[list[int]] = [[] for _ in range(world_size)]
    load = [0] * world_size
    for i in sorted(range(len(samples)), key=lambda i: (-samples[i], i)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        ranks[r].append(i)
        load[r] += samples[i]
    return [sorted(r) for r in ranks]


def expected_val_batches(samples: list[int], world_size: int, num_workers: int, batch_size: int) -> list[int]:
    """Real batches each rank yields when nothing is skipped (workers batch their own shards)."""
    out = []
    for shards in assign_shards(samples, world_size):
        per_worker = [shards[w :: max(1, num_workers)] for w in range(max(1, num_workers))]
        out.append(sum(math.ceil(sum(samples[i] for i in ws) / batch_size) for ws in per_worker))
    return out


class _ValShards:
    def __init__(self, urls: list[str]) -> None:
        self.urls = urls

    def __call__(self) -> Iterator[dict[str, str]]:
        worker, workers = worker_slot()
        for url in self.urls[worker::workers]:
            yield {"url": url}


class _ValSamples:
    def __init__(self, config: LoaderConfig, skipped: SkipCounter) -> None:
        self.config, self.skipped = config, skipped

    def __call__(self, samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        batch: list[tuple[np.ndarray, dict[str, Any], float]] = []
        for _, image, record in decoded(samples, self.skipped):
            resized, scale = val_resize(image, self.config.val_max_size)
            batch.append((resized, record, scale))
            if len(batch) == self.config.val_batch_size:
                yield self._collate(batch)
                batch = []
        if batch:
            yield self._collate(batch)

    def _collate(self, batch: list[tuple[np.ndarray, dict[str, Any], float]]) -> dict[str, Any]:
        m = self.config.val_size_multiple
        h = math.ceil(max(img.shape[0] for img, _, _ in batch) / m) * m
        w = math.ceil(max(img.shape[1] for img, _, _ in batch) / m) * m
        # The fill of training's zoom-out (about zero after the model's normalisation, SRN's zero-padding),
        # which the detector pads with itself and a served model's canvas has. Black padding, used before,
        # is a dark band no training image shows, beside the faces at the bottom and right edges; it moved
        # the same weights' AP by up to 0.07, and the eager model (TTA, a user's own code) disagreed.
        padded = [cv2.copyMakeBorder(img, 0, h - img.shape[0], 0, w - img.shape[1], cv2.BORDER_CONSTANT, value=MEAN_BGR)
                  for img, _, _ in batch]
        return {  # small arrays as NumPy, made tensors by `received` in the receiving process
            "images": to_tensor(padded),
            "scales": np.array([s for _, _, s in batch], dtype=np.float64),
            "image_sizes": np.array([[r["height"], r["width"]] for _, r, _ in batch], dtype=np.int64),
            "keys": [(r["event"], r["name"]) for _, r, _ in batch],
            "valid": np.ones(len(batch), dtype=bool),
            "targets": [{"boxes": face_boxes(r)} for _, r, _ in batch],
            "skipped": self.skipped.take(),
        }


def padding_batch(size_multiple: int) -> dict[str, Any]:
    """A one-sample batch marked invalid, used to even out validation batch counts across ranks."""
    return {
        "images": torch.zeros(1, 3, size_multiple, size_multiple),
        "scales": torch.ones(1, dtype=torch.float64),
        "image_sizes": torch.zeros(1, 2, dtype=torch.int64),
        "keys": [("", "")],
        "valid": torch.zeros(1, dtype=torch.bool),
        "targets": [{"boxes": torch.zeros(0, 4)}],
        "skipped": 0,
    }


class ValLoader:
    """Iterable over this rank's val images, padded to `len()` batches on every rank."""

    def __init__(self, loader: wds.WebLoader, num_batches: int, size_multiple: int) -> None:
        self._loader, self.num_batches, self._size_multiple = loader, num_batches, size_multiple

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        count = 0
        for batch in self._loader:
            if count == self.num_batches:  # cannot happen unless the shards changed under us
                raise RuntimeError(f"validation yielded more than the {self.num_batches} batches its manifest allows")
            count += 1
            yield received(batch, float_images=True)
        for _ in range(self.num_batches - count):
            yield padding_batch(self._size_multiple)


def make_val_loader(
    manifest_url: str, config: LoaderConfig, *, rank: int = 0, world_size: int = 1,
    settings: S3Settings | None = None,
) -> ValLoader:
    """The validation loader of `rank`: every image once across ranks, no augmentation."""
    settings, manifest, urls = open_split(manifest_url, rank, world_size, settings, verify=config.verify)
    samples = [s.samples for s in manifest.shards]
    mine = [urls[i] for i in assign_shards(samples, world_size)[rank]]
    num_batches = max(expected_val_batches(samples, world_size, config.num_workers, config.val_batch_size))
    skipped = SkipCounter()
    pipeline = wds.DataPipeline(_ValShards(mine), wds.tarfile_to_samples(handler=skipped), _ValSamples(config, skipped))
    return ValLoader(web_loader(pipeline, config, settings), num_batches, config.val_size_multiple)
