"""What the train and val pipelines share: sample decoding, skip counting, the WebLoader, the split.

A sample is a raw webdataset dict (``__key__``, ``__url__``, ``jpg``, ``json``); :func:`decode_sample`
turns it into a BGR image and its JSON record, :func:`face_boxes` into xyxy pixel boxes. Batches are
built in the dataloader workers (uint8, a quarter of the bytes through shared memory; training
batches in reused buffers, :mod:`data_shards.batch_buffers`), with their small arrays (boxes,
scales, sizes) as NumPy, and turned into the loader's batch contract in the receiving process
(:func:`received`).
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import torch
import webdataset as wds

from data_shards.config import LoaderConfig
from data_shards.images import ImageError, check_pixels, decode_bgr
from data_shards.manifest import Manifest, check_shards, read_manifest, shard_urls, split_manifest_url
from data_shards.s3_opener import register_s3_opener, reset_clients
from data_shards.storage import S3Settings, check_access

log = logging.getLogger(__name__)


class SkipCounter:
    """webdataset handler: log the bad sample or shard, count it, carry on.

    `max_consecutive` failures with no good sample in between raise instead: an endless training
    stream whose every shard fails (store gone, credentials revoked) must fail, not hang.
    """

    def __init__(self, max_consecutive: int = 50) -> None:
        self.count = 0
        self.consecutive = 0
        self.max_consecutive = max_consecutive

    def __call__(self, exn: Exception) -> bool:
        self.count += 1
        self.consecutive += 1
        message = " ".join(str(a) for a in exn.args) or repr(exn)
        log.warning("skipped: %s", message)
        if self.consecutive >= self.max_consecutive:
            raise RuntimeError(f"{self.consecutive} consecutive unreadable samples or shards; last: {message}") from exn
        return True

    def ok(self) -> None:
        self.consecutive = 0

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


def decode_sample(sample: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """(BGR uint8 image, JSON record) of a raw webdataset sample; ValueError names shard and key.

    Decoded by `data_shards.images.decode_bgr`: EXIF orientation ignored (boxes are in stored
    pixels), and a sample whose JSON or image header declares more than `MAX_IMAGE_PIXELS` is
    refused before a pixel is decoded.
    """
    key, url = sample.get("__key__"), sample.get("__url__")
    missing = [f".{ext}" for ext in ("jpg", "json") if ext not in sample]
    if missing:  # a member that is not a regular file (link, device) is never read, so it is missing too
        raise ValueError(f"sample {key} in shard {url}: no {' or '.join(missing)} member")
    try:
        record = json.loads(sample["json"])
        record["faces"]  # noqa: B018 - presence check
    except (ValueError, KeyError, TypeError) as exn:
        raise ValueError(f"sample {key} in shard {url}: undecodable JSON ({exn})") from None
    try:
        if isinstance(record.get("width"), int) and isinstance(record.get("height"), int):
            check_pixels(record["width"], record["height"], "its JSON")
        image = decode_bgr(sample["jpg"])
    except ImageError as exn:
        raise ValueError(f"sample {key} in shard {url}: {exn}") from None
    return image, record


def decoded(samples: Iterator[dict[str, Any]], skipped: SkipCounter) -> Iterator[tuple[dict[str, Any], np.ndarray, dict[str, Any]]]:
    """(sample, BGR image, record) of every readable sample; an unreadable one is counted and skipped."""
    for sample in samples:
        if "__key__" not in sample:  # webdataset's end-of-shard marker
            continue
        try:
            image, record = decode_sample(sample)
        except ValueError as exn:
            skipped(exn)
            continue
        skipped.ok()
        yield sample, image, record


def face_boxes(record: dict[str, Any], keep_invalid: bool = True) -> np.ndarray:
    """float32 [N, 4] xyxy pixels of the record's usable faces (w, h > 0; invalid ones if asked)."""
    boxes = [
        (f["x"], f["y"], f["x"] + f["w"], f["y"] + f["h"])
        for f in record["faces"]
        if f["w"] > 0 and f["h"] > 0 and (keep_invalid or not f["invalid"])
    ]
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """BGR uint8 [H, W, 3] images of one size -> uint8 [B, 3, H, W] RGB.

    Workers ship uint8 (a quarter of the bytes through shared memory); `received` makes the
    float32 images of the batch contract in the receiving process.
    """
    batch = np.stack(images)[..., ::-1]
    return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))


SMALL_ARRAYS = ("scales", "image_sizes", "valid")
"""Per-image arrays of a val batch that workers send as NumPy, like every target's boxes."""


def received(batch: dict[str, Any], *, float_images: bool) -> dict[str, Any]:
    """A worker's batch as the batch contract states it (:mod:`data_shards.loader`), in the receiving process.

    float32 images if `float_images` (val), else the worker's uint8 as they are (train: the model
    converts them); tensors for the small arrays, which workers send as NumPy so that they travel
    pickled with the batch: a tensor would be moved to a shared-memory segment of its own and
    handed over as a file descriptor through a socket handshake, each (py-spy: ~0.5 ms of worker
    CPU per image for 8 boxes tensors a batch, as much as the tar parsing).
    """
    if float_images:
        batch["images"] = batch["images"].float()
    batch["targets"] = [{name: torch.as_tensor(value) for name, value in t.items()} for t in batch["targets"]]
    for name in SMALL_ARRAYS:
        if name in batch:
            batch[name] = torch.as_tensor(batch[name])
    return batch


def _worker_init(settings: S3Settings | None, _worker_id: int) -> None:
    cv2.setNumThreads(1)  # one decode thread per worker; the workers are the parallelism
    reset_clients()  # never reuse a client created in another process
    register_s3_opener(settings)  # a spawned worker does not inherit the registration


def worker_slot() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _load_manifest(manifest_url: str, settings: S3Settings | None,
                   verify: bool = False) -> tuple[Manifest, list[str]]:
    folder, _ = split_manifest_url(manifest_url)
    check_access(folder, settings)
    register_s3_opener(settings)
    manifest = read_manifest(manifest_url, settings)
    if not manifest.shards:
        raise ValueError(f"{manifest_url}: the manifest lists no shards")
    check_shards(manifest_url, manifest, settings, verify=verify)
    return manifest, shard_urls(manifest_url, manifest)


def _as_is(batch: dict[str, Any]) -> dict[str, Any]:
    return batch  # batches are built in the workers; DataLoader's default_convert would turn tuples into lists


def web_loader(pipeline: wds.DataPipeline, config: LoaderConfig, settings: S3Settings | None) -> wds.WebLoader:
    extra: dict[str, Any] = {}
    if config.num_workers > 0:
        # forkserver, not fork: a trainer process holds boto3, MLflow and gloo threads, and a
        # worker forked while one of them holds a lock deadlocks (seen: rank 0 hung after its
        # first evaluation until the gloo timeout). Workers start per epoch, so this matters.
        extra = {"prefetch_factor": config.prefetch_factor, "multiprocessing_context": "forkserver"}
        # The fork server imports the loader (torch, OpenCV, webdataset) once; each epoch's
        # workers then fork from it in milliseconds instead of importing torch again.
        multiprocessing.set_forkserver_preload(["data_shards.loader"])
    return wds.WebLoader(
        pipeline, batch_size=None, collate_fn=_as_is, num_workers=config.num_workers,
        worker_init_fn=functools.partial(_worker_init, settings), **extra,
    )


def open_split(manifest_url: str, rank: int, world_size: int, settings: S3Settings | None,
               verify: bool = False) -> tuple[S3Settings, Manifest, list[str]]:
    """Check the rank, resolve the S3 settings, read the split's manifest and check its shards
    (sizes; sha256 too with `verify`); returns the shard URLs."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    settings = settings or S3Settings.from_env()  # resolved here: workers may not share our environment
    manifest, urls = _load_manifest(manifest_url, settings, verify)
    return settings, manifest, urls
