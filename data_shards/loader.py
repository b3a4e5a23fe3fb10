"""Streaming loaders over the shards of one split (local folder or S3), for DDP training.

    cfg = LoaderConfig(batch_size=8, image_size=640, num_workers=2)
    train = make_train_loader("s3://isrn-data/wider/train/manifest.json", cfg, rank=r, world_size=n)
    for epoch in range(epochs):
        for batch in train:        # exactly len(train) batches on every rank
            ...
    val = make_val_loader("s3://isrn-data/wider/val/manifest.json", cfg, rank=r, world_size=n)
    for batch in val:              # exactly len(val) batches on every rank, padding marked invalid
        ...

Training: every rank and dataloader worker reads a disjoint slice of a seeded shard permutation
that is the same on all ranks; when its slice is done it moves to the next permutation, so the
stream never ends. The epoch is cut on the WebLoader at
`total samples // (world_size x batch_size)` batches (PLATFORM.md: `.with_epoch` on the loader,
not the dataset, which would count per worker). So every rank yields the same number of batches
whatever the shard sizes, and DDP never waits at the end of an epoch for a rank that ran out.

Validation: each rank reads its own shards (balanced by sample count), each worker a disjoint
subset of them: every val image is visited exactly once across all ranks. Ranks then get
different numbers of real batches; `ValLoader` pads the short ones with one-sample batches whose
`valid` is False, so every rank yields `len(val)` batches. The trainer runs padding batches like
any other (their forward keeps collectives in step) and drops their outputs.

Batch contract:
    train: {"images": float32 [B, 3, S, S] RGB 0..255,
            "targets": [{"boxes": float32 [N, 4] xyxy pixels of the S x S image}],
            "keys": [str], "skipped": int}
    val:   {"images": float32 [B, 3, H, W] RGB 0..255, resized so the long side <= val_max_size,
                       padded bottom/right with 0 to a multiple of val_size_multiple,
            "scales": float64 [B] resized / original, "image_sizes": int64 [B, 2] original (h, w),
            "keys": [(event, image name without .jpg)], "valid": bool [B],
            "targets": [{"boxes": float32 [N, 4] xyxy original pixels}], "skipped": int}
`skipped` counts the samples (corrupt JPEG, undecodable JSON, truncated tar) a worker skipped
since its previous batch; each is logged with its shard and key.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import logging
import math
import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import cv2
import numpy as np
import torch
import webdataset as wds

from data_shards.augment import AugmentConfig, sample_train_transform, val_resize
from data_shards.manifest import Manifest, read_manifest, shard_urls, split_manifest_url
from data_shards.storage import S3Settings, check_access, s3_client, split_s3_url

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class LoaderConfig:
    """Data-loading settings of a training job (embedded in the job spec)."""

    batch_size: int = 8
    """Training images per batch, per rank."""
    image_size: int = 640
    """Side S of the square training images [SRN: 1024; ours: 640 for CPU-scale runs]."""
    num_workers: int = 2
    """Dataloader worker processes per rank (0: load in the training process)."""
    shuffle_buffer: int = 256
    """Samples held per worker for shuffling (beyond the shard permutation)."""
    data_anchor_sampling_prob: float = 0.5
    """Share of training samples cropped by data-anchor-sampling [ISRN; ours: 0.5]."""
    zoom_out_prob: float = 0.5
    """Probability of zoom-out expansion on the other samples [SRN]."""
    zoom_out_max: float = 4.0
    """Largest zoom-out ratio [SRN: 4]."""
    crop_scale_min: float = 0.5
    """Square crop side drawn from U[crop_scale_min, 1] x short side [SRN: 0.5]."""
    flip_prob: float = 0.5
    photometric_prob: float = 0.5
    """Probability of each photometric op (brightness, contrast, saturation, hue)."""
    min_box_size: float = 2.0
    """Boxes smaller than this (output pixels, after crop and clip) are dropped."""
    keep_invalid: bool = True
    """Train on faces WIDER marks invalid (degenerate w/h <= 0 boxes are always dropped)."""
    batches_per_epoch: int | None = None
    """Override of total samples // (world_size x batch_size)."""
    val_batch_size: int = 1
    val_max_size: int = 1024
    """Validation images are shrunk so their long side is at most this."""
    val_size_multiple: int = 128
    """Validation batches are padded to a multiple of this (the largest stride)."""
    seed: int = 0
    """Seeds shard permutations, shuffling and augmentation (with epoch, rank and worker)."""
    prefetch_factor: int = 2

    def __post_init__(self) -> None:
        positive = ("batch_size", "image_size", "val_batch_size", "val_max_size", "val_size_multiple", "prefetch_factor")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"LoaderConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_workers", "shuffle_buffer", "min_box_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"LoaderConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("data_anchor_sampling_prob", "zoom_out_prob", "flip_prob", "photometric_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"LoaderConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.zoom_out_max < 1.0:
            raise ValueError(f"LoaderConfig.zoom_out_max must be >= 1, got {self.zoom_out_max}")
        if not 0.0 < self.crop_scale_min <= 1.0:
            raise ValueError(f"LoaderConfig.crop_scale_min must be in (0, 1], got {self.crop_scale_min}")
        if self.batches_per_epoch is not None and self.batches_per_epoch < 1:
            raise ValueError(f"LoaderConfig.batches_per_epoch must be >= 1 or None, got {self.batches_per_epoch}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoaderConfig:
        """Build from a mapping, rejecting unknown keys by name."""
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(data) - known):
            raise ValueError(f"unknown LoaderConfig field(s): {', '.join(unknown)}")
        return cls(**data)

    def augment(self) -> AugmentConfig:
        return AugmentConfig(
            out_size=self.image_size, zoom_out_prob=self.zoom_out_prob, zoom_out_max=self.zoom_out_max,
            crop_scale_min=self.crop_scale_min, data_anchor_sampling_prob=self.data_anchor_sampling_prob,
            flip_prob=self.flip_prob, photometric_prob=self.photometric_prob, min_box_size=self.min_box_size,
        )


# ---------------------------------------------------------------- s3:// for webdataset


class _RawBody(io.RawIOBase):
    """A botocore StreamingBody as a raw stream, so io.BufferedReader can batch its small reads."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._body.close()
        super().close()


_opener_settings: S3Settings | None = None
_clients: dict[int, Any] = {}


def _client() -> Any:
    # boto3 clients are not fork-safe: one per process.
    pid = os.getpid()
    if pid not in _clients:
        _clients[pid] = s3_client(_opener_settings or S3Settings.from_env())
    return _clients[pid]


def gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> io.BufferedReader:
    """webdataset opener for `s3://bucket/key`: a buffered boto3 streaming body (no external CLI)."""
    if mode != "rb":
        raise ValueError(f"gopen_s3 reads only, got mode {mode!r} for {url}")
    bucket, key = split_s3_url(url)
    body = _client().get_object(Bucket=bucket, Key=key)["Body"]
    return io.BufferedReader(_RawBody(body), buffer_size=1 << 20)


def register_s3_opener(settings: S3Settings | None = None) -> None:
    """Make webdataset open s3:// URLs with boto3 and `settings` (default: the AWS_* variables)."""
    global _opener_settings
    if settings is not None and settings != _opener_settings:
        _opener_settings = settings
        _clients.clear()
    wds.gopen_schemes["s3"] = gopen_s3


def _worker_init(settings: S3Settings | None, _worker_id: int) -> None:
    cv2.setNumThreads(1)  # one decode thread per worker; the workers are the parallelism
    _clients.clear()  # never reuse a client created in another process
    register_s3_opener(settings)  # a spawned worker does not inherit the registration


def _worker_slot() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


# ---------------------------------------------------------------- samples


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
    """(BGR uint8 image, JSON record) of a raw webdataset sample; ValueError names shard and key."""
    key, url = sample.get("__key__"), sample.get("__url__")
    if "jpg" not in sample or "json" not in sample:
        raise ValueError(f"sample {key} in shard {url}: missing .jpg or .json")
    image = cv2.imdecode(np.frombuffer(sample["jpg"], np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"sample {key} in shard {url}: corrupt JPEG")
    try:
        record = json.loads(sample["json"])
        record["faces"]  # noqa: B018 - presence check
    except (ValueError, KeyError, TypeError) as exn:
        raise ValueError(f"sample {key} in shard {url}: undecodable JSON ({exn})") from None
    return image, record


def face_boxes(record: dict[str, Any], keep_invalid: bool = True) -> np.ndarray:
    """float32 [N, 4] xyxy pixels of the record's usable faces (w, h > 0; invalid ones if asked)."""
    boxes = [
        (f["x"], f["y"], f["x"] + f["w"], f["y"] + f["h"])
        for f in record["faces"]
        if f["w"] > 0 and f["h"] > 0 and (keep_invalid or not f["invalid"])
    ]
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """BGR uint8 [H, W, 3] images of one size -> uint8 [B, 3, H, W] RGB.

    Workers ship uint8 (a quarter of the bytes through shared memory); `_as_float` makes the
    float32 images of the batch contract in the receiving process.
    """
    batch = np.stack(images)[..., ::-1]
    return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))


def _as_float(batch: dict[str, Any]) -> dict[str, Any]:
    batch["images"] = batch["images"].float()
    return batch


# ---------------------------------------------------------------- training


class _TrainShards:
    """Pipeline source: this rank's and worker's shards of endless seeded permutations."""

    def __init__(self, urls: list[str], rank: int, world_size: int, seed: int) -> None:
        self.urls, self.rank, self.world_size, self.seed = urls, rank, world_size, seed
        self.epoch = 0

    def __call__(self) -> Iterator[dict[str, str]]:
        worker, workers = _worker_slot()
        slots, slot = self.world_size * workers, self.rank * workers + worker
        for cycle in itertools.count():
            order = np.random.default_rng([self.seed, self.epoch, cycle]).permutation(len(self.urls))
            mine = order[slot::slots] if len(order) >= slots else order[[slot % len(order)]]
            for i in mine:
                yield {"url": self.urls[i]}


class _TrainSamples:
    """Pipeline stage: shuffle buffer, decode, augment, batch (in the worker)."""

    def __init__(self, source: _TrainShards, config: LoaderConfig, skipped: SkipCounter) -> None:
        self.source, self.config, self.skipped = source, config, skipped

    def _read(self, samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for sample in samples:
            if "__key__" in sample:
                self.skipped.ok()  # a shard that yields samples is readable
            yield sample

    def __call__(self, samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        worker, _ = _worker_slot()
        cfg, aug = self.config, self.config.augment()
        rng = np.random.default_rng([cfg.seed, self.source.epoch, self.source.rank, worker, 1])
        images, targets, keys = [], [], []
        for sample in _shuffled(self._read(samples), cfg.shuffle_buffer, rng):
            try:
                image, record = decode_sample(sample)
            except ValueError as exn:
                self.skipped(exn)
                continue
            self.skipped.ok()
            boxes = face_boxes(record, cfg.keep_invalid)
            transform = sample_train_transform(rng, image.shape[:2], boxes, aug)
            images.append(transform.apply_image(image))
            targets.append({"boxes": torch.from_numpy(transform.apply_boxes(boxes)[0])})
            keys.append(sample["__key__"])
            if len(images) == cfg.batch_size:
                yield {"images": _to_tensor(images), "targets": targets, "keys": keys, "skipped": self.skipped.take()}
                images, targets, keys = [], [], []


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
        return map(_as_float, self._loader)


def _load_manifest(manifest_url: str, settings: S3Settings | None) -> tuple[Manifest, list[str]]:
    folder, _ = split_manifest_url(manifest_url)
    check_access(folder, settings)
    register_s3_opener(settings)
    manifest = read_manifest(manifest_url, settings)
    if not manifest.shards:
        raise ValueError(f"{manifest_url}: the manifest lists no shards")
    return manifest, shard_urls(manifest_url, manifest)


def _as_is(batch: dict[str, Any]) -> dict[str, Any]:
    return batch  # batches are built in the workers; DataLoader's default_convert would turn tuples into lists


def _web_loader(pipeline: wds.DataPipeline, config: LoaderConfig, settings: S3Settings | None) -> wds.WebLoader:
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


def _open_split(manifest_url: str, rank: int, world_size: int,
                settings: S3Settings | None) -> tuple[S3Settings, Manifest, list[str]]:
    """Check the rank, resolve the S3 settings and read the split's manifest and shard URLs."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    settings = settings or S3Settings.from_env()  # resolved here: workers may not share our environment
    manifest, urls = _load_manifest(manifest_url, settings)
    return settings, manifest, urls


def make_train_loader(
    manifest_url: str, config: LoaderConfig, *, rank: int = 0, world_size: int = 1,
    settings: S3Settings | None = None,
) -> TrainLoader:
    """The training loader of `rank` among `world_size` over the split at `manifest_url`."""
    settings, manifest, urls = _open_split(manifest_url, rank, world_size, settings)
    num_batches = config.batches_per_epoch or max(1, manifest.samples // (world_size * config.batch_size))
    source = _TrainShards(urls, rank, world_size, config.seed)
    skipped = SkipCounter()
    pipeline = wds.DataPipeline(source, wds.tarfile_to_samples(handler=skipped), _TrainSamples(source, config, skipped))
    loader = _web_loader(pipeline, config, settings).with_epoch(num_batches)
    return TrainLoader(loader, source, num_batches)


# ---------------------------------------------------------------- validation


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
        worker, workers = _worker_slot()
        for url in self.urls[worker::workers]:
            yield {"url": url}


class _ValSamples:
    def __init__(self, config: LoaderConfig, skipped: SkipCounter) -> None:
        self.config, self.skipped = config, skipped

    def __call__(self, samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        batch: list[tuple[np.ndarray, dict[str, Any], float]] = []
        for sample in samples:
            if "__key__" not in sample:
                continue
            try:
                image, record = decode_sample(sample)
            except ValueError as exn:
                self.skipped(exn)
                continue
            self.skipped.ok()
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
        padded = [cv2.copyMakeBorder(img, 0, h - img.shape[0], 0, w - img.shape[1], cv2.BORDER_CONSTANT, value=0)
                  for img, _, _ in batch]
        return {
            "images": _to_tensor(padded),
            "scales": torch.tensor([s for _, _, s in batch], dtype=torch.float64),
            "image_sizes": torch.tensor([[r["height"], r["width"]] for _, r, _ in batch], dtype=torch.int64),
            "keys": [(r["event"], r["name"]) for _, r, _ in batch],
            "valid": torch.ones(len(batch), dtype=torch.bool),
            "targets": [{"boxes": torch.from_numpy(face_boxes(r))} for _, r, _ in batch],
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
            yield _as_float(batch)
        for _ in range(self.num_batches - count):
            yield padding_batch(self._size_multiple)


def make_val_loader(
    manifest_url: str, config: LoaderConfig, *, rank: int = 0, world_size: int = 1,
    settings: S3Settings | None = None,
) -> ValLoader:
    """The validation loader of `rank`: every image once across ranks, no augmentation."""
    settings, manifest, urls = _open_split(manifest_url, rank, world_size, settings)
    samples = [s.samples for s in manifest.shards]
    mine = [urls[i] for i in assign_shards(samples, world_size)[rank]]
    num_batches = max(expected_val_batches(samples, world_size, config.num_workers, config.val_batch_size))
    skipped = SkipCounter()
    pipeline = wds.DataPipeline(_ValShards(mine), wds.tarfile_to_samples(handler=skipped), _ValSamples(config, skipped))
    return ValLoader(_web_loader(pipeline, config, settings), num_batches, config.val_size_multiple)
