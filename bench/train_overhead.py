"""Ray Train against torchrun: the same worker loop on the same S3 shards, in interleaved pairs.

    .venv/bin/python bench/train_overhead.py [--pairs 5] [--spec smoke] [--steps-per-epoch 16] [--epochs 2]
    .venv/bin/python bench/train_overhead.py --quick     # 2 pairs of short runs: proves it works, resolves little

The bench starts its own local platform (SeaweedFS, MLflow, a Ray head; free ports, a temporary
folder), builds the spec's generated data set into that S3, then runs a warm-up pair and
`--pairs` measured pairs, each (a) then (b):
  (a) `torchrun --standalone --nproc-per-node N bench/torchrun_worker.py`: `run_worker` in N
      processes under a gloo process group and DDP; rank 0 copies its checkpoints to a local
      folder; nothing tracked (the plain script a user would otherwise write);
  (b) Ray Train with N workers: `jobs.train.driver.build_trainer` as `isrn train` builds it (DDP over
      gloo), checkpoints uploaded to S3 in the background, rank 0 logging to MLflow and sending
      progress events to the driver.
Both read the same shards from S3 with the spec's loader. Per run:
  steady s/step   wall time from the end of step WARMUP_STEPS to the end of the last step of the
                  last epoch, per step (mid-epoch checkpoint reports and metric logging included;
                  each epoch's first steps wait for the restarted loader workers and are left out)
  wall            launch to exit (torchrun) or `fit()` to its return (Ray), start-up included
  start-up        launch to the first epoch's start: processes, process group, model, loader
and per pair the ratios (b) / (a), summarised as median, min and max over the pairs. Then the last
epoch's `time_share_*` of each mode (what rank 0 logs per epoch: data_wait, forward, backward,
ddp_comm, optimizer, checkpoint, evaluation and other, what no timer covers; shares of the epoch's
wall time), and whether a checkpoint blocks
training: the seconds of the steps right after a checkpoint report (when Ray's background upload
runs) against the other steady steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from harness import private_platform, s3_settings, summarise
from process_cpu import ROLES, ProcessCpu
from data_shards.manifest import manifest_url
from jobs.environment import JobEnvironment
from jobs.data_prep import prepare_data
from jobs.train.run import PreparedJob
from jobs.spec import JobSpec, load_spec

WARMUP_STEPS = 2
"""Steps of each epoch left out of the steady state: the loader's workers restart per epoch, and the
first batches wait for them and for the shuffle buffer to fill."""
SHARES = ("data_wait", "forward", "backward", "ddp_comm", "optimizer", "checkpoint", "evaluation", "other")


@dataclasses.dataclass(frozen=True)
class Step:
    epoch: int
    step_in_epoch: int
    ended: float
    """Wall-clock time the step's event was emitted (torchrun) or reached the driver (Ray)."""
    seconds: float
    """The worker's own data wait + compute of this step (its images/s event, inverted)."""


@dataclasses.dataclass(frozen=True)
class RunResult:
    mode: str
    wall_s: float
    startup_s: float
    steps: list[Step]
    last_epoch: dict[str, float]
    """Rank 0's logged metrics of the last epoch: epoch_train_s, time_share_*, …"""
    cores: dict[str, float] = dataclasses.field(default_factory=dict)
    """Cores each role of process used during the steady window (bench/process_cpu.py)."""

    @property
    def steady_window(self) -> tuple[Step, Step]:
        """The steady state: the end of step WARMUP_STEPS of the last epoch to the end of its last step."""
        last = [s for s in self.steps if s.epoch == self.steps[-1].epoch]
        return next(s for s in last if s.step_in_epoch == WARMUP_STEPS), last[-1]

    @property
    def steady_step_s(self) -> float:
        start, end = self.steady_window
        return (end.ended - start.ended) / (end.step_in_epoch - WARMUP_STEPS)

    def after_checkpoint(self, every: int, steps_per_epoch: int) -> tuple[float, float]:
        """Mean seconds of the steady steps right after a mid-epoch checkpoint report, and of the others."""
        steady = [s for s in self.steps if s.step_in_epoch > WARMUP_STEPS]
        follows = [(s.step_in_epoch - 1) % every == 0 for s in steady]
        after = [s.seconds for s, f in zip(steady, follows) if f]
        others = [s.seconds for s, f in zip(steady, follows) if not f]
        return (statistics.mean(after) if after else float("nan")), statistics.mean(others)


def parse_events(events: list[tuple[float, str, dict[str, Any]]], images_per_step: int,
                 launched: float) -> tuple[list[Step], float]:
    """The steps of a run's progress events, and its start-up seconds (launch to the first epoch's start)."""
    steps, epoch, startup = [], 0, float("nan")
    for ended, kind, data in events:
        if kind == "EpochStarted":
            epoch = data["epoch"]
            if epoch == 1:
                startup = ended - launched
        elif kind == "StepDone" and data["images_per_s"]:  # every step logs: train.log_every_steps=1
            steps.append(Step(epoch, data["step_in_epoch"], ended, images_per_step / data["images_per_s"]))
    return steps, startup


def bench_spec(args: argparse.Namespace, platform, workers: int) -> JobSpec:
    s3, work = platform.config.s3, platform.state
    return load_spec(args.spec, [
        f"data.shards=s3://{s3.bucket_shards}/bench-{args.spec}", f"data.synth.root={work / 'data'}",
        f"checkpoint.storage=s3://{s3.bucket_checkpoints}/bench-runs", f"scaling.num_workers={workers}",
        f"train.epochs={args.epochs}", f"eval.every_epochs={args.epochs}",
        f"loader.batches_per_epoch={args.steps_per_epoch}", "tracking.log_model=false",
        # Every step reads its loss and reports its images/s (the per-step times this bench compares).
        "train.log_every_steps=1",
    ])


def images_per_step(spec: JobSpec) -> int:
    return spec.loader.batch_size * spec.train.grad_accum_steps * spec.scaling.num_workers


def run_torchrun(spec: JobSpec, work: Path, name: str) -> RunResult:
    """(a): `run_worker` under torchrun, one process per worker (bench/torchrun_worker.py)."""
    config, result = work / f"{name}.json", work / f"{name}-result.json"
    job = {"train_manifest": manifest_url(spec.data.shards, "train"),
           "val_manifest": manifest_url(spec.data.shards, "val"), "tracking_uri": "", "run_id": None}
    config.write_text(json.dumps({"spec": spec.to_dict(), "job": job, "checkpoints": str(work / name)}, default=str))
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", f"--nproc-per-node={spec.scaling.num_workers}",
               str(Path(__file__).with_name("torchrun_worker.py")), str(config), str(result)]
    launched = time.time()
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ)
    wall = time.time() - launched
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    recorded = json.loads(result.read_text())
    steps, startup = parse_events(recorded["events"], images_per_step(spec), launched)
    # The epoch's metrics and its time shares are logged in two calls at the same step: merge them.
    last_step = [m for m in recorded["metrics"] if "epoch_train_s" in m][-1]["step"]
    last_epoch = {k: v for m in recorded["metrics"] if m["step"] == last_step for k, v in m.items()}
    return RunResult("torchrun", wall, startup, steps, last_epoch)


def run_ray_train(spec: JobSpec, env: JobEnvironment, name: str) -> RunResult:
    """(b): the Ray Train job of `isrn train` (build_trainer, MLflow run, progress queue)."""
    from mlflow.tracking import MlflowClient
    from ray.util.queue import Queue

    from jobs.train.run import build_trainer
    from jobs.train.tracking import finish_run, start_or_resume_run

    run_id = start_or_resume_run(env.tracking_uri, spec.tracking.experiment, name, tags={},
                                 params=spec.flat_params(), spec_yaml=spec.to_yaml())
    queue, events, stop = Queue(actor_options={"num_cpus": 0}), [], threading.Event()

    def drain() -> None:  # what ProgressDisplay does, timing each event as it arrives
        while not stop.is_set() or not queue.empty():
            try:
                event = queue.get(timeout=0.5)  # as ProgressDisplay polls
            except Exception:  # noqa: BLE001 - Empty
                continue
            events.append((time.time(), type(event).__name__, dataclasses.asdict(event)))

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    job = PreparedJob(spec=spec, env=env, train_manifest=manifest_url(spec.data.shards, "train"),
                      val_manifest=manifest_url(spec.data.shards, "val"), lineage={})
    launched = time.time()
    build_trainer(job, name, run_id, progress=queue).fit()
    wall = time.time() - launched
    stop.set()
    thread.join()
    queue.shutdown()
    finish_run(env.tracking_uri, run_id, "FINISHED")
    steps, startup = parse_events(events, images_per_step(spec), launched)
    last_epoch = MlflowClient(env.tracking_uri).get_run(run_id).data.metrics  # the latest value of each
    return RunResult("Ray Train", wall, startup, steps, last_epoch)


def job_environment(platform) -> JobEnvironment:
    c = platform.config
    return JobEnvironment(s3=s3_settings(platform), tracking_uri=c.tracking_uri, ray_address=c.ray_gcs_address,
                          api_server=c.ray_dashboard_url, local=c)


def print_pairs(pairs: list[tuple[RunResult, RunResult]]) -> None:
    a_name, b_name = pairs[0][0].mode, pairs[0][1].mode
    print(f"{'pair':8s} {a_name + ' s/step':>17s} {b_name + ' s/step':>18s} {'ratio':>6s}"
          f" {a_name + ' wall':>14s} {b_name + ' wall':>15s} {'ratio':>6s} {'start-up a / b (s)':>19s}")
    for index, (a, b) in enumerate(pairs):
        label = "warm-up" if index == 0 else str(index)
        print(f"{label:8s} {a.steady_step_s:17.3f} {b.steady_step_s:18.3f} {b.steady_step_s / a.steady_step_s:6.3f}"
              f" {a.wall_s:14.1f} {b.wall_s:15.1f} {b.wall_s / a.wall_s:6.3f} {a.startup_s:9.1f} / {b.startup_s:<7.1f}")
    measured = pairs[1:]
    print(f"\n{b_name} / {a_name}, seconds per steady step: "
          f"{summarise([b.steady_step_s / a.steady_step_s for a, b in measured])}")
    print(f"{b_name} / {a_name}, end-to-end wall time:    "
          f"{summarise([b.wall_s / a.wall_s for a, b in measured])}")
    print(f"start-up (launch to the first epoch, in the wall time): {a_name} median "
          f"{statistics.median(a.startup_s for a, _ in measured):.1f} s, {b_name} median "
          f"{statistics.median(b.startup_s for _, b in measured):.1f} s")


def print_time_shares(pairs: list[tuple[RunResult, RunResult]]) -> None:
    measured = pairs[1:]
    names = (measured[0][0].mode, measured[0][1].mode)
    print(f"\nWhere the last epoch's time went (time_share_*, median over {len(measured)} runs each):")
    print(f"{'part':12s} {names[0]:>10s} {names[1]:>10s}")
    for part in SHARES:
        values = [statistics.median(run.last_epoch.get(f"time_share_{part}", 0.0) for run in side)
                  for side in zip(*measured)]
        print(f"{part:12s} {values[0]:10.1%} {values[1]:10.1%}")


def print_checkpoint_blocking(pairs: list[tuple[RunResult, RunResult]], spec: JobSpec) -> None:
    every = spec.checkpoint.every_steps
    if not every or every >= spec.loader.batches_per_epoch:
        print("\nno mid-epoch checkpoint: set checkpoint.every_steps below --steps-per-epoch to see one")
        return
    print(f"\nDoes a checkpoint block training? A report every {every} steps: rank 0 writes the state, then "
          "torchrun copies it to a folder,\nRay Train uploads it to S3 in a background thread. Mean seconds of the "
          "steady steps right after a report vs the others:")
    for side in zip(*pairs[1:]):
        after, others = zip(*(run.after_checkpoint(every, spec.loader.batches_per_epoch) for run in side))
        a, o = statistics.median(after), statistics.median(others)
        print(f"  {side[0].mode:10s} {a:.3f} vs {o:.3f} s ({a / o - 1:+.1%})")


def print_cores(pairs: list[tuple[RunResult, RunResult]]) -> None:
    measured = pairs[1:]
    names = (measured[0][0].mode, measured[0][1].mode)
    print(f"\nWho used the {os.cpu_count()} cores in the steady window (cores, median over {len(measured)} runs; "
          "sampled each second, bench/process_cpu.py):")
    print(f"{'process':28s} {names[0]:>10s} {names[1]:>10s}")
    rows = {role: [statistics.median(run.cores.get(role, 0.0) for run in side) for side in zip(*measured)]
            for role in ROLES}
    for role, values in rows.items():
        if max(values) >= 0.0005:
            print(f"{role:28s} {values[0]:10.3f} {values[1]:10.3f}")
    work = ("ranks", "loader workers")
    besides = [sum(v[i] for role, v in rows.items() if role not in work) for i in range(2)]
    print(f"{'all but ranks and loaders':28s} {besides[0]:10.3f} {besides[1]:10.3f}   "
          f"({names[1]} takes {besides[1] - besides[0]:+.3f} cores more: "
          f"{(besides[1] - besides[0]) / (os.cpu_count() or 1):+.1%} of this machine)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="smoke", help="a spec with a data.synth section (smoke, demo)")
    parser.add_argument("--workers", type=int, default=2, help="DDP processes / Ray Train workers")
    parser.add_argument("--pairs", type=int, default=5, help="measured pairs after the warm-up pair")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps-per-epoch", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="2 pairs of 2 epochs of 6 steps")
    args = parser.parse_args()
    if args.quick:
        args.pairs, args.epochs, args.steps_per_epoch = 2, 2, 6
    if args.steps_per_epoch < WARMUP_STEPS + 2:
        parser.error(f"--steps-per-epoch must be at least {WARMUP_STEPS + 2} (the first {WARMUP_STEPS} are warm-up)")

    with private_platform(("s3", "mlflow", "ray")) as platform, \
            tempfile.TemporaryDirectory(prefix="isrn-bench-runs-") as tmp:
        env = job_environment(platform)
        spec = bench_spec(args, platform, args.workers)
        started = time.perf_counter()
        prepare_data(spec, env)
        print(f"data: {spec.data.shards} ({time.perf_counter() - started:.0f} s to generate and shard)")
        import ray

        # The workers' per-step and per-report log lines would bury the figures; a failure still
        # raises from fit() with the worker's traceback.
        ray.init(address=env.ray_address, logging_level=logging.WARNING, log_to_driver=False)
        print(f"spec {spec.name}: {args.workers} workers × batch {spec.loader.batch_size} at "
              f"{spec.loader.augment.out_size}², {spec.loader.num_workers} loader worker(s) per rank, "
              f"{args.steps_per_epoch} steps per epoch, {args.epochs} epochs, checkpoint every "
              f"{spec.checkpoint.every_steps} steps, evaluation after the last epoch")
        pairs = []
        with ProcessCpu() as cpu:
            for index in range(args.pairs + 1):
                tag = uuid.uuid4().hex[:6]
                a = run_torchrun(spec, Path(tmp), f"torchrun-{index}-{tag}")
                b = run_ray_train(spec, env, f"bench-ray-{index}-{tag}")
                a, b = (dataclasses.replace(run, cores=cpu.cores_by_role(*(s.ended for s in run.steady_window)))
                        for run in (a, b))
                pairs.append((a, b))
                print(f"  pair {index} ({'warm-up' if index == 0 else 'measured'}): torchrun {a.steady_step_s:.3f} "
                      f"s/step, Ray Train {b.steady_step_s:.3f} s/step", flush=True)
        print()
        print_pairs(pairs)
        print_time_shares(pairs)
        print_checkpoint_blocking(pairs, spec)
        print_cores(pairs)


if __name__ == "__main__":
    main()
