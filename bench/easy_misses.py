"""Where a model loses Easy AP on a generated val set: its large faces, and its confident false boxes.

    .venv/bin/python bench/easy_misses.py                                   # models:/isrn-face@champion, data/demo
    .venv/bin/python bench/easy_misses.py --model models:/m-0123abcd --multi-scale 384
    .venv/bin/python bench/easy_misses.py --model path/to/isrn_model.pt --data data/demo

Runs the model's eager weights (the logged model's ``isrn_model.pt``, or such a file) in this process
on every val image of the generated WIDER-format set at ``--data``, at its own size, and prints:

* the official AP per setting (the same metric as training's evaluation, on the same images);
* every box scored at least ``--score`` sorted into: a face found (IoU >= 0.5 with a face; Easy ones
  apart), ``nested`` (at least 80 % of it inside a face, e.g. an inner-face box in a found head),
  ``loose`` (IoU 0.2-0.5 with a face), ``background`` (the rest: shirts, bodies, the photograph);
  with how many score above 0.5 and 0.7;
* the Easy faces (>= 50 px tall) by height: how many have a box at IoU >= 0.5 scored at least
  ``--score``, and the median best IoU of any box with them (how well the large ones are placed).

Easy holds far fewer faces than Hard (138 against 1,064 on the demo's val set), so the same false
boxes cost Easy the most precision: these counts say whether Easy is lost to missed faces or to
false boxes. ``--multi-scale SIDE`` adds ISRN's multi-scale test (``inference.multi_scale``, a x0.5
run among others) with a pixel budget of SIDE², to see how much finding the large faces at half size
gives back. A report on one model, not a test. Needs the MLflow server that holds the model for a
``models:/`` URI (``isrn platform up``).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import cv2
import numpy as np
import torch

from data_shards.synth import val_ground_truth
from data_shards.wider_layout import EASY_MIN_HEIGHT, WiderLayout, face_settings
from isrn_model.boxes import box_iou
from isrn_model.export import load_model
from isrn_model.tta import with_tta
from isrn_model.wider_eval import evaluate
from jobs.commands.detect import DEFAULT_MODEL
from jobs.serving.pyfunc import EAGER_FILE

HEIGHT_BINS = ((50, 60), (60, 100), (100, 150), (150, 10_000))
CATEGORIES = ("found-easy", "found", "nested", "loose", "background")


def eager_weights(model: str) -> Path:
    """The eager ISRN file of a logged model (``models:/…``, ``runs:/…``) or the file itself."""
    if Path(model).is_file():
        return Path(model)
    import mlflow

    from jobs.environment import JobEnvironment

    # MLFLOW_TRACKING_URI, else the local platform's server, as `isrn detect` (never a stray ./mlflow.db,
    # MLflow's own default, where no model is registered).
    mlflow.set_tracking_uri(JobEnvironment.resolve().tracking_uri)
    # The whole model, not "<uri>/artifacts/<file>": MLflow reads models:/m-<id>/<path> as a registered
    # model named m-<id> ("Registered Model with name=m-… not found"); a few MB.
    return Path(mlflow.artifacts.download_artifacts(model)) / "artifacts" / EAGER_FILE


def categorise(boxes: np.ndarray, faces: np.ndarray, easy: np.ndarray, iou: np.ndarray) -> list[str]:
    """The category of each box (xyxy) against the image's faces (xyxy), which of them are Easy and
    the IoU of every box with every face ([boxes, faces])."""
    if not len(faces):
        return ["background"] * len(boxes)
    ix1, iy1 = np.maximum(boxes[:, None, 0], faces[None, :, 0]), np.maximum(boxes[:, None, 1], faces[None, :, 1])
    ix2, iy2 = np.minimum(boxes[:, None, 2], faces[None, :, 2]), np.minimum(boxes[:, None, 3], faces[None, :, 3])
    inside = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    inside /= np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-9)[:, None]
    out = []
    for i in range(len(boxes)):
        j = int(iou[i].argmax())
        if iou[i, j] >= 0.5:
            out.append("found-easy" if easy[j] else "found")
        elif (inside[i] >= 0.8).any():
            out.append("nested")
        elif iou[i].max() > 0.2:
            out.append("loose")
        else:
            out.append("background")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="MLflow model URI or an isrn_model.pt file")
    parser.add_argument("--data", type=Path, default=Path("data/demo"), help="a generated WIDER-format set")
    parser.add_argument("--score", type=float, default=0.3, help="lowest score of a box counted")
    parser.add_argument("--multi-scale", type=int, metavar="SIDE", help="multi-scale test, pixel budget SIDE²")
    args = parser.parse_args()

    model = load_model(eager_weights(args.model)).eval()
    cfg = model.inference_config
    if args.multi_scale:
        cfg = dataclasses.replace(cfg, multi_scale=True, max_test_size=args.multi_scale)
    detector = with_tta(model, cfg)
    layout = WiderLayout(args.data)
    records = sorted(layout.records("val"), key=lambda r: r.path)

    predictions, scores_by_category = {}, {c: [] for c in CATEGORIES}
    easy_rows = []  # (face height, best score of a box at IoU >= 0.5, best IoU of any box)
    for record in records:
        image = cv2.imread(str(layout.image_path("val", record)), cv2.IMREAD_COLOR_RGB)
        with torch.no_grad():
            found = detector(torch.from_numpy(image).permute(2, 0, 1)[None].float())[0]
        boxes, scores = found["boxes"].numpy().astype(np.float64), found["scores"].numpy()
        event, name = record.path.split("/")[0], Path(record.path).stem
        predictions[(event, name)] = np.c_[boxes[:, :2], boxes[:, 2:] - boxes[:, :2], scores]
        faces = np.array([[f.x, f.y, f.x + f.w, f.y + f.h] for f in record.faces], dtype=np.float64).reshape(-1, 4)
        easy = np.array(["easy" in face_settings(f) for f in record.faces], dtype=bool)
        iou = box_iou(torch.from_numpy(boxes), torch.from_numpy(faces)).numpy()  # [boxes, faces]
        shown = scores >= args.score
        for category, score in zip(categorise(boxes[shown], faces, easy, iou[shown]), scores[shown]):
            scores_by_category[category].append(score)
        for k in np.flatnonzero(easy):
            hits = scores[iou[:, k] >= 0.5]
            easy_rows.append((faces[k, 3] - faces[k, 1], hits.max(initial=0.0), iou[:, k].max(initial=0.0)))

    result = evaluate(predictions, val_ground_truth(records))
    test = f"multi-scale test, budget {args.multi_scale}²" if args.multi_scale else "single-scale test"
    print(f"model {args.model} on {args.data} val ({len(records)} images, {test})")
    print("AP " + " / ".join(f"{k} {v:.3f}" for k, v in result.ap.items())
          + "  (faces " + " / ".join(f"{k} {v}" for k, v in result.num_faces.items()) + ")")
    print(f"\nboxes scored >= {args.score}:")
    print(f"{'category':12s} {'boxes':>6s} {'> 0.5':>6s} {'> 0.7':>6s}")
    for category, values in scores_by_category.items():
        v = np.asarray(values)
        print(f"{category:12s} {len(v):6d} {(v > 0.5).sum():6d} {(v > 0.7).sum():6d}")
    rows = np.asarray(easy_rows).reshape(-1, 3)
    print(f"\nEasy faces (>= {EASY_MIN_HEIGHT} px) found at IoU >= 0.5 and score >= {args.score}:")
    print(f"{'height px':12s} {'faces':>6s} {'found':>6s} {'median best IoU':>16s}")
    for low, high in HEIGHT_BINS:
        sel = rows[(rows[:, 0] >= low) & (rows[:, 0] < high)]
        label = f"{low}-{high}" if high < 10_000 else f">= {low}"
        median = f"{np.median(sel[:, 2]):.2f}" if len(sel) else "-"
        print(f"{label:12s} {len(sel):6d} {(sel[:, 1] >= args.score).sum():6d} {median:>16s}")


if __name__ == "__main__":
    main()
