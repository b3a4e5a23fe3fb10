"""Loader throughput against the decode-and-augment limit of one core, all in one run.

    .venv/bin/python bench/loader_throughput.py --start-s3              # own SeaweedFS, generated data
    .venv/bin/python bench/loader_throughput.py --bucket isrn-bench      # S3 from the AWS_* variables

Figures (images per second):
    limit       decode + augment of in-memory JPEG bytes in this process (one core, one thread)
    raw files   the same, reading each JPEG file from disk
    local       the training loader over local shards, 1 dataloader worker
    s3          the training loader streaming from S3 through the boto3 opener, 1 worker
and the ratios to `limit` (target for s3: >= 0.90).
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_shards.augment import sample_train_transform  # noqa: E402
from data_shards.loader import AugmentConfig, LoaderConfig, decode_sample, face_boxes, make_train_loader, to_tensor  # noqa: E402
from data_shards.manifest import manifest_url, read_manifest, shard_urls  # noqa: E402
from data_shards.shard_writer import build_split  # noqa: E402
from data_shards.storage import S3Settings, s3_client  # noqa: E402
from data_shards.synth import SynthConfig, generate_dataset  # noqa: E402
from data_shards.wider_layout import WiderLayout  # noqa: E402


def _samples_of(shards: list[str]) -> list[dict]:
    import webdataset as wds

    out = []
    for sample in wds.DataPipeline(wds.SimpleShardList(shards), wds.tarfile_to_samples()):
        if "__key__" in sample:
            out.append(sample)
    return out


def limit(samples: list[dict], cfg: LoaderConfig, read=None) -> float:
    """Images/s of decode + augment + tensor batching in this process, one OpenCV thread."""
    rng, aug = np.random.default_rng(0), cfg.augment
    start, images = time.perf_counter(), []
    for sample in samples:
        if read is not None:
            sample = {**sample, "jpg": read(sample)}
        image, record = decode_sample(sample)
        boxes = face_boxes(record)
        t = sample_train_transform(rng, image.shape[:2], boxes, aug)
        images.append(t.apply_image(image))
        t.apply_boxes(boxes)
        if len(images) == cfg.batch_size:
            to_tensor(images).float()
            images = []
    return len(samples) / (time.perf_counter() - start)


def loader_rate(url: str, cfg: LoaderConfig, settings: S3Settings | None) -> float:
    loader = make_train_loader(url, cfg, settings=settings)
    it = iter(loader)
    next(it)  # worker start-up and the first shard's latency are not throughput
    start, n = time.perf_counter(), 0
    for batch in it:
        n += len(batch["targets"])
    return n / (time.perf_counter() - start)


def _free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 < 65536 and port not in ports:
            ports.append(port)
    return ports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start-s3", action="store_true", help="start a SeaweedFS of its own")
    parser.add_argument("--bucket", default=None, help="existing bucket (AWS_* variables) when not --start-s3")
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--width", type=int, default=1024, help="generated image width (WIDER: 1024)")
    parser.add_argument("--image-size", type=int, default=640)
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()
    cv2.setNumThreads(1)

    with tempfile.TemporaryDirectory(prefix="isrn-bench-") as tmp:
        tmp_path = Path(tmp)
        platform = None
        if args.start_s3:
            from jobs.local_platform import Platform, PlatformConfig
            from jobs.local_platform.config import S3Config

            p = _free_ports(6)
            platform = Platform(PlatformConfig(state_dir=tmp_path / "platform", s3=S3Config(
                port=p[0], master_port=p[1], volume_port=p[2], filer_port=p[3], webdav_port=p[4], admin_port=p[5])))
            platform.up(only=("s3",))
            c = platform.config
            settings = S3Settings(endpoint_url=c.s3_endpoint, access_key=c.s3.access_key,
                                  secret_key=c.s3.secret_key, region=c.s3.region)
            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            s3_client(settings).create_bucket(Bucket=bucket)
        else:
            if not args.bucket:
                parser.error("give --bucket (with the AWS_* variables) or --start-s3")
            settings, bucket = S3Settings.from_env(), args.bucket
        try:
            root = tmp_path / "wider"
            t0 = time.perf_counter()
            generate_dataset(root, train=args.images, val=0, seed=0, config=SynthConfig(image_width=args.width))
            print(f"generated {args.images} images {args.width} px wide in {time.perf_counter() - t0:.1f} s")
            s3_url, local_url = f"s3://{bucket}/bench", str(tmp_path / "shards")
            for url in (s3_url, local_url):
                build_split(root, "train", url, shard_size_mb=4, settings=settings, progress=False)
            local_manifest = manifest_url(local_url, "train")
            samples = _samples_of(shard_urls(local_manifest, read_manifest(local_manifest)))
            layout = WiderLayout(root)
            paths = {f"{r.event}/{r.name}": layout.image_path("train", r) for r in layout.records("train")}

            cfg = LoaderConfig(batch_size=8, augment=AugmentConfig(out_size=args.image_size), num_workers=1, shuffle_buffer=64,
                               batches_per_epoch=args.batches)
            limit(samples[:16], cfg)  # warm caches
            rates = {
                "limit (in-memory JPEG, 1 core)": limit(samples, cfg),
                "raw JPEG files, 1 core": limit(samples, cfg, read=lambda s: paths[s["__key__"]].read_bytes()),
                "loader, local shards, 1 worker": loader_rate(local_manifest, cfg, settings),
                "loader, S3, 1 worker": loader_rate(manifest_url(s3_url, "train"), cfg, settings),
            }
            base = rates["limit (in-memory JPEG, 1 core)"]
            print(f"{'':34s} {'img/s':>8s} {'ratio':>7s}   ({args.width} px JPEGs -> {args.image_size}² crops)")
            for name, rate in rates.items():
                print(f"{name:34s} {rate:8.1f} {rate / base:7.1%}")
        finally:
            if platform is not None:
                platform.down(only=("s3",))


if __name__ == "__main__":
    main()
