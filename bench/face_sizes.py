"""The face sizes training crops show the detector, against the val faces' sizes and the anchors.

    .venv/bin/python bench/face_sizes.py [--spec demo] [--draws 8] [--set data_anchor_sampling_prob=0 ...]

For a spec with a generated data set (``data.synth``), every train image's faces are drawn through
the training augmentation (``data_shards.augment``) ``--draws`` times per setting; the faces a crop
keeps are measured in output pixels as sqrt(w · h), the size data-anchor-sampling and the anchors
use. The val faces are measured after the val loader's resize (long side at most
``loader.val_max_size``), per evaluation setting (Easy, Medium, Hard). Sizes are binned around the
detector's 12 anchor sizes (8 … 362 px; bin edges at the geometric midpoints, so a face falls in
the bin of the anchor nearest to it in ratio, as data-anchor-sampling assigns it).

Settings: the spec's own ``loader.augment`` ("spec"), then the spec's with the switches the demo's
choice rests on set as each row names (ISRN's recipe, each of its two face-shrinking steps alone,
neither, ...); ``--set FIELD=VALUE`` (repeatable, fields of ``loader.augment``) adds one more
setting with all of its overrides. Printed per setting: the share of training faces per anchor
bin next to the val shares, and summaries: the median training face, the share of training faces at
least as large as the val Easy set's median face, and "coverage" — for each val Easy face, how many
training faces (per train image and draw) fall in its anchor bin, averaged over the val Easy faces;
"large cut" — of the kept faces at least 100 px tall in the image, the share the crop cut to under
90 % of their area (their boxes are clipped to the crop: a box on part of a face, which no val face is).

Nothing is trained and no service is needed; a few seconds per setting.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace

import numpy as np

from data_shards.augment import own_anchor_index, sample_train_transform, val_resize, visible_share
from data_shards.config import MODEL_ANCHOR_SIZES, AugmentConfig
from data_shards.synth import face_settings, generate_image
from jobs.spec import load_spec

SETTINGS = ("easy", "medium", "hard")

_RECIPE = {"data_anchor_sampling_prob": 0.5, "zoom_out_prob": 1.0}
_NEITHER = {"data_anchor_sampling_prob": 0.0, "zoom_out_prob": 0.0}
LARGE_FACE = 100
"""Source height (px) from which a face counts as large in the "large cut" column."""
COMPARED = (
    ("recipe: DAS 0.5, zoom-out always", _RECIPE),
    ("zoom-out only", {**_RECIPE, "data_anchor_sampling_prob": 0.0}),
    ("DAS only", {**_RECIPE, "zoom_out_prob": 0.0}),
    ("neither", _NEITHER),
    ("recipe, DAS allow larger, jitter 2", {**_RECIPE, "das_allow_larger": True, "das_size_jitter": 2.0}),
    ("DAS 0.5, zoom-out 0.3 up to 2x", {**_RECIPE, "zoom_out_prob": 0.3, "zoom_out_max": 2.0}),
    ("neither, out 384", {**_NEITHER, "out_size": 384}),
    ("neither, crops keep faces whole", {**_NEITHER, "crop_min_visible": 0.9}),
)
"""The settings compared besides the spec's own: the spec's with these fields set (the recipe is
docs/model.md's; the spec's other fields, such as its crop, stay)."""


def face_size(boxes: np.ndarray) -> np.ndarray:
    """boxes float[N, 4] xyxy → sqrt(w · h) float[N]."""
    return np.sqrt(np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))


def anchor_bins(sizes: np.ndarray, anchor_sizes: tuple[float, ...] = MODEL_ANCHOR_SIZES) -> np.ndarray:
    """Index of the anchor size nearest in ratio to each size (int[N])."""
    return np.array([own_anchor_index(float(s), anchor_sizes) for s in sizes], dtype=np.int64)


def train_faces(images: list[tuple[tuple[int, int], np.ndarray]], config: AugmentConfig, draws: int,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The faces kept by `draws` training transforms of every image: their sizes (output pixels), and
    for those at least LARGE_FACE source pixels tall, whether the crop cut them (under 90 % of the
    area inside)."""
    rng = np.random.default_rng(seed)
    sizes, large_cut = [], []
    for _ in range(draws):
        for hw, boxes in images:
            transform = sample_train_transform(rng, hw, boxes, config)
            kept, keep = transform.apply_boxes(boxes)
            sizes.append(face_size(kept))
            large = keep & (boxes[:, 3] - boxes[:, 1] >= LARGE_FACE)
            share = visible_share(boxes[large], (transform.x0, transform.y0, transform.side))
            large_cut.append(share < 0.9)
    return (np.concatenate(sizes) if sizes else np.zeros(0),
            np.concatenate(large_cut) if large_cut else np.zeros(0, bool))


def load_split(spec_name: str, split: str, overrides: list[str] = ()) -> list[tuple[tuple[int, int], np.ndarray, list]]:
    """(image size (h, w), xyxy boxes of usable faces, faces) of every image of the spec's generated split."""
    spec = load_spec(spec_name, list(overrides))
    synth = spec.data.synth
    if synth is None:
        raise SystemExit(f"spec {spec_name}: no data.synth section; this bench needs a generated data set")
    count = synth.train_images if split == "train" else synth.val_images
    out = []
    for index in range(count):
        image, faces = generate_image(split, index, synth.seed, synth.generator)
        faces = [f for f in faces if not f.is_degenerate]
        boxes = np.array([[f.x, f.y, f.x + f.w, f.y + f.h] for f in faces], dtype=np.float64).reshape(-1, 4)
        out.append((image.shape[:2], boxes, faces))
    return out


def parse_overrides(pairs: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        out[key] = True if value == "true" else False if value == "false" else float(value) if "." in value else int(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default="demo")
    parser.add_argument("--draws", type=int, default=8, help="augmentation draws per train image and setting")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="FIELD=VALUE of loader.augment for one extra setting (repeatable)")
    parser.add_argument("--spec-set", action="append", default=[], help="a spec override (e.g. data.synth.seed=2)")
    args = parser.parse_args()

    spec = load_spec(args.spec, args.spec_set)
    base = spec.loader.augment
    train = [(hw, boxes) for hw, boxes, _ in load_split(args.spec, "train", args.spec_set)]
    val_sizes: dict[str, list[float]] = {s: [] for s in SETTINGS}
    for hw, boxes, faces in load_split(args.spec, "val", args.spec_set):
        _, scale = val_resize(np.zeros((*hw, 1), np.uint8), spec.loader.val_max_size)
        sizes = face_size(boxes) * scale
        for size, face in zip(sizes, faces):
            for setting in face_settings(face):
                val_sizes[setting].append(float(size))
    val = {s: np.array(v) for s, v in val_sizes.items()}

    settings = [("spec", base)] + [(name, replace(base, **changes)) for name, changes in COMPARED]
    if args.overrides:
        settings.append(("--set " + " ".join(args.overrides), replace(base, **parse_overrides(args.overrides))))
    drawn = {name: train_faces(train, cfg, args.draws) for name, cfg in settings}
    trained = {name: sizes for name, (sizes, _) in drawn.items()}

    anchors = MODEL_ANCHOR_SIZES
    n_bins = len(anchors)
    print(f"spec {args.spec}: {len(train)} train images × {args.draws} draws; val faces at val_max_size "
          f"{spec.loader.val_max_size}: easy {len(val['easy'])}, medium {len(val['medium'])}, hard {len(val['hard'])}")
    print("spec's augment: " + ", ".join(f"{k}={getattr(base, k)}" for k in (
        "out_size", "data_anchor_sampling_prob", "zoom_out_prob", "zoom_out_max", "crop_full_side_prob",
        "crop_scale_min", "das_allow_larger", "das_size_jitter")))
    print()
    print("share of faces per anchor bin (%); train columns: faces kept by the training crops")
    header = ["anchor px", "val easy", "val med", "val hard"] + [f"T{i}" for i in range(len(settings))]
    print(" | ".join(f"{h:>9}" for h in header))
    val_bins = {s: np.bincount(anchor_bins(v), minlength=n_bins) for s, v in val.items()}
    train_bins = {n: np.bincount(anchor_bins(v), minlength=n_bins) for n, v in trained.items()}
    for b in range(n_bins):
        cells = [f"{anchors[b]:9.1f}"]
        cells += [f"{100 * val_bins[s][b] / max(1, len(val[s])):9.1f}" for s in SETTINGS]
        cells += [f"{100 * train_bins[n][b] / max(1, len(trained[n])):9.1f}" for n, _ in settings]
        print(" | ".join(cells))
    print()
    easy_median = float(np.median(val["easy"])) if len(val["easy"]) else math.nan
    print(f"val easy faces: median {easy_median:.0f} px, 10–90 % {np.percentile(val['easy'], 10):.0f}–"
          f"{np.percentile(val['easy'], 90):.0f} px; val hard median {np.median(val['hard']):.0f} px")
    print()
    print(f"{'':4}{'setting':34} {'faces/img':>9} {'median px':>9} {'>= easy med %':>13} {'>= 90 px %':>10} "
          f"{'easy coverage':>13} {'large cut %':>11}")
    easy_bins = anchor_bins(val["easy"])
    for i, (name, _) in enumerate(settings):
        sizes = trained[name]
        per_draw = len(train) * args.draws
        coverage = float(np.mean(train_bins[name][easy_bins] / per_draw)) if len(easy_bins) else math.nan
        print(f"T{i:<3}{name:34} {len(sizes) / per_draw:9.2f} {np.median(sizes):9.0f} "
              f"{100 * np.mean(sizes >= easy_median):13.1f} {100 * np.mean(sizes >= 90):10.1f} {coverage:13.3f} "
              f"{100 * np.mean(drawn[name][1]):11.1f}")


if __name__ == "__main__":
    main()
