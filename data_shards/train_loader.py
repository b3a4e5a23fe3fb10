"""The training pipeline: endless seeded shard permutations, decode, augment, batch; equal epochs per rank.

Every rank and dataloader worker reads a disjoint slice of a seeded shard permutation that is the
same on all ranks; when its slice is done it moves to the next permutation, so the stream never
ends. The epoch is cut on the WebLoader at `total samples // (world_size x batch_size)` batches
(docs/platform-notes.md: `.with_epoch` on the loader, not the dataset, which would count per worker),
so every rank yields the same number of batches whatever the shard sizes, and DDP never waits at the
end of an epoch for a rank that ran out. The batch contract is in :mod:`data_shards.loader`.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import webdataset as wds

from data_shards.augment import sample_train_transform
from data_shards.batch_buffers import BatchBuffers, release, write_rgb_planes
from data_shards.config import LoaderConfig
from data_shards.samples import SkipCounter, decoded, face_boxes, open_split, received, web_loader, worker_slot
from data_shards.storage import S3Settings


class _TrainShards:
    """Pipeline source: this rank's and worker's shards of endless seeded permutations."""

    def __init__(self, urls: list[str], rank: int, world_size: int, seed: int) -> None:
        self.urls, self.rank, self.world_size, self.seed = urls, rank, world_size, seed
        self.epoch = 0

    def __call__(self) -> Iterator[dict[str, str]]:
        worker, workers = worker_slot()
        slots, slot = self.world_size * workers, self.rank * workers + worker
        for cycle in itertools.count():
            order = np.random.default_rng([self.seed, self.epoch, cycle]).permutation(len(self.urls))
            mine = order[slot::slots] if len(order) >= slots else order[[slot % len(order)]]
            for i in mine:
                yield {"url": self.urls[i]}


class _TrainSamples:
    """Pipeline stage: shuffle buffer, decode, augment, batch (in the worker).

    Each augmented image goes straight into its slot of a shared-memory batch buffer that the
    training process hands back after reading (`data_shards.batch_buffers`): no per-batch stack,
    no copy into fresh shared memory.
    """

    def __init__(self, source: _TrainShards, config: LoaderConfig, skipped: SkipCounter) -> None:
        self.source, self.config, self.skipped = source, config, skipped

    def _read(self, samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for sample in samples:
            if "__key__" in sample:
                self.skipped.ok()  # a shard that yields samples is readable
            yield sample

    def __call__(self, samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        worker, _ = worker_slot()
        cfg, aug = self.config, self.config.augment
        rng = np.random.default_rng([cfg.seed, self.source.epoch, self.source.rank, worker, 1])
        # In flight at once: the batches DataLoader prefetches, the one being read, the one being written.
        buffers = BatchBuffers(capacity=cfg.prefetch_factor + 2)
        shape = (cfg.batch_size, 3, aug.out_size, aug.out_size)
        images, targets, keys = None, [], []
        for sample, image, record in decoded(_shuffled(self._read(samples), cfg.shuffle_buffer, rng), self.skipped):
            boxes = face_boxes(record, cfg.keep_invalid)
            transform = sample_train_transform(rng, image.shape[:2], boxes, aug)
            if images is None:
                images = buffers.take(shape)
            write_rgb_planes(transform.apply_image(image), images[len(keys)])
            targets.append({"boxes": transform.apply_boxes(boxes)[0]})  # NumPy: see `received`
            keys.append(sample["__key__"])
            if len(keys) == cfg.batch_size:
                yield {"images": images, "targets": targets, "keys": keys, "skipped": self.skipped.take()}
                images, targets, keys = None, [], []


def _shuffled(samples: Iterator[dict[str, Any]], size: int, rng: np.random.Generator) -> Iterator[dict[str, Any]]:
    buffer: list[dict[str, Any]] = []
    for sample in samples:
        if "__key__" not in sample:  # webdataset's end-of-shard marker
            continue
        if len(buffer) < size:
            buffer.append(sample)
            continue
        i = int(rng.integers(len(buffer)))
        buffer[i], sample = sample, buffer[i]
        yield sample
    rng.shuffle(buffer)
    yield from buffer


class TrainLoader:
    """Iterable over one epoch of training batches; `len()` batches on every rank."""

    def __init__(self, loader: wds.WebLoader, source: _TrainShards, num_batches: int) -> None:
        self._loader, self._source, self.num_batches = loader, source, num_batches
        self._next_epoch = 0

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch `epoch` (for resuming); iterations otherwise count up."""
        self._next_epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # Workers are started per iteration and receive a copy of the pipeline: the epoch set here
        # reaches them, giving each epoch its own shard permutation and augmentation stream.
        self._source.epoch = self._next_epoch
        self._next_epoch += 1
        return map(functools.partial(received, float_images=False), self._loader)


def release_images(batch: dict[str, Any]) -> None:
    """Hand the buffer of a training batch's uint8 images back to its worker, once they have been
    read (copied to the GPU, or normalised by the model's first operation on the CPU): the worker
    may then write a later batch into it. A batch that is never released is never overwritten
    either: the worker writes into a fresh buffer instead (slower, see `data_shards.batch_buffers`)."""
    release(batch["images"])


def make_train_loader(
    manifest_url: str, config: LoaderConfig, *, rank: int = 0, world_size: int = 1,
    settings: S3Settings | None = None,
) -> TrainLoader:
    """The training loader of `rank` among `world_size` over the split at `manifest_url`."""
    settings, manifest, urls = open_split(manifest_url, rank, world_size, settings, verify=config.verify)
    num_batches = config.batches_per_epoch or max(1, manifest.samples // (world_size * config.batch_size))
    source = _TrainShards(urls, rank, world_size, config.seed)
    skipped = SkipCounter()
    pipeline = wds.DataPipeline(source, wds.tarfile_to_samples(handler=skipped), _TrainSamples(source, config, skipped))
    loader = web_loader(pipeline, config, settings).with_epoch(num_batches)
    return TrainLoader(loader, source, num_batches)
