"""Streaming loaders over the shards of one split (local folder or S3), for DDP training.

    cfg = LoaderConfig(batch_size=8, num_workers=2, augment=AugmentConfig(out_size=640))
    train = make_train_loader("s3://isrn-data/wider/train/manifest.json", cfg, rank=r, world_size=n)
    for epoch in range(epochs):
        for batch in train:        # exactly len(train) batches on every rank
            ...
    val = make_val_loader("s3://isrn-data/wider/val/manifest.json", cfg, rank=r, world_size=n)
    for batch in val:              # exactly len(val) batches on every rank, padding marked invalid
        ...

The parts, one concept each: `data_shards.config` (LoaderConfig, AugmentConfig: no torch, OpenCV
or webdataset), `data_shards.s3_opener` (s3:// for webdataset, one boto3 client per process),
`data_shards.samples` (decoding and the WebLoader both pipelines share), `data_shards.train_loader`
(endless seeded shard permutations, an equal number of batches on every rank) and
`data_shards.val_loader` (every val image once across ranks, short ranks padded with invalid
batches). This module gathers their public names and states the batch contract.

Batch contract:
    train: {"images": uint8 [B, 3, S, S] RGB, in a shared-memory buffer the worker reuses once
                       `release_images(batch)` says it has been read (never before),
            "targets": [{"boxes": float32 [N, 4] xyxy pixels of the S x S image}],
            "keys": [str], "skipped": int}
    val:   {"images": float32 [B, 3, H, W] RGB 0..255, resized so the long side <= val_max_size,
                       padded bottom/right with 0 to a multiple of val_size_multiple,
            "scales": float64 [B] resized / original, "image_sizes": int64 [B, 2] original (h, w),
            "keys": [(event, image name without .jpg)], "valid": bool [B],
            "targets": [{"boxes": float32 [N, 4] xyxy original pixels}], "skipped": int}
`skipped` counts the samples (corrupt JPEG, undecodable JSON, truncated tar) a worker skipped
since its previous batch; each is logged with its shard and key.

Training images stay uint8 up to the model, which normalises them in its first operation: the
receiving process makes no float32 copy (a 39 MB allocation, ~20 ms, per 8 × 640² batch on this
machine's CPU), and a GPU receives a quarter of the bytes. Val images are float32, as TTA's
resizing needs them.
"""

from data_shards.config import AugmentConfig, LoaderConfig
from data_shards.s3_opener import gopen_s3, register_s3_opener
from data_shards.samples import SkipCounter, decode_sample, face_boxes, to_tensor
from data_shards.train_loader import TrainLoader, make_train_loader, release_images
from data_shards.val_loader import ValLoader, assign_shards, expected_val_batches, make_val_loader, padding_batch

__all__ = [
    "AugmentConfig", "LoaderConfig", "SkipCounter", "TrainLoader", "ValLoader", "assign_shards", "decode_sample",
    "expected_val_batches", "face_boxes", "gopen_s3", "make_train_loader", "make_val_loader", "padding_batch",
    "register_s3_opener", "release_images", "to_tensor",
]
