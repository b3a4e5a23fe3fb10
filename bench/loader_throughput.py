"""The training loader against one core's decode-and-augment limit, and S3 against local shards.

    .venv/bin/python bench/loader_throughput.py --start-s3             # own SeaweedFS, generated data
    .venv/bin/python bench/loader_throughput.py --start-s3 --quick     # 2 short repetitions: proves it runs
    .venv/bin/python bench/loader_throughput.py --bucket isrn-bench    # an S3 from the AWS_* variables

Generated WIDER-like JPEGs (1024 px wide) are sharded twice, into a local folder and into S3. Then
`--repeats` interleaved repetitions, each measuring in turn (images per second):
    limit   what one dataloader worker must do per image, on in-memory JPEG bytes in this process, one
            core, one OpenCV thread: decode, augment (crop, resize to S², flip, photometric, boxes),
            and write it into the batch layout the trainer receives (uint8 RGB [B, 3, S, S])
    local   the training loader over the local shards, 1 dataloader worker
    s3      the same loader streaming the same shards from S3 through the boto3 opener, 1 worker
The ratios of each repetition (local / limit, s3 / limit, s3 / local) are printed as median, min
and max (target >= 0.95 for s3 / limit and s3 / local). The CPU time per image of the limit, of the
loader's worker and of the process receiving its batches is printed too: the limit's CPU over the
worker's is the share of the limit the loader reaches when a core is free for the receiving
process, and CPU time is little affected by other load on the machine. Then a profile: one
worker's milliseconds per image, stage by stage (manual timers over the same samples), against the
loader's measured time per image; what the stages do not account for is the hand-over to the
trainer and process scheduling.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import psutil

from harness import private_platform, s3_settings, summarise
from data_shards.augment import TrainTransform, photometric, sample_train_transform
from data_shards.batch_buffers import BatchBuffers, release, write_rgb_planes
from data_shards.loader import (AugmentConfig, LoaderConfig, decode_sample, face_boxes, make_train_loader,
                                release_images)
from data_shards.manifest import manifest_url, read_manifest, shard_urls
from data_shards.s3_opener import register_s3_opener
from data_shards.shard_writer import build_split
from data_shards.storage import S3Settings, s3_client
from data_shards.synth import SynthConfig, generate_dataset
from data_shards.train_loader import _shuffled

TARGET = 0.95


def samples_of(shards: list[str]) -> list[dict]:
    """The raw webdataset samples (bytes) of `shards`, read through webdataset's tar parsing."""
    import webdataset as wds

    return [s for s in wds.DataPipeline(wds.SimpleShardList(shards), wds.tarfile_to_samples()) if "__key__" in s]


@dataclasses.dataclass(frozen=True)
class Rate:
    images_per_s: float
    worker_cpu_ms: float
    """CPU milliseconds per image of the process(es) doing the work: this one for the limit, the
    dataloader workers for the loader. CPU time is little affected by other load on the machine."""
    trainer_cpu_ms: float = 0.0
    """CPU milliseconds per image of the process receiving the loader's batches (and releasing
    their buffers, as the training step does once the model has read them)."""


def limit(samples: list[dict], cfg: LoaderConfig) -> Rate:
    """One worker's per-image work on in-memory samples, in this process (module docstring)."""
    rng, aug = np.random.default_rng(0), cfg.augment
    buffers = BatchBuffers(capacity=1)
    shape = (cfg.batch_size, 3, aug.out_size, aug.out_size)
    start, cpu, batch = time.perf_counter(), time.process_time(), buffers.take(shape)
    for index, sample in enumerate(samples):
        image, record = decode_sample(sample)
        boxes = face_boxes(record, cfg.keep_invalid)
        transform = sample_train_transform(rng, image.shape[:2], boxes, aug)
        write_rgb_planes(transform.apply_image(image), batch[index % cfg.batch_size])
        transform.apply_boxes(boxes)
        if index % cfg.batch_size == cfg.batch_size - 1:
            release(batch)
            batch = buffers.take(shape)
    n = len(samples)
    return Rate(n / (time.perf_counter() - start), 1000 * (time.process_time() - cpu) / n)


def _dataloader_workers() -> list[psutil.Process]:
    """This process's live dataloader workers: the children of its multiprocessing fork server."""
    me = psutil.Process()
    servers = [c for c in me.children() if "multiprocessing.forkserver" in " ".join(c.cmdline())]
    return [w for server in servers for w in server.children()]


def _cpu_s(processes: list[psutil.Process]) -> float:
    return sum(t.user + t.system for t in (p.cpu_times() for p in processes))


def loader_rate(url: str, cfg: LoaderConfig, settings: S3Settings | None) -> Rate:
    """The training loader after its first batch (worker start-up and first shard excluded); the
    last batch is left out of the CPU times (the workers exit with it)."""
    batches = iter(make_train_loader(url, cfg, settings=settings))
    release_images(next(batches))
    workers = _dataloader_workers()
    start, cpu, workers_cpu, n = time.perf_counter(), time.process_time(), _cpu_s(workers), 0
    for _ in range(cfg.batches_per_epoch - 2):
        batch = next(batches)
        n += len(batch["targets"])
        release_images(batch)  # what the training step does once the model has read the images
    rate, trainer_ms = n / (time.perf_counter() - start), 1000 * (time.process_time() - cpu) / n
    worker_ms = 1000 * (_cpu_s(workers) - workers_cpu) / n
    for batch in batches:
        release_images(batch)
    return Rate(rate, worker_ms, trainer_ms)


def _ms_each(work: Callable[..., object], inputs: list[tuple]) -> float:
    """Milliseconds per call of `work(*args)` over `inputs`."""
    start = time.perf_counter()
    for args in inputs:
        work(*args)
    return 1000 * (time.perf_counter() - start) / len(inputs)


def _geometry_only(transform: TrainTransform) -> TrainTransform:
    return dataclasses.replace(transform, brightness=0.0, contrast=1.0, saturation=1.0, hue=0.0)


def stage_profile(samples: list[dict], cfg: LoaderConfig, local_shards: list[str], s3_shards: list[str]) -> dict[str, float]:
    """Milliseconds per image of each stage a training worker runs, timed one stage at a time over
    the same samples (each stage's inputs made beforehand)."""
    aug, keep, rng = cfg.augment, cfg.keep_invalid, np.random.default_rng(1)
    decoded = [decode_sample(s) for s in samples]
    drawn = [sample_train_transform(rng, image.shape[:2], face_boxes(record, keep), aug) for image, record in decoded]
    warped = [_geometry_only(t).apply_image(image) for t, (image, _) in zip(drawn, decoded)]
    out = BatchBuffers(capacity=1).take((1, 3, aug.out_size, aug.out_size))[0]
    passes = 4  # the endless training stream reads the shards again and again
    per_image = 1000 / (passes * len(samples))
    stages = {
        "tar parsing (webdataset, local file)": per_image * _timed(lambda: samples_of(local_shards * passes)),
        "shuffle buffer": per_image * _timed(lambda: sum(1 for _ in _shuffled(
            iter(samples * passes), cfg.shuffle_buffer, np.random.default_rng(2)))),
        "decode (cv2.imdecode) + JSON": _ms_each(decode_sample, [(s,) for s in samples]),
        "augment: draw the transform": _ms_each(
            lambda image, record: sample_train_transform(rng, image.shape[:2], face_boxes(record, keep), aug), decoded),
        "augment: warp (crop, resize, flip)": _ms_each(
            lambda t, image: _geometry_only(t).apply_image(image), [(t, d[0]) for t, d in zip(drawn, decoded)]),
        "augment: photometric": _ms_each(
            lambda t, image: photometric(image, t.brightness, t.contrast, t.saturation, t.hue), list(zip(drawn, warped))),
        "augment: boxes": _ms_each(
            lambda t, record: t.apply_boxes(face_boxes(record, keep)), [(t, d[1]) for t, d in zip(drawn, decoded)]),
        "batch layout (RGB planes, shared buffer)": _ms_each(lambda image: write_rgb_planes(image, out),
                                                             [(w,) for w in warped]),
    }
    s3_parsing = per_image * _timed(lambda: samples_of(s3_shards * passes))
    stages["S3 reads (boto3 stream) beyond local"] = s3_parsing - stages["tar parsing (webdataset, local file)"]
    return stages


def _timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def prepare(tmp: Path, settings: S3Settings, bucket: str, images: int, width: int) -> tuple[str, str, list[dict]]:
    """Generate `images` WIDER-like JPEGs and shard them locally and into S3; (local manifest, S3 manifest, samples)."""
    root = tmp / "wider"
    started = time.perf_counter()
    generate_dataset(root, train=images, val=0, seed=0, config=SynthConfig(image_width=width))
    print(f"generated {images} images {width} px wide in {time.perf_counter() - started:.1f} s")
    s3_url, local_url = f"s3://{bucket}/bench", str(tmp / "shards")
    for url in (s3_url, local_url):
        build_split(root, "train", url, shard_size_mb=4, settings=settings, progress=False)
    local_manifest = manifest_url(local_url, "train")
    return local_manifest, manifest_url(s3_url, "train"), samples_of(shard_urls(local_manifest, read_manifest(local_manifest)))


def measure(args: argparse.Namespace, settings: S3Settings, bucket: str) -> None:
    with tempfile.TemporaryDirectory(prefix="isrn-bench-") as tmp:
        local_manifest, s3_manifest, samples = prepare(Path(tmp), settings, bucket, args.images, args.width)
        cfg = LoaderConfig(batch_size=8, augment=AugmentConfig(out_size=args.image_size), num_workers=1,
                           shuffle_buffer=64, batches_per_epoch=args.batches)
        limit(samples[:16], cfg)  # warm caches
        rows: list[dict[str, Rate]] = []
        for repeat in range(args.repeats):
            row = {"limit": limit(samples, cfg), "local": loader_rate(local_manifest, cfg, settings),
                   "s3": loader_rate(s3_manifest, cfg, settings)}
            rows.append(row)
            print(f"repetition {repeat + 1}/{args.repeats}: " + ", ".join(
                f"{k} {v.images_per_s:.1f}" for k, v in row.items()) + " images/s")

        print(f"\nimages/s, {args.width} px JPEGs -> {args.image_size}² crops, batch {cfg.batch_size}, "
              f"shuffle buffer {cfg.shuffle_buffer}; {args.repeats} interleaved repetitions")
        print_rates(rows)
        register_s3_opener(settings)
        local_shards = shard_urls(local_manifest, read_manifest(local_manifest))
        s3_shards = shard_urls(s3_manifest, read_manifest(s3_manifest, settings))
        print_profile(stage_profile(samples, cfg, local_shards, s3_shards), rows)


def print_rates(rows: list[dict[str, Rate]]) -> None:
    print(f"{'':36s} {'median':>8s} {'min':>8s} {'max':>8s}")
    names = {"limit": "limit (in-memory JPEG, 1 core)", "local": "loader, local shards, 1 worker",
             "s3": "loader, S3, 1 worker"}
    for key, name in names.items():
        values = sorted(r[key].images_per_s for r in rows)
        print(f"{name:36s} {np.median(values):8.1f} {values[0]:8.1f} {values[-1]:8.1f}")
    print()
    ratios = (("local / limit", ("local", "limit"), None), ("s3 / limit", ("s3", "limit"), TARGET),
              ("s3 / local", ("s3", "local"), TARGET))
    for label, (num, den), target in ratios:
        print(f"{label:14s} {summarise([r[num].images_per_s / r[den].images_per_s for r in rows], target)}")
    print("\nCPU milliseconds per image (process CPU time: little affected by other load; with a core free for "
          "the\ntrainer process, the loader's rate is the limit's CPU over its worker's):")
    cpu = {key: float(np.median([r[key].worker_cpu_ms for r in rows])) for key in names}
    print(f"  limit (this process)                  {cpu['limit']:6.2f}")
    for key in ("local", "s3"):
        print(f"  {names[key] + ' (its worker)':37s} {cpu[key]:6.2f}   limit / worker "
              f"{summarise([r['limit'].worker_cpu_ms / r[key].worker_cpu_ms for r in rows], TARGET)}")
    trainer = float(np.median([r["local"].trainer_cpu_ms for r in rows]))
    print(f"  trainer process (receives the uint8 batch)     {trainer:6.2f}")


def print_profile(stages: dict[str, float], rows: list[dict[str, Rate]]) -> None:
    """The stages against the loader's measured milliseconds per image (the medians of `rows`)."""
    loader_ms, s3_ms, limit_ms = (1000 / float(np.median([r[k].images_per_s for r in rows]))
                                  for k in ("local", "s3", "limit"))
    print(f"\nWhere one worker's time per image goes (ms; 100 % = the loader over local shards, "
          f"{loader_ms:.2f} ms/image):")
    local_stages = {k: v for k, v in stages.items() if not k.startswith("S3")}
    for name, ms in local_stages.items():
        print(f"  {name:44s} {ms:6.2f}  {ms / loader_ms:6.1%}")
    rest = loader_ms - sum(local_stages.values())
    print(f"  {'not in the stages: hand-over to the trainer,':44s} {rest:6.2f}  {rest / loader_ms:6.1%}")
    print(f"  {'  process switching, other load':44s}")
    print(f"  the limit's work (decode, augment, layout) {limit_ms:6.2f}  {limit_ms / loader_ms:6.1%}")
    s3_extra = stages["S3 reads (boto3 stream) beyond local"]
    print(f"S3: the loader took {s3_ms - loader_ms:+.2f} ms/image over local shards; reading the shards "
          f"through the boto3 opener costs {s3_extra:+.2f} ms/image more than local files in this process "
          f"(the S3 server runs on the same cores)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start-s3", action="store_true", help="start a SeaweedFS of its own")
    parser.add_argument("--bucket", default=None, help="existing bucket (AWS_* variables) when not --start-s3")
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--width", type=int, default=1024, help="generated image width (WIDER: 1024)")
    parser.add_argument("--image-size", type=int, default=640)
    parser.add_argument("--batches", type=int, default=40, help="batches per loader measurement")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions")
    parser.add_argument("--quick", action="store_true", help="48 images, 10 batches, 2 repetitions")
    args = parser.parse_args()
    if args.quick:
        args.images, args.batches, args.repeats = 48, 10, 2
    cv2.setNumThreads(1)

    if args.start_s3:
        with private_platform(("s3",)) as platform:
            settings, bucket = s3_settings(platform), f"bench-{uuid.uuid4().hex[:8]}"
            s3_client(settings).create_bucket(Bucket=bucket)
            measure(args, settings, bucket)
    else:
        if not args.bucket:
            parser.error("give --bucket (with the AWS_* variables) or --start-s3")
        measure(args, S3Settings.from_env(), args.bucket)


if __name__ == "__main__":
    main()
