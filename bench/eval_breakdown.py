"""What the AP breakdown by face attribute and size adds to a WIDER FACE evaluation.

    .venv/bin/python bench/eval_breakdown.py --ground-truth GT_DIR             # the full val set, 750 boxes per image
    .venv/bin/python bench/eval_breakdown.py --ground-truth GT_DIR --quick     # 300 images, 2 repetitions

GT_DIR holds the official wider_face_val.mat and wider_{easy,medium,hard}_val.mat. Predictions are
generated from the ground truth, about what a detector hands the metric: every face's box moved by
~8% of its width and scored from Beta(5, 2), then boxes at random places (6 to 300 px wide) scored
from Beta(2, 5) up to `--detections` per image (750: ISRN's keep_top_k); an image with more faces
keeps its best-scoring `--detections`. Then `--repeats` repetitions, each timing (in alternating
order):
    evaluate    the official AP (`evaluate`): sort, normalise, match, three PR curves
    breakdown   `evaluate_breakdown`: the same, plus every (setting, subset) curve, 3 x 19
and, for where the time goes, from one matching (`match_detections`): the three official curves
(`result_of`) and the breakdown's 3 x 19 (`breakdown_of`), whose difference is all the breakdown
adds, measured without the noise of timing two whole evaluations on a shared machine; then the
gallery's selection of misses and false positives over every image (`gallery_cases`, which matches
again). Ratios to `evaluate` of the same repetition are printed as median, min and max.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from harness import summarise
from isrn_model.wider_eval import (WiderGroundTruth, breakdown_of, evaluate, evaluate_breakdown, load_ground_truth,
                                   match_detections)
from isrn_model.wider_eval.evaluate import result_of
from isrn_model.wider_eval.gallery import gallery_cases


def generated_detections(ground_truth: WiderGroundTruth, per_image: int, seed: int = 0) -> dict:
    """(event, name) -> float64 [<= per_image, 5] of (x, y, w, h, score), as described in the module docstring."""
    rng = np.random.default_rng(seed)
    detections = {}
    for image in ground_truth:
        boxes = image.boxes.astype(np.float64)
        moved = boxes + rng.normal(0.0, 0.08, boxes.shape) * np.maximum(boxes[:, 2:3], 1)
        extent = max(1024.0, float((boxes[:, :2] + boxes[:, 2:]).max())) if len(boxes) else 1024.0
        count = max(0, per_image - len(boxes))
        size = np.exp(rng.uniform(np.log(6), np.log(300), (count, 1))) * np.array([[1.0, 1.25]])
        noise = np.concatenate([rng.uniform(0, extent, (count, 2)), size], axis=1)
        scores = np.concatenate([rng.beta(5, 2, len(boxes)), rng.beta(2, 5, count)])
        rows = np.concatenate([np.concatenate([moved, noise]), scores[:, None]], axis=1)
        detections[image.key] = rows[np.argsort(-rows[:, 4], kind="stable")[:per_image]]
    return detections


def timed(function) -> tuple[float, object]:
    start = time.perf_counter()
    value = function()
    return time.perf_counter() - start, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ground-truth", type=Path, required=True, help="Folder of the official val .mat files.")
    parser.add_argument("--detections", type=int, default=750, help="Boxes per image (ISRN keeps 750).")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="300 images, 2 repetitions: proves it runs.")
    args = parser.parse_args()

    ground_truth = load_ground_truth(args.ground_truth)
    repeats = args.repeats
    if args.quick:
        ground_truth = WiderGroundTruth(images=ground_truth.images[:300], settings=ground_truth.settings)
        repeats = 2
    detections = generated_detections(ground_truth, args.detections)
    total = sum(len(rows) for rows in detections.values())
    print(f"{len(ground_truth)} images, {ground_truth.num_faces} faces, {total} detections "
          f"({total / len(ground_truth):.0f} per image)")

    ratios: dict[str, list[float]] = {"breakdown": [], "match": [], "official curves": [], "curves": [], "added": [],
                                      "gallery": []}
    seconds: dict[str, list[float]] = {"evaluate": [], **{name: [] for name in ratios}}
    for repeat in range(repeats):
        if repeat % 2 == 0:  # alternate which runs first, so neither always finds the caches warm
            t_eval, official = timed(lambda: evaluate(detections, ground_truth))
            t_breakdown, breakdown = timed(lambda: evaluate_breakdown(detections, ground_truth))
        else:
            t_breakdown, breakdown = timed(lambda: evaluate_breakdown(detections, ground_truth))
            t_eval, official = timed(lambda: evaluate(detections, ground_truth))
        t_match, matching = timed(lambda: match_detections(detections, ground_truth))
        t_official, _ = timed(lambda: result_of(matching, ground_truth))
        t_curves, _ = timed(lambda: breakdown_of(matching, ground_truth))
        t_gallery, _ = timed(lambda: gallery_cases(ground_truth, detections))
        assert breakdown.result.ap == official.ap  # the same numbers, bit for bit
        for name, value in (("evaluate", t_eval), ("breakdown", t_breakdown), ("match", t_match),
                            ("official curves", t_official), ("curves", t_curves), ("added", t_curves - t_official),
                            ("gallery", t_gallery)):
            seconds[name].append(value)
            if name != "evaluate":
                ratios[name].append(value / t_eval)
        print(f"repetition {repeat + 1}: evaluate {t_eval:.2f} s, breakdown {t_breakdown:.2f} s, "
              f"match {t_match:.2f} s, official curves {t_official:.3f} s, breakdown curves {t_curves:.3f} s, "
              f"gallery {t_gallery:.2f} s")

    print(f"\nofficial AP {official.ap}")
    print("median seconds: " + ", ".join(f"{name} {statistics.median(v):.3f}" for name, v in seconds.items()))
    print(f"breakdown / evaluate (whole calls):           {summarise(ratios['breakdown'])}")
    print(f"matching alone / evaluate:                    {summarise(ratios['match'])}")
    print(f"official curves from a matching / evaluate:   {summarise(ratios['official curves'])}")
    print(f"breakdown curves from a matching / evaluate:  {summarise(ratios['curves'])}")
    added = ratios["added"]
    print(f"what the breakdown adds (breakdown curves - official curves) / evaluate: median "
          f"{statistics.median(added):.1%} (min {min(added):.1%}, max {max(added):.1%} over {len(added)})")
    print(f"gallery selection, every image / evaluate:    {summarise(ratios['gallery'])}")


if __name__ == "__main__":
    main()
