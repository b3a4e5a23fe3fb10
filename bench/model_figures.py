"""Figures of the ISRN detector: parameters, GFLOPs and CPU inference latency.

    .venv/bin/python bench/model_figures.py [--repeats 3] [--threads 2]

* Parameters and GFLOPs of ISRN with ResNet-18 and ResNet-50 (root stem, GN, 256 channels) at
  1024×1024 and 640×640. FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on meta
  tensors (nothing is computed) over the network — backbone, neck, both steps' heads; the
  post-processing (decode, NMS) is not counted. One multiply-add counts as 2 FLOPs.
* CPU inference latency of ISRN ResNet-18 at 640×480 (padded to 640×512 inside), root vs standard
  stem side by side: median of ``--repeats`` timed runs of ``model.eval()(images)`` after one warm-up,
  post-processing included, batch 1, ``--threads`` torch threads.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from isrn_model.builder import build_isrn
from isrn_model.config import ModelConfig


def count(cfg: ModelConfig, size: int) -> tuple[float, float]:
    """(parameters in millions, GFLOPs) of the network at a ``size``×``size`` input."""
    model = build_isrn(cfg).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    model = model.to("meta")
    x = torch.zeros(1, 3, size, size, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.two_step_outputs(model.preprocess(x))
    return params, counter.get_total_flops() / 1e9


def latency(cfg: ModelConfig, height: int, width: int, repeats: int) -> float:
    """Median seconds of one eval forward (with post-processing) on a random raw-RGB image."""
    torch.manual_seed(0)
    model = build_isrn(cfg).eval()
    images = torch.rand(1, 3, height, width) * 255
    times = []
    with torch.no_grad():
        model(images)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model(images)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print("| model | params (M) | GFLOPs @1024² | GFLOPs @640² |")
    print("| --- | --- | --- | --- |")
    for depth in (18, 50):
        cfg = ModelConfig(depth=depth)
        params, g1024 = count(cfg, 1024)
        _, g640 = count(cfg, 640)
        print(f"| ISRN ResNet-{depth} (root stem, GN) | {params:.2f} | {g1024:.1f} | {g640:.1f} |")

    print()
    print(f"CPU latency, ISRN ResNet-18 at 640×480, batch 1, {args.threads} threads, median of {args.repeats}:")
    print("| stem | GFLOPs @640×480 | latency (s) |")
    print("| --- | --- | --- |")
    for stem in ("root", "standard"):
        cfg = ModelConfig(depth=18, stem=stem)
        model = build_isrn(cfg).eval().to("meta")
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model.two_step_outputs(model.preprocess(torch.zeros(1, 3, 480, 640, device="meta")))
        seconds = latency(cfg, 480, 640, args.repeats)
        print(f"| {stem} | {counter.get_total_flops() / 1e9:.1f} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
