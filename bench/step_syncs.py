"""Host syncs and CPU time of a training step and of post-processing: a base commit's code against this checkout's.

    .venv/bin/python bench/step_syncs.py [--base 4b5aeef] [--rounds 7] [--threads 1]
    .venv/bin/python bench/step_syncs.py --quick        # 2 rounds, smoke only: proves it works

The base commit is checked out with `git worktree add --detach` into a temporary folder (removed at
the end). Two worker processes, one per checkout (that checkout first on `sys.path`), each build
the same models from the same seeds and answer the same requests; `isrn_model/host_syncs.py` is
loaded into both from this checkout by file path, so both are counted by the same rules.

Printed:
  host syncs   forward + losses + backward of the `smoke` model (jobs/specs/smoke.yaml's model
               section), 256² uint8 images with 3 faces each, at batch 4 and 16; and
               `select_detections` on dense predictions of 4 images (about 300 and 3,000
               candidates an image over the 0.05 threshold), NMS on a GPU's schedule (this
               checkout's NMS reads in blocks on the CPU, where reading costs nothing);
  CPU time     per configuration, `--rounds` rounds; in each, both workers run one step in turn
               (the order alternates between rounds), after one warm-up step each: the ratio
               this/base of each round, as median (min, max). Steps: forward + losses + backward
               of the smoke and demo models (jobs/specs/demo.yaml), 256², batch 4 and 8, on
               `--threads` threads (the training jobs use 1); post-processing as above.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness  # this checkout first on sys.path
from harness import summarise

REPO = harness.REPO
STEP_CONFIGS = [("smoke", 4), ("smoke", 8), ("demo", 4), ("demo", 8)]
POST_CONFIGS = [("post", 300), ("post", 3000)]
SIZE = 256


# -- the worker: runs in a subprocess with one checkout first on sys.path --------------------------
def worker(root: str, threads: int) -> None:
    """Answer JSON requests on stdin, one per line, with one JSON line on stdout."""
    sys.path.insert(0, root)
    import importlib.util

    import numpy as np
    import torch
    import yaml

    import isrn_model
    from isrn_model.builder import build_isrn
    from isrn_model.config import InferenceConfig, ModelConfig
    from isrn_model.postprocess import select_detections

    if not Path(isrn_model.__file__).resolve().is_relative_to(Path(root).resolve()):
        raise RuntimeError(f"worker for {root} imported {isrn_model.__file__}")
    spec = importlib.util.spec_from_file_location("host_syncs", REPO / "isrn_model" / "host_syncs.py")
    host_syncs = importlib.util.module_from_spec(spec)
    sys.modules["host_syncs"] = host_syncs  # before running it: its dataclass looks its module up
    spec.loader.exec_module(host_syncs)
    torch.set_num_threads(threads)
    models = {}

    def model(name):
        if name not in models:
            section = yaml.safe_load((REPO / "jobs" / "specs" / f"{name}.yaml").read_text())["model"]
            torch.manual_seed(0)
            models[name] = build_isrn(ModelConfig(**section)).train()
        return models[name]

    def batch(size):
        rng = np.random.default_rng(size)
        images = torch.from_numpy(rng.integers(0, 256, (size, 3, SIZE, SIZE), dtype=np.uint8))
        targets = []
        for _ in range(size):
            wh = rng.uniform(8, 90, (3, 1)) * np.array([[1.0, 1.25]])
            xy = rng.uniform(0, SIZE - wh)
            targets.append({"boxes": torch.from_numpy(np.concatenate([xy, xy + wh], 1).astype(np.float32))})
        return images, targets

    def dense(candidates):
        # N anchors of a 256² input; scores uniform on [0, c) with c chosen so `candidates` of them
        # exceed 0.05 on average; boxes 8–60 px anywhere in the image.
        counts = [2 * (SIZE >> lvl) ** 2 for lvl in range(2, 8)]
        n = sum(counts)
        g = torch.Generator().manual_seed(candidates)
        scores = torch.rand(4, n, generator=g) * (0.05 / (1 - candidates / n))
        xy = torch.rand(4, n, 2, generator=g) * (SIZE - 8)
        boxes = torch.cat([xy, xy + torch.rand(4, n, 2, generator=g) * 52 + 8], dim=2)
        return scores, boxes, counts

    def step(name, size):
        images, targets = batch(size)
        m = model(name)
        m.zero_grad(set_to_none=True)
        sum(m(images, targets).values()).backward()

    def post(candidates):
        scores, boxes, counts = dense(candidates)
        select_detections(scores, boxes, counts, [(SIZE, SIZE)] * 4, InferenceConfig())

    def run(request):
        kind, arg = request["config"]
        return (lambda: step(kind, arg)) if kind != "post" else (lambda: post(arg))

    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "syncs":
            # NMS reads its boxes in blocks on the CPU, where a read costs nothing; count what a GPU
            # does (all at once) where the checkout has that switch.
            nms_module = sys.modules.get("isrn_model.nms")
            saved = getattr(nms_module, "HOST_READ_ROWS", None)
            if nms_module is not None:
                nms_module.HOST_READ_ROWS = None
            try:
                with host_syncs.count_host_syncs() as count:
                    run(request)()
            finally:
                if nms_module is not None:
                    nms_module.HOST_READ_ROWS = saved
            print(json.dumps({"total": count.total, "by_op": dict(count.by_op)}), flush=True)
        else:
            started = time.process_time()
            run(request)()
            print(json.dumps({"seconds": time.process_time() - started}), flush=True)


# -- the driver ------------------------------------------------------------------------------------
class Worker:
    def __init__(self, root: Path, threads: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--worker", str(root), "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root)

    def ask(self, op: str, config: tuple) -> dict:
        self.process.stdin.write(json.dumps({"op": op, "config": list(config)}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.process.args[3]} exited with {self.process.wait()}")
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="4b5aeef", help="commit to compare against")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="2 rounds, smoke only")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.threads)
    rounds = 2 if args.quick else args.rounds
    configs = ([("smoke", 4)] if args.quick else STEP_CONFIGS) + POST_CONFIGS

    with tempfile.TemporaryDirectory(prefix="isrn-bench-base-") as folder:
        base_root = Path(folder) / "checkout"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base_root), args.base],
                       check=True, capture_output=True)
        workers = {}
        try:
            workers = {"base": Worker(base_root, args.threads), "this": Worker(REPO, args.threads)}
            print(f"base {args.base} against this checkout; torch threads {args.threads}; {rounds} rounds\n")
            print("host syncs (counted by isrn_model/host_syncs.py)   base   this")
            for config in [("smoke", 4), ("smoke", 16), *POST_CONFIGS]:
                counts = {name: w.ask("syncs", config) for name, w in workers.items()}
                label = f"{config[0]} batch {config[1]}" if config[0] != "post" else f"post-processing, ~{config[1]} candidates/image, 4 images"
                print(f"  {label:<48} {counts['base']['total']:>5}  {counts['this']['total']:>5}   "
                      f"this: {counts['this']['by_op']}")

            print("\nCPU seconds (process time) per call, this/base per round")
            for config in configs:
                for w in workers.values():
                    w.ask("time", config)  # warm-up
                seconds = {"base": [], "this": []}
                for r in range(rounds):
                    order = ("base", "this") if r % 2 == 0 else ("this", "base")
                    for name in order:
                        seconds[name].append(workers[name].ask("time", config)["seconds"])
                ratios = [t / b for t, b in zip(seconds["this"], seconds["base"])]
                label = (f"{config[0]} batch {config[1]} fwd+loss+bwd" if config[0] != "post"
                         else f"post-processing ~{config[1]} cand/img")
                med = {k: sorted(v)[len(v) // 2] for k, v in seconds.items()}
                print(f"  {label:<36} base {med['base']:7.3f}  this {med['this']:7.3f}   ratio {summarise(ratios)}")
        finally:
            for w in workers.values():
                w.close()
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base_root)],
                           check=False, capture_output=True)


if __name__ == "__main__":
    main()
