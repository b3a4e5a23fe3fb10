"""Scaling on this machine: the loader at 1 and 2 workers, Ray Train at 1 and 2 workers, against linear.

    .venv/bin/python bench/scaling.py [--repeats 3] [--spec smoke]
    .venv/bin/python bench/scaling.py --quick        # one repetition of short runs: proves it runs

With its own local platform (bench/harness.py), in `--repeats` interleaved repetitions:
  loader      the training loader streaming generated 1024 px JPEGs from S3 to 640² batches of 8
              (bench/loader_throughput.py), with 1 and with 2 dataloader workers, images/s;
  Ray Train   the spec's job (bench/train_overhead.py's run (b)) with 1 and with 2 workers, a fixed
              batch per worker (weak scaling), images/s of the steady steps of its last epoch.
Efficiency = rate with 2 / (2 × rate with 1): 100 % is linear. Each figure is the median over the
repetitions; on a machine with 2 cores the loader's trainer process and the S3 server share them.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import uuid
from pathlib import Path

import cv2

from harness import private_platform, s3_settings
from data_shards.loader import AugmentConfig, LoaderConfig
from data_shards.storage import s3_client
from jobs.data_prep import prepare_data
from loader_throughput import loader_rate, prepare
from train_overhead import bench_spec, images_per_step, job_environment, run_ray_train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="smoke", help="the training job (a spec with a data.synth section)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps-per-epoch", type=int, default=16)
    parser.add_argument("--images", type=int, default=120, help="generated images for the loader")
    parser.add_argument("--batches", type=int, default=40, help="batches per loader measurement")
    parser.add_argument("--quick", action="store_true", help="1 repetition, 6 training steps, 10 loader batches")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.steps_per_epoch, args.images, args.batches = 1, 6, 48, 10
    cv2.setNumThreads(1)

    with private_platform(("s3", "mlflow", "ray")) as platform, tempfile.TemporaryDirectory(prefix="isrn-bench-") as tmp:
        import ray

        settings, bucket = s3_settings(platform), f"bench-{uuid.uuid4().hex[:8]}"
        s3_client(settings).create_bucket(Bucket=bucket)
        _, s3_manifest, _ = prepare(Path(tmp), settings, bucket, args.images, 1024)
        env = job_environment(platform)
        specs = {n: bench_spec(args, platform, n) for n in (1, 2)}
        prepare_data(specs[1], env)
        ray.init(address=env.ray_address, logging_level=logging.WARNING, log_to_driver=False)

        rates: dict[tuple[str, int], list[float]] = {}
        for repeat in range(args.repeats):
            for workers in (1, 2):
                cfg = LoaderConfig(batch_size=8, augment=AugmentConfig(out_size=640), num_workers=workers,
                                   shuffle_buffer=64, batches_per_epoch=args.batches)
                rates.setdefault(("loader", workers), []).append(loader_rate(s3_manifest, cfg, settings).images_per_s)
            for workers in (1, 2):
                run = run_ray_train(specs[workers], env, f"bench-scaling-{workers}-{repeat}-{uuid.uuid4().hex[:6]}")
                rates.setdefault(("train", workers), []).append(images_per_step(specs[workers]) / run.steady_step_s)
            print(f"repetition {repeat + 1}/{args.repeats}: " + ", ".join(
                f"{kind} ×{n} {values[-1]:.1f}" for (kind, n), values in rates.items()) + " images/s", flush=True)

        spec = specs[1]
        print(f"\nScaling on this machine ({os.cpu_count()} cores), images/s, median of {args.repeats}:")
        print(f"{'':44s} {'1 worker':>9s} {'2 workers':>10s} {'speed-up':>9s} {'efficiency':>11s}")
        rows = {"loader": "loader from S3, 640² batches of 8",
                "train": f"Ray Train, spec {spec.name}, batch {spec.loader.batch_size}/worker"}
        for kind, name in rows.items():
            one, two = (statistics.median(rates[(kind, n)]) for n in (1, 2))
            print(f"{name:44s} {one:9.1f} {two:10.1f} {two / one:8.2f}× {two / (2 * one):11.1%}")


if __name__ == "__main__":
    main()
