"""The widerface-r50 training step on one GPU: bf16 autocast, channels-last and torch.compile on and off.

    .venv/bin/python bench/gpu_step.py [--batch 4] [--size 1024] [--steps 20] [--peak-tflops 989]
    .venv/bin/python bench/gpu_step.py --device cpu --size 128 --steps 2 --configs fp32,bf16+cl
                                       # the code path on a CPU only: its figures mean nothing

On a machine without a CUDA GPU it says so and exits 0. Otherwise, for each configuration in
`--configs`, a fresh `widerface-r50` model (jobs/specs/widerface-r50.yaml: the model, loss and
optimiser sections; random weights) runs `jobs.train.steps.train_step` on one batch of random
images with random face boxes kept on the GPU: warm-up steps first (torch.compile compiles in
them; their time is printed apart), then `--steps` timed steps, each ended by
`torch.cuda.synchronize()`. Each configuration's model is set up as the trainer sets it up. Printed per configuration: median seconds per step, images/s,
achieved TFLOP/s and MFU, the model FLOPs utilisation against the GPU's dense bf16 peak.

FLOPs: `bench/model_figures.py`'s count of the network's forward pass at `--size`² (one
multiply-add = 2 FLOPs; post-processing not counted), times 3 for forward + backward (the usual
convention: backward costs twice the forward), times the batch. The peak comes from PEAK_BF16_TFLOPS
by device name, or `--peak-tflops`.

Two host-side figures put the step in context: the hand-over of one loader batch to the GPU as the
training loop does it (the uint8 batch through reusable pinned memory; the model converts it to float32
on the device, inside the timed step), and the
data-loader limit per GPU: one core's decode-and-augment rate at `--size`² (bench/loader_throughput.py's
`limit`) × this machine's cores / its GPUs, against what the fastest configuration consumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

import numpy as np
import torch

import harness  # noqa: F401 - this checkout first on sys.path
from jobs.spec import JobSpec, load_spec

PEAK_BF16_TFLOPS = (  # dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets; first match wins
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM: "NVIDIA H100 80GB HBM3"
    ("A100", 312.0),
)
CONFIGS = {
    # name: (bf16 autocast, channels-last, torch.compile)
    "fp32": (False, False, False),
    "bf16": (True, False, False),
    "bf16+cl": (True, True, False),
    "bf16+compile": (True, False, True),
    "bf16+cl+compile": (True, True, True),
}


def peak_tflops(device_name: str) -> float | None:
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in device_name), None)


def random_batch(batch: int, size: int, faces: int, seed: int = 0) -> dict:
    """Raw-RGB uint8 images [B, 3, S, S], as the training loader sends them, and `faces` xyxy boxes
    per image, 8 to S/3 pixels wide."""
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(0, 256, (batch, 3, size, size), dtype=np.uint8))
    targets = []
    for _ in range(batch):
        wh = rng.uniform(8, size / 3, (faces, 1)) * np.array([[1.0, 1.25]])
        xy = rng.uniform(0, size - wh)
        targets.append({"boxes": torch.from_numpy(np.concatenate([xy, xy + wh], axis=1).astype(np.float32))})
    return {"images": images, "targets": targets}


def time_config(spec: JobSpec, batch: dict, device: torch.device, name: str, steps: int, warmup: int) -> dict:
    """Warm-up seconds, median seconds per timed step and peak memory of one configuration, set up as
    the trainer sets up its model (`jobs.train.trainer.prepare_for_device`: channels-last weights,
    cuDNN's autotuner, the backbone, neck and heads compiled in place)."""
    from isrn_model.builder import build_isrn
    from jobs.train.schedule import build_optimizer
    from jobs.train.steps import BatchFeeder, train_step
    from jobs.train.timing import StepTimer
    from jobs.train.trainer import prepare_for_device

    amp, channels_last, compiled = CONFIGS[name]
    spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, amp=amp, channels_last=channels_last,
                                                               compile=compiled))
    torch.manual_seed(0)
    model = prepare_for_device(build_isrn(spec.model, loss=spec.loss, inference=spec.inference), spec, device,
                               distributed=False)
    optimizer = build_optimizer(model, spec.optim)
    feeder, timer = BatchFeeder(device, channels_last=channels_last), StepTimer(device)
    # The batch stays on the device: this measures the step, not the host-to-device copy (below).
    on_device = {"images": feeder.images(dict(batch)), "targets": feeder.targets(batch)}

    def step() -> float:
        started = time.perf_counter()
        train_step(model, [on_device], optimizer, feeder=feeder, timer=timer, amp=amp,
                   grad_clip_norm=spec.train.grad_clip_norm)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    warmup_s = sum(step() for _ in range(warmup))
    times = [step() for _ in range(steps)]
    memory = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"warmup_s": warmup_s, "step_s": statistics.median(times), "memory_gib": memory}


def hand_over_s(batch: int, size: int, device: torch.device, repeats: int = 5) -> float:
    """Seconds to hand one uint8 loader batch to the device as the loop does (`BatchFeeder`: a copy
    into reusable pinned memory, then an asynchronous copy to the GPU; the float32 conversion is the
    model's first operation, in the step)."""
    from jobs.train.steps import BatchFeeder

    feeder = BatchFeeder(device)
    uint8 = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        feeder.images({"images": uint8.clone()})
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def decode_rate_per_core(size: int, images: int = 32) -> float:
    """Images/s one core decodes and augments: 1024 px WIDER-like JPEGs to `size`² crops."""
    import tempfile
    from pathlib import Path

    import cv2

    from data_shards.loader import AugmentConfig, LoaderConfig
    from data_shards.manifest import manifest_url, read_manifest, shard_urls
    from data_shards.shard_writer import build_split
    from data_shards.synth import SynthConfig, generate_dataset
    from loader_throughput import limit, samples_of

    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory(prefix="isrn-bench-") as tmp:
        generate_dataset(Path(tmp) / "wider", train=images, val=0, seed=0, config=SynthConfig(image_width=1024))
        build_split(Path(tmp) / "wider", "train", f"{tmp}/shards", shard_size_mb=4, progress=False)
        url = manifest_url(f"{tmp}/shards", "train")
        samples = samples_of(shard_urls(url, read_manifest(url)))
    cfg = LoaderConfig(batch_size=4, augment=AugmentConfig(out_size=size))
    limit(samples[:4], cfg)  # warm caches
    return limit(samples, cfg).images_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="widerface-r50")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default: the spec's per-worker batch)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--faces", type=int, default=20, help="random face boxes per image")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (torch.compile compiles here)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak, for a GPU not in the table")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = parser.parse_args()
    configs = args.configs.split(",")
    if unknown := [c for c in configs if c not in CONFIGS]:
        parser.error(f"--configs: unknown {unknown}; choose from {list(CONFIGS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"no CUDA GPU on this machine (torch {torch.__version__}): nothing to measure; "
              "run it where `nvidia-smi` lists a GPU")
        sys.exit(0)

    from model_figures import count

    device = torch.device(args.device)
    spec = load_spec(args.spec, ["model.init_from=null"])
    batch_size = args.batch or spec.loader.batch_size
    params, forward_gflops = count(spec.model, args.size)
    step_flops = 3 * forward_gflops * 1e9 * batch_size
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = args.peak_tflops or (peak_tflops(name) if device.type == "cuda" else None)
    gpus = torch.cuda.device_count() if device.type == "cuda" else 1
    print(f"{name}: {spec.name} model ({params:.1f} M parameters, {forward_gflops:.0f} GFLOPs forward per "
          f"{args.size}² image), batch {batch_size} at {args.size}², {args.faces} faces per image; "
          f"peak {f'{peak:.0f} TFLOP/s dense bf16' if peak else 'unknown (give --peak-tflops)'}")
    print(f"training FLOPs per step: 3 × forward × batch = {step_flops / 1e12:.2f} TFLOP")
    batch = random_batch(batch_size, args.size, args.faces)

    print(f"\n{'configuration':18s} {'s/step':>8s} {'images/s':>9s} {'TFLOP/s':>8s} {'MFU':>6s} "
          f"{'warm-up s':>10s} {'peak GiB':>9s}")
    best = None
    for config in configs:
        figures = time_config(spec, batch, device, config, args.steps, args.warmup)
        tflops = step_flops / figures["step_s"] / 1e12
        mfu = f"{tflops / peak:6.1%}" if peak else f"{'-':>6s}"
        print(f"{config:18s} {figures['step_s']:8.3f} {batch_size / figures['step_s']:9.1f} {tflops:8.1f} {mfu} "
              f"{figures['warmup_s']:10.1f} {figures['memory_gib']:9.1f}", flush=True)
        if best is None or figures["step_s"] < best[1]:
            best = (config, figures["step_s"])

    config, step_s = best
    hand_over = hand_over_s(batch_size, args.size, device)
    print(f"\nhand-over of one loader batch to the device as the loop does it (uint8 through pinned memory; "
          f"the model converts on the device): {hand_over * 1000:.1f} ms, {hand_over / step_s:.1%} of the {config} step; "
          "it is in the trainer's data wait")
    cores = len(os.sched_getaffinity(0))
    per_core = decode_rate_per_core(args.size)
    feed = per_core * cores / gpus
    need = batch_size / step_s
    print(f"data-loader limit per GPU: {per_core:.1f} images/s per core (1024 px JPEGs to {args.size}² crops) "
          f"× {cores} cores / {gpus} GPU(s) = {feed:.0f} images/s; the {config} step consumes {need:.0f} images/s: "
          + ("the loader keeps up" if feed >= need else f"the loader limits training to {feed / need:.0%} of the GPU's rate")
          + " (all cores decoding, none left for the trainer)")


if __name__ == "__main__":
    main()
