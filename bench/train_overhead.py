"""Ray Train's overhead on the training step, measured side by side in one run.

The same loop (`jobs.train.worker.run_worker`) runs twice on the same local shards with one worker:
in this process (`LocalSession`, checkpoints copied to a folder) and under Ray Train (`TorchTrainer`,
one worker, checkpoints reported to Ray's storage). Each epoch's wall time of its steps
(`epoch_train_s`, checkpoint reports included, evaluation excluded) gives seconds per step; the
ratio is the overhead. Start-up (worker group, process group) is printed separately.

    .venv/bin/python bench/train_overhead.py [--steps-per-epoch 20] [--epochs 2]

Needs a Ray head (`isrn platform up`); storage and data are local folders, so no S3 or MLflow.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from data_shards.manifest import manifest_url
from jobs.environment import JobEnvironment
from jobs.spec import load_spec
from jobs.preparation import PreparedJob, connect_ray, ensure_data
from jobs.train.driver import build_trainer
from jobs.train.worker import LocalSession, WorkerJob, run_worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="smoke")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    work = Path(tempfile.mkdtemp(prefix="isrn-bench-"))
    spec = load_spec(args.spec, [
        f"data.shards={work / 'shards'}", f"data.synth.root={work / 'data'}", f"checkpoint.storage={work / 'ray'}",
        "scaling.num_workers=1", f"train.epochs={args.epochs}", f"eval.every_epochs={args.epochs}",
        f"loader.batches_per_epoch={args.steps_per_epoch}", "tracking.log_model=false", "train.torch_threads=1",
    ])
    env = JobEnvironment.resolve()
    ensure_data(spec, env)
    job = WorkerJob(train_manifest=manifest_url(spec.data.shards, "train"),
                    val_manifest=manifest_url(spec.data.shards, "val"), tracking_uri="", run_id=None)

    started = time.perf_counter()
    session = LocalSession(work / "local-checkpoints")
    run_worker(spec, job, session)
    local_total = time.perf_counter() - started
    local = [r for r in session.reports if "epoch_train_s" in r][-1]

    connect_ray(env)
    import ray

    # The same plain loop in a Ray worker process: the process environment Ray gives every task
    # (thread settings, log capture, the cluster's daemons), without Ray Train's machinery.
    @ray.remote(num_cpus=1)
    def plain_loop_in_ray_task() -> tuple[dict, float]:
        started = time.perf_counter()
        task_session = LocalSession(Path(tempfile.mkdtemp(prefix="isrn-bench-task-")))
        run_worker(spec, job, task_session)
        return [r for r in task_session.reports if "epoch_train_s" in r][-1], time.perf_counter() - started

    task, task_total = ray.get(plain_loop_in_ray_task.remote())

    started = time.perf_counter()
    prepared = PreparedJob(spec=spec, env=env, train_manifest=job.train_manifest, val_manifest=job.val_manifest,
                           lineage={})
    result = build_trainer(prepared, f"bench-{int(time.time())}", None).fit()
    ray_total = time.perf_counter() - started
    remote = result.metrics

    steps = {name: r["epoch_train_s"] / r["epoch_steps"] for name, r in
             (("process", local), ("task", task), ("train", remote))}
    print(f"spec {args.spec}, 1 worker, batch {spec.loader.batch_size} at {spec.loader.augment.out_size}², "
          f"checkpoint every {spec.checkpoint.every_steps} steps; last epoch of {args.epochs}")
    print(f"{'':30}{'plain process':>15}{'plain Ray task':>16}{'Ray Train':>11}")
    print(f"{'seconds per step':30}{steps['process']:15.3f}{steps['task']:16.3f}{steps['train']:11.3f}")
    print(f"{'images per second':30}" + "".join(
        f"{spec.loader.batch_size / steps[k]:{w}.2f}" for k, w in (("process", 15), ("task", 16), ("train", 11))))
    print(f"{'whole run, start-up incl. (s)':30}{local_total:15.1f}{task_total:16.1f}{ray_total:11.1f}")
    print(f"Ray Train overhead per step vs the same loop in a Ray task: "
          f"{100 * (steps['train'] / steps['task'] - 1):+.1f}% (target < 5%)")
    print(f"Ray worker process vs a plain process: {100 * (steps['task'] / steps['process'] - 1):+.1f}%")


if __name__ == "__main__":
    main()
