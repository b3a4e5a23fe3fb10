"""Shared-memory batch buffers: reused only once released, never overwritten while held."""

import time

import numpy as np
import torch

from data_shards.batch_buffers import BatchBuffers, release, write_rgb_planes
from data_shards.loader import AugmentConfig, LoaderConfig, make_train_loader, release_images, to_tensor
from tests.data_shards.test_loader import uneven_shards


def test_a_released_buffer_is_reused_and_a_held_one_is_not():
    buffers = BatchBuffers(capacity=2)
    first = buffers.take((2, 3, 4, 4))
    assert first.is_shared() and first.dtype == torch.uint8 and first.shape == (2, 3, 4, 4)
    second = buffers.take((2, 3, 4, 4))  # `first` is held: a second buffer
    assert first.data_ptr() != second.data_ptr() and buffers.allocated == 2
    release(first)
    assert buffers.take((2, 3, 4, 4)).data_ptr() == first.data_ptr() and buffers.allocated == 2
    # Both pooled buffers are out and the pool is full: a fresh one, never a held one.
    third = buffers.take((2, 3, 4, 4))
    assert third.data_ptr() not in (first.data_ptr(), second.data_ptr()) and buffers.allocated == 3
    # Another shape never gets a buffer of the wrong size.
    release(second)
    assert buffers.take((1, 3, 4, 4)).shape == (1, 3, 4, 4) and buffers.allocated == 4


def test_release_ignores_tensors_that_are_not_buffers():
    plain = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    release(plain)
    assert int(plain.sum()) == 0


def test_rgb_planes_match_the_contract_layout():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (5, 7, 3), dtype=np.uint8) for _ in range(2)]
    out = BatchBuffers(capacity=1).take((2, 3, 5, 7))
    for image, slot in zip(images, out, strict=True):
        write_rgb_planes(image, slot)
    assert torch.equal(out, to_tensor(images))  # BGR [H, W, 3] -> RGB [3, H, W]


def test_a_slow_consumer_gets_the_same_batches_as_a_fast_one(wider_root, tmp_path):
    # Workers write ahead into reused buffers; a batch must never change after it was sent.
    url = uneven_shards(wider_root, tmp_path, "train", [6, 6])
    cfg = LoaderConfig(batch_size=2, augment=AugmentConfig(out_size=64), num_workers=1, shuffle_buffer=4,
                       batches_per_epoch=8, prefetch_factor=2)
    loader = make_train_loader(url, cfg)
    fast = [b["images"] for b in loader]
    loader.set_epoch(0)
    slow = []
    for batch in loader:
        time.sleep(0.05)  # the worker fills every free buffer meanwhile
        slow.append(batch["images"])
    assert len(fast) == len(slow) == 8
    assert all(torch.equal(a, b) for a, b in zip(fast, slow, strict=True))


def test_a_training_loop_that_releases_its_batches_reuses_the_workers_buffers(wider_root, tmp_path):
    # What jobs.train.steps does once the model has read a batch: the worker then writes into the
    # same shared memory again; the uint8 images are what a slow consumer that keeps them sees.
    url = uneven_shards(wider_root, tmp_path, "train", [6, 6])
    cfg = LoaderConfig(batch_size=2, augment=AugmentConfig(out_size=64), num_workers=1, shuffle_buffer=4,
                       batches_per_epoch=8, prefetch_factor=2)
    loader = make_train_loader(url, cfg)
    kept = [b["images"] for b in loader]  # never released: each in a buffer of its own
    loader.set_epoch(0)
    copies, storages = [], set()
    for batch in loader:
        assert batch["images"].dtype == torch.uint8
        copies.append(batch["images"].clone())
        storages.add(batch["images"].untyped_storage().data_ptr())
        release_images(batch)
    assert all(torch.equal(a, b) for a, b in zip(kept, copies, strict=True))
    assert len({b.untyped_storage().data_ptr() for b in kept}) == 8
    assert len(storages) <= cfg.prefetch_factor + 2  # the worker's pool, mapped here once each
