"""Build throughput of the COCO converter against the WIDER path, on the same images, one core.

    .venv/bin/python bench/coco_build.py                     # 300 generated 640-px images, 5 repetitions
    .venv/bin/python bench/coco_build.py --images 60 --repeats 2     # proves it runs

A generated set (`isrn data synth`'s generator, 640 px wide like COCO's images) is written once, with
its COCO-WholeBody annotation file over the same image files (`data_shards.synth_coco`). Then
`--repeats` interleaved repetitions, each building the train split into a fresh local folder, in turn
(the order rotates from one repetition to the next):

    wider   `build_split` from the WIDER layout (`isrn shards build --wider-root`)
    face    `build_coco_split(boxes="face")` from the COCO JSON (`isrn shards build --coco --boxes face`)
    person  the same with `boxes="person"`

The COCO builds keep the images that have a box; the WIDER build also shards the few generated
images without a face, so rates are images per second of each build's own images. Each build is timed by
wall clock and by this process's CPU time (CPU time is little affected by other load on the
machine); the process is pinned to one core and OpenCV to one thread. Printed: images/s per build,
and per repetition the ratios face / wider and person / wider as median, min and max. Then the
extrapolation inputs: mean JPEG size, and the annotation file's parse rate (read_coco, per
annotation and per MB) on a file shaped like COCO-WholeBody's (its keypoint lists included). Local
folder only: the upload to S3 is the same for both paths and is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2

from harness import summarise
from data_shards.coco import read_coco
from data_shards.coco_shards import build_coco_split
from data_shards.manifest import Manifest
from data_shards.shard_writer import build_split
from data_shards.synth import SynthConfig, generate_dataset
from data_shards.synth_coco import write_coco_split


def pin_one_core() -> int:
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    cv2.setNumThreads(1)
    return core


def timed(build: Callable[[str], Manifest]) -> tuple[float, float, int]:
    """(wall s, CPU s, images) of one build into a fresh folder."""
    with tempfile.TemporaryDirectory(prefix="isrn-bench-coco-") as out:
        wall, cpu = time.perf_counter(), time.process_time()
        manifest = build(out)
        return time.perf_counter() - wall, time.process_time() - cpu, manifest.samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--parse-annotations", type=int, default=50_000,
                        help="annotations of the WholeBody-shaped file whose parse is timed")
    args = parser.parse_args()
    core = pin_one_core()

    with tempfile.TemporaryDirectory(prefix="isrn-bench-coco-data-") as tmp:
        root = Path(tmp)
        records = generate_dataset(root, train=args.images, val=1, seed=3, config=SynthConfig(image_width=args.width))
        coco_json = write_coco_split(root, "train", records["train"])
        images_dir = root / "WIDER_train" / "images"
        builds: dict[str, Callable[[str], Manifest]] = {
            "wider": lambda out: build_split(root, "train", out, shard_size_mb=64, progress=False),
            "face": lambda out: build_coco_split(coco_json, images_dir, "train", out, boxes="face", progress=False),
            "person": lambda out: build_coco_split(coco_json, images_dir, "train", out, boxes="person", progress=False),
        }
        jpeg_kb = statistics.mean(p.stat().st_size for p in images_dir.rglob("*.jpg")) / 1024
        print(f"{args.images} generated images, {args.width} px wide, mean JPEG {jpeg_kb:.0f} kB; core {core}, "
              f"1 OpenCV thread; {args.repeats} interleaved repetitions")

        timed(builds["wider"])  # warm-up: imports, the page cache
        rates: dict[str, list[tuple[float, float]]] = {name: [] for name in builds}
        names = list(builds)
        for repeat in range(args.repeats):
            for name in names[repeat % 3:] + names[: repeat % 3]:  # each build first, second and last in turn
                wall, cpu, images = timed(builds[name])
                rates[name].append((images / wall, images / cpu))

        print(f"{'build':8s} {'images/s (wall)':>16s} {'images/s (CPU)':>16s}   median over repetitions")
        for name, values in rates.items():
            print(f"{name:8s} {statistics.median(v[0] for v in values):16.1f} "
                  f"{statistics.median(v[1] for v in values):16.1f}")
        for name in ("face", "person"):
            for kind, index in (("wall", 0), ("CPU", 1)):
                ratios = [c[index] / w[index] for c, w in zip(rates[name], rates["wider"], strict=True)]
                print(f"{name} / wider ({kind}): {summarise(ratios)}")

        large = wholebody_shaped(coco_json, root / "large.json", args.parse_annotations)
        start = time.process_time()
        split = read_coco(large, boxes="face")
        parse = time.process_time() - start
        annotations = split.counts["boxes"] + split.counts.get("no_face_box", 0)
        size_mb = large.stat().st_size / 1e6
        print(f"read_coco of a WholeBody-shaped file (keypoint lists as in coco_wholebody_*.json): {annotations} "
              f"annotations, {size_mb:.0f} MB in {parse:.2f} s CPU: {annotations / parse:.0f} annotations/s, "
              f"{size_mb / parse:.1f} MB/s")


def wholebody_shaped(source: Path, path: Path, annotations: int) -> Path:
    """`source` repeated (new ids) to `annotations` annotations, each with COCO-WholeBody's keypoint
    lists (17 body, 6 foot, 68 face, 2 × 21 hand points, 3 numbers each), so its parse rate per MB and
    per annotation is a real file's."""
    data = json.loads(source.read_text())
    images, anns, copy = [], [], 0
    while len(anns) < annotations:
        offset = copy * len(data["images"])
        for image in data["images"]:
            name = image["file_name"].replace("/", f"/{copy}_", 1)  # keys stay distinct
            images.append({**image, "id": image["id"] + offset, "file_name": name})
        for ann in data["annotations"]:
            anns.append({**ann, "id": len(anns) + 1, "image_id": ann["image_id"] + offset,
                         "keypoints": [0.0] * 51, "foot_kpts": [0.0] * 18, "face_kpts": [0.0] * 204,
                         "lefthand_kpts": [0.0] * 63, "righthand_kpts": [0.0] * 63,
                         "lefthand_box": [0.0] * 4, "righthand_box": [0.0] * 4})
        copy += 1
    path.write_text(json.dumps({**data, "images": images, "annotations": anns[:annotations]}))
    return path


if __name__ == "__main__":
    main()
