"""What a CPU cannot prove about the GPU path, settled on one GPU in a few minutes: a line per check.

    bash bench/gpu_check.sh fetch                 # here: the wheels the GPU machine lacks, into .whl/
    bash bench/gpu_check.sh run                   # there: install them offline, then this script
    .venv/bin/python bench/gpu_check.py --dry-run # any machine: every check a CPU can run, on the CPU

Every check prints `PASS`, `FAIL` or `SKIP`, its name and its figures; the script exits 1 if any
check failed. Torch alone, no Ray, MLflow or S3 (a GPU check machine has none of them): the
training loop runs through `jobs.train.worker.run_worker` with a one-process `LocalSession`, as Ray
Train's workers run it, on shards generated into a local folder.

Checks:
1. `collectives`: every collective the worker uses (`jobs/train/collectives.py`) in a 1-rank NCCL
   group, with the group's own refusal of a CPU tensor as the control (it proves the group would
   have caught one); their tensors made only with an explicit device.
2. `tta`: flip and multi-scale test with box voting on the GPU, against the same run on the CPU.
3. `step-syncs`: one `widerface-r50` training step at 1024² in bf16 under CUDA's sync debug mode
   and the project's host-sync counter: forward, losses and backward at most 8 syncs.
4. `checkpoint`: save and load a checkpoint with the optimizer's state on the GPU; the next step
   of the loaded copy equals the original's.
5. `step-speed`: `bench/gpu_step.py`'s configurations (fp32, bf16, bf16 + channels-last,
   bf16 + channels-last + torch.compile): seconds per step, MFU against the card's peak, peak memory.
6. `loop`: `run_worker` on the GPU for a few hundred steps of the `demo` model: the loader's uint8
   hand-over through pinned memory, the buffer reuse, evaluation under autocast, checkpoints.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness  # noqa: F401 - this checkout first on sys.path
import torch

RESULTS: list[tuple[str, str, str]] = []


def check(name: str, run: Callable[[], str], *, skip: str | None = None) -> None:
    """Run one check and print its line: PASS (its figures), FAIL (the error), or SKIP (why)."""
    if skip:
        RESULTS.append(("SKIP", name, skip))
    else:
        started = time.perf_counter()
        try:
            RESULTS.append(("PASS", name, f"{run()} [{time.perf_counter() - started:.0f} s]"))
        except Exception as error:  # noqa: BLE001 - a failed check is reported, the others still run
            traceback.print_exc()
            RESULTS.append(("FAIL", name, f"{type(error).__name__}: {str(error)[:300]}"))
    status, _, text = RESULTS[-1]
    print(f"{status:4s}  {name:12s} {text}", flush=True)


def demo_spec(*overrides: str):
    from jobs.spec import load_spec

    return load_spec("demo", ["model.init_from=null", *overrides])


# ---------------------------------------------------------------- 1. collectives
def collectives(device: torch.device) -> str:
    import torch.distributed as dist

    from isrn_model.builder import build_isrn
    from isrn_model.host_syncs import require_explicit_device
    from jobs.train.collectives import broadcast_from_rank_0, gather_to_rank_0, parameter_spread

    backend = "nccl" if device.type == "cuda" else "gloo"
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(harness.free_ports(1)[0]))
    dist.init_process_group(backend, rank=0, world_size=1, timeout=datetime.timedelta(seconds=60),
                            device_id=device if device.type == "cuda" else None)
    try:
        model = build_isrn(demo_spec().model).to(device)
        with require_explicit_device():
            spread = parameter_spread(model, device)
            ap = broadcast_from_rank_0({"hard": 0.5}, device)
            gathered = gather_to_rank_0({("0--Parade", "a"): [1, 2]}, device)
        assert spread == 0.0 and ap == {"hard": 0.5} and gathered == [{("0--Parade", "a"): [1, 2]}], \
            (spread, ap, gathered)
        control = "no control on gloo (it takes CPU tensors)"
        if backend == "nccl":
            try:
                dist.all_reduce(torch.ones(1))  # a CPU tensor: NCCL must refuse it
                control = "CONTROL FAILED: NCCL took a CPU tensor"
            except (RuntimeError, ValueError) as error:
                control = f"a CPU tensor refused ({type(error).__name__})"
        assert not control.startswith("CONTROL FAILED"), control
        return f"{backend} group of 1: parameter_spread, broadcast_from_rank_0, gather_to_rank_0 ran; {control}"
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- 2. TTA
def tta(device: torch.device) -> str:
    from isrn_model.builder import build_isrn
    from isrn_model.tta import ISRNWithTTA

    spec = demo_spec()
    torch.manual_seed(0)
    model = build_isrn(spec.model, inference=dataclasses.replace(spec.inference, flip=True, multi_scale=True,
                                                                 max_test_size=512, score_threshold=0.01)).eval()
    image = torch.randint(0, 256, (1, 3, 160, 224), dtype=torch.uint8).float()
    reference = ISRNWithTTA(model)(image)[0]
    if device.type == "cpu":
        return f"CPU only: {len(reference['boxes'])} boxes (the device comparison needs a GPU)"
    with torch.no_grad():
        on_device = ISRNWithTTA(model.to(device))(image.to(device))[0]
    assert on_device["boxes"].device.type == device.type, on_device["boxes"].device
    n = min(len(reference["boxes"]), len(on_device["boxes"]))
    gap = (on_device["boxes"][:n].cpu() - reference["boxes"][:n]).abs().max().item() if n else 0.0
    return (f"flip + multi-scale on {device}: {len(on_device['boxes'])} boxes (CPU {len(reference['boxes'])}), "
            f"largest coordinate difference of the first {n}: {gap:.3f} px")


# ---------------------------------------------------------------- 3. host syncs of one step
def step_syncs(device: torch.device, size: int) -> str:
    from gpu_step import random_batch

    from isrn_model.builder import build_isrn
    from isrn_model.host_syncs import count_host_syncs
    from jobs.spec import load_spec
    from jobs.train.steps import BatchFeeder, autocast

    spec = load_spec("widerface-r50", ["model.init_from=null"])
    batch = random_batch(spec.loader.batch_size, size, faces=20)
    model = build_isrn(spec.model, loss=spec.loss, inference=spec.inference).to(device).train()
    feeder = BatchFeeder(device)
    images, targets = feeder.images(batch), feeder.targets(batch)
    with autocast(device, True):  # warm-up: cuDNN and the allocator settle
        sum(model(images, targets).values()).backward()
    debug = ""
    caught: list = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
        with count_host_syncs() as syncs:
            with autocast(device, True):
                losses = model(images, targets)
            sum(losses.values()).backward()
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
            debug = f"; CUDA's sync debug mode warned {sum('synchroniz' in str(w.message) for w in caught)} times"
    assert syncs.total <= 8, f"{syncs.total} host syncs: {dict(syncs.by_op)}"
    return (f"widerface-r50, batch {spec.loader.batch_size} at {size}², bf16 on {device}: forward + losses + "
            f"backward made {syncs.total} host syncs ({dict(syncs.by_op)}){debug}")


# ---------------------------------------------------------------- 4. checkpoint round trip
def checkpoint(device: torch.device) -> str:
    from gpu_step import random_batch

    from isrn_model.builder import build_isrn
    from jobs.train.checkpoints import TrainingState, load_checkpoint, save_checkpoint
    from jobs.train.schedule import build_optimizer
    from jobs.train.steps import BatchFeeder, train_step
    from jobs.train.timing import StepTimer

    spec = demo_spec()
    batch = random_batch(4, 256, faces=5)

    def fresh():
        torch.manual_seed(0)
        model = build_isrn(spec.model, loss=spec.loss, inference=spec.inference).to(device)
        return model, build_optimizer(model, spec.optim)

    def step(model, optimizer) -> float:
        losses = train_step(model, [dict(batch)], optimizer, feeder=BatchFeeder(device), timer=StepTimer(device),
                            grad_clip_norm=spec.train.grad_clip_norm)
        return float(losses["loss"])

    model, optimizer = fresh()
    step(model, optimizer)
    with tempfile.TemporaryDirectory(prefix="isrn-gpu-ckpt-") as directory:
        save_checkpoint(Path(directory), model, optimizer, TrainingState(step=1), spec.to_dict())
        loaded, loaded_optimizer = fresh()
        load_checkpoint(Path(directory), loaded, loaded_optimizer)
    moments = [v for state in loaded_optimizer.state.values() for v in state.values() if torch.is_tensor(v) and v.ndim]
    assert moments and all(v.device.type == device.type for v in moments), "the loaded optimizer state is not on the device"
    a, b = step(model, optimizer), step(loaded, loaded_optimizer)
    same = all(torch.equal(x, y) for x, y in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert same and a == b, (a, b)
    return f"{len(moments)} optimizer states loaded on {device}; the next step's loss {a:.6f} and weights identical"


# ---------------------------------------------------------------- 5. step speed
def step_speed(device: torch.device, size: int, steps: int) -> str:
    from gpu_step import peak_tflops, random_batch, time_config
    from model_figures import count

    from jobs.spec import load_spec

    spec = load_spec("widerface-r50", ["model.init_from=null"])
    batch = random_batch(spec.loader.batch_size, size, faces=20)
    _, forward_gflops = count(spec.model, size)
    step_flops = 3 * forward_gflops * 1e9 * spec.loader.batch_size
    peak = peak_tflops(torch.cuda.get_device_name(device))
    rows = []
    for name in ("fp32", "bf16", "bf16+cl", "bf16+cl+compile"):
        figures = time_config(spec, batch, device, name, steps=steps, warmup=3)
        tflops = step_flops / figures["step_s"] / 1e12
        mfu = f", MFU {tflops / peak:.1%}" if peak else ""
        rows.append(f"{name} {figures['step_s'] * 1000:.0f} ms/step ({tflops:.0f} TFLOP/s{mfu}, "
                    f"{figures['memory_gib']:.1f} GiB, warm-up {figures['warmup_s']:.0f} s)")
        assert all(math.isfinite(v) for v in figures.values()), figures
    return f"widerface-r50 batch {spec.loader.batch_size} at {size}²: " + "; ".join(rows)


# ---------------------------------------------------------------- 6. the loop on the device
def loop(device: torch.device, steps_per_epoch: int, epochs: int) -> str:
    from data_shards.manifest import manifest_url
    from data_shards.shard_writer import build_split
    from data_shards.synth import generate_dataset
    from jobs.train.worker import LocalSession, WorkerJob, run_worker

    workers = 0 if device.type == "cpu" else min(8, max(1, (os.cpu_count() or 2) - 2))
    with tempfile.TemporaryDirectory(prefix="isrn-gpu-loop-") as tmp:
        spec = demo_spec(f"data.shards={tmp}/shards", "data.synth=null", f"checkpoint.storage={tmp}/ckpt",
                         f"train.epochs={epochs}", f"loader.batches_per_epoch={steps_per_epoch}",
                         f"loader.num_workers={workers}", "eval.every_epochs=1", "train.log_every_steps=10",
                         f"checkpoint.every_steps={max(1, steps_per_epoch // 2)}", "train.torch_threads=null")
        generate_dataset(Path(tmp) / "wider", train=96, val=16, seed=1, config=demo_spec().data.synth.generator)
        for split in ("train", "val"):
            build_split(Path(tmp) / "wider", split, f"{tmp}/shards", shard_size_mb=2, progress=False)
        job = WorkerJob(train_manifest=manifest_url(f"{tmp}/shards", "train"),
                        val_manifest=manifest_url(f"{tmp}/shards", "val"), tracking_uri="", run_id=None)
        recorder = _recorder()
        started = time.perf_counter()
        state = run_worker(spec, job, LocalSession(Path(tmp) / "ckpt", device=device), tracker=recorder)
        wall = time.perf_counter() - started
    last = recorder.last_with("epoch_train_s")
    rate = statistics.median(m["images_per_s"] for m in recorder.metrics if "images_per_s" in m)
    shares = {k.removeprefix("time_share_"): v for k, v in recorder.last_with("time_share_other").items()
              if k.startswith("time_share_")}
    assert state.step == steps_per_epoch * epochs and math.isfinite(last.get("val_ap_hard", math.nan)), last
    return (f"demo model, {state.step} steps of {spec.loader.batch_size} at {spec.loader.augment.out_size}² on "
            f"{device}, {workers} loader workers: {wall:.0f} s, median {rate:.1f} images/s, last epoch "
            + ", ".join(f"{k} {v:.0%}" for k, v in sorted(shares.items())) + f"; AP hard {last['val_ap_hard']:.3f}")


def _recorder():
    """Rank 0's metrics, kept instead of sent to MLflow (there is none on a GPU check machine)."""
    from jobs.train.tracking import NullTracker

    class Recorder(NullTracker):
        def __init__(self) -> None:
            self.metrics: list[dict[str, float]] = []

        def log_metrics(self, metrics: dict[str, float], step: int) -> None:
            self.metrics.append(dict(metrics))

        def last_with(self, key: str) -> dict[str, float]:
            return next(m for m in reversed(self.metrics) if key in m)

    return Recorder()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="run on the CPU what a CPU can run, say what it skips")
    parser.add_argument("--size", type=int, default=1024, help="input side of the widerface-r50 checks")
    parser.add_argument("--speed-steps", type=int, default=5, help="timed steps per step-speed configuration")
    parser.add_argument("--loop-steps", type=int, default=100, help="steps per epoch of the loop check")
    parser.add_argument("--loop-epochs", type=int, default=3)
    args = parser.parse_args()
    on_gpu = torch.cuda.is_available() and not args.dry_run
    if not on_gpu and not args.dry_run:
        print(f"no CUDA GPU here (torch {torch.__version__}): nothing to settle; --dry-run runs the CPU half")
        sys.exit(0)
    device = torch.device("cuda" if on_gpu else "cpu")
    name = torch.cuda.get_device_name(device) if on_gpu else "CPU (dry run)"
    print(f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}, {os.cpu_count()} cores", flush=True)
    size = args.size if on_gpu else 256
    no_gpu = None if on_gpu else "needs a CUDA GPU"
    check("collectives", lambda: collectives(device))
    check("tta", lambda: tta(device))
    check("step-syncs", lambda: step_syncs(device, size))
    check("checkpoint", lambda: checkpoint(device))
    check("step-speed", lambda: step_speed(device, size, args.speed_steps), skip=no_gpu)
    steps, epochs = (args.loop_steps, args.loop_epochs) if on_gpu else (3, 1)
    check("loop", lambda: loop(device, steps, epochs))
    failed = [n for status, n, _ in RESULTS if status == "FAIL"]
    print(f"\n{sum(s == 'PASS' for s, _, _ in RESULTS)} passed, {len(failed)} failed, "
          f"{sum(s == 'SKIP' for s, _, _ in RESULTS)} skipped" + (f": {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
