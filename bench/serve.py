"""The served detector (`mlflow models serve`) against the same pyfunc called in this process.

    .venv/bin/python bench/serve.py                        # a demo-spec model logged to a temporary store
    .venv/bin/python bench/serve.py --quick                # 2 short repetitions: proves it runs
    .venv/bin/python bench/serve.py --model models:/isrn-face@champion   # a model on MLFLOW_TRACKING_URI

Without `--model`, the spec's detector (fresh weights: the network's cost, not its skill) is logged as
training logs it (`jobs.serving.pyfunc.log_face_detector`) into a SQLite store in a temporary folder.
The model is then served by `mlflow models serve --env-manager local` on a free port, and loaded in
this process with `mlflow.pyfunc.load_model`. Generated WIDER-like photos, JPEG q90, 640 px wide, go
in batches of 1 and 8, with `max_size` 640 (the model sees them at their size):

    in-process  `model.predict(DataFrame of JPEG bytes, params)`
    served      `POST /invocations` of `{"dataframe_split": …}` with the same photos as base64, the
                JSON body built before the clock starts (the client's encoding is the client's cost)

Each repetition times every batch size both ways in turn (interleaved, so load on the shared machine
hits both alike). Printed: latency p50 / p95 per request and images/s (batch / mean latency) of each,
and the server's overhead as the ratio served / in-process of each repetition's median, as median,
min and max over repetitions.
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from harness import free_ports, summarise
from jobs.serving.server import scoring_server

BATCH_SIZES = (1, 8)


def photos(count: int, width: int = 640) -> list[bytes]:
    import cv2

    from data_shards.synth import SynthConfig, generate_image

    config = SynthConfig(image_width=width, empty_prob=0)
    return [cv2.imencode(".jpg", generate_image("val", i, 11, config)[0], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
            for i in range(count)]


def log_spec_model(spec_name: str, store: Path) -> str:
    """Log the spec's detector (fresh weights) into a SQLite store at `store`; returns its model URI."""
    import mlflow

    from isrn_model.builder import build_isrn
    from jobs.serving.pyfunc import log_face_detector
    from jobs.spec import load_spec
    from jobs.train.model_logging import model_requirements

    spec = load_spec(spec_name)
    model = build_isrn(spec.model, loss=spec.loss, inference=spec.inference).eval()
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    # Artifacts in the temporary folder too (MLflow's default is ./mlruns).
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("bench-serve", artifact_location=str(store / "artifacts")))
    with mlflow.start_run():
        info = log_face_detector(model, name="model", max_size=spec.loader.val_max_size,
                                 score_threshold=spec.inference.score_threshold,
                                 pip_requirements=model_requirements(), metadata={}, params={})
    return info.model_uri


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a model URI on MLFLOW_TRACKING_URI (default: log the spec's detector)")
    parser.add_argument("--spec", default="demo", help="spec whose detector is logged without --model")
    parser.add_argument("--max-size", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions")
    parser.add_argument("--requests", type=int, default=8, help="requests per batch size and way, per repetition")
    parser.add_argument("--quick", action="store_true", help="2 repetitions of 2 requests")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.requests = 2, 2

    import mlflow
    import pandas as pd
    import requests
    import torch

    with tempfile.TemporaryDirectory(prefix="isrn-bench-serve-") as directory:
        folder = Path(directory)
        if args.model:
            model_uri, what = args.model, args.model
        else:
            started = time.monotonic()
            # Logged by a child process: this one then runs the model as a client's process would,
            # without the export's compilation and memory behind it (with them the in-process side
            # was several times slower, and its batch 1 slower than its batch 8).
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                model_uri = pool.apply(log_spec_model, (args.spec, folder))
            what = f"spec {args.spec}, fresh weights (logged in {time.monotonic() - started:.0f} s)"
            mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
            os.environ["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
        (port,) = free_ports(1)
        started = time.monotonic()
        with scoring_server(model_uri, port, folder / "server.log") as server_url:
            startup_s = time.monotonic() - started
            model = mlflow.pyfunc.load_model(model_uri)
            images = photos(max(BATCH_SIZES))
            params = {"max_size": args.max_size}
            frames = {b: pd.DataFrame({"image": images[:b]}) for b in BATCH_SIZES}
            bodies = {b: json.dumps({"dataframe_split": {"columns": ["image"],
                                                         "data": [[base64.b64encode(i).decode()] for i in images[:b]]},
                                     "params": params}) for b in BATCH_SIZES}
            session = requests.Session()

            def in_process(b: int) -> None:
                model.predict(frames[b], params=params)

            def served(b: int) -> None:
                answer = session.post(f"{server_url}/invocations", data=bodies[b],
                                      headers={"Content-Type": "application/json"}, timeout=600)
                answer.raise_for_status()

            for b in BATCH_SIZES:  # warm-up: first calls allocate and load kernels
                in_process(b), served(b)
            times = {(way, b): [] for way in ("in-process", "served") for b in BATCH_SIZES}
            ratios = {b: [] for b in BATCH_SIZES}
            for _ in range(args.repeats):
                for b in BATCH_SIZES:
                    medians = {}
                    for way, call in (("in-process", in_process), ("served", served)):
                        run = []
                        for _ in range(args.requests):
                            start = time.perf_counter()
                            call(b)
                            run.append(time.perf_counter() - start)
                        times[way, b] += run
                        medians[way] = statistics.median(run)
                    ratios[b].append(medians["served"] / medians["in-process"])

    print(f"model: {what}; server up in {startup_s:.0f} s; {torch.get_num_threads()} torch threads; "
          f"640-px JPEGs (q90) at max_size {args.max_size}; {args.repeats} repetitions x {args.requests} requests")
    print(f"{'batch':>5} {'in-process p50 / p95 ms':>24} {'img/s':>7} {'served p50 / p95 ms':>21} {'img/s':>7}")
    for b in BATCH_SIZES:
        row = [f"{b:5d}"]
        for way in ("in-process", "served"):
            t = times[way, b]
            row.append(f"{1000 * percentile(t, 50):10.0f} / {1000 * percentile(t, 95):6.0f}      "
                       f"{b / statistics.mean(t):7.2f}")
        print("  ".join(row))
    for b in BATCH_SIZES:
        print(f"served / in-process latency, batch {b}: {summarise(ratios[b])}")


if __name__ == "__main__":
    main()
