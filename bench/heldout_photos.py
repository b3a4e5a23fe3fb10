"""How many faces a model finds in real photographs it never trained on: a report, not a test.

    .venv/bin/python bench/heldout_photos.py                                  # models:/isrn-face@champion
    .venv/bin/python bench/heldout_photos.py --model models:/m-0123abcd --out /tmp/heldout

The photographs are the few with people that installed packages ship (scikit-image's astronaut and
camera, matplotlib's grace_hopper), plus a montage of the three side by side, so the same faces
also appear small and several to a picture. Their faces were boxed by hand
(``bench/heldout_photos.json`` says how). The generator never uses these photographs; keep it so:
they are the check that generated training data teaches something about real faces, and settings
chosen by looking at these detections would make it worthless.

For each image the model runs as ``isrn detect`` runs it (the same inference path, ``jobs.serving``:
letterbox to the model's ``max_size``, the exported program, boxes mapped back) and, at ``isrn
detect``'s score threshold, a face is found when a box not yet matched to another face overlaps it at
IoU >= 0.5 (boxes taken by score, highest first); every other box above the threshold is a false box. Also printed per face: the highest score
of any box at IoU >= 0.5 whatever the threshold (0 when none), which shows how far from found a
missed face is. Needs the MLflow server that holds the model (``isrn platform up``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from isrn_model.boxes import box_iou
from jobs.commands.detect import DEFAULT_MODEL, annotate, detect, load_registered

ANNOTATIONS = Path(__file__).with_name("heldout_photos.json")
IOU = 0.5
MONTAGE_HEIGHT = 256
DETECT_THRESHOLD = next(p.default for p in detect.params if p.name == "score_threshold")
"""`isrn detect`'s default score threshold, read from the command so the two never differ."""


@dataclass(frozen=True)
class Photo:
    name: str
    image_rgb: np.ndarray
    """uint8 [H, W, 3]."""
    boxes: np.ndarray
    """float32 [F, 4] xyxy pixels: the hand-drawn faces."""


def load_image(source: str) -> np.ndarray:
    """RGB uint8 [H, W, 3] of a photo named by its `source` in the annotations."""
    if source.startswith("skimage.data."):
        import skimage.data

        image = getattr(skimage.data, source.removeprefix("skimage.data.").removesuffix("()"))()
    elif source.startswith("matplotlib sample_data/"):
        import matplotlib.cbook

        path = matplotlib.cbook.get_sample_data(source.removeprefix("matplotlib sample_data/"), asfileobj=False)
        image = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    else:
        raise ValueError(f"{ANNOTATIONS}: unknown source {source!r}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def load_photos(path: Path = ANNOTATIONS) -> list[Photo]:
    """The annotated photos, each checked against its recorded size, then their montage."""
    spec = json.loads(path.read_text())
    photos = []
    for entry in spec["photos"]:
        image = load_image(entry["source"])
        if [image.shape[1], image.shape[0]] != entry["size"]:
            raise ValueError(f"{path}: {entry['name']} is {image.shape[1]}x{image.shape[0]}, annotated as "
                             f"{entry['size'][0]}x{entry['size'][1]}: a different version of the photo")
        boxes = np.array([f["box"] for f in entry["faces"]], np.float32).reshape(-1, 4)
        photos.append(Photo(entry["name"], image, boxes))
    return photos + [montage(photos)]


def montage(photos: list[Photo], height: int = MONTAGE_HEIGHT) -> Photo:
    """The photos side by side, each scaled to `height`, their boxes scaled and shifted with them."""
    tiles, boxes, x = [], [], 0
    for photo in photos:
        scale = height / photo.image_rgb.shape[0]
        width = round(photo.image_rgb.shape[1] * scale)
        tiles.append(cv2.resize(photo.image_rgb, (width, height), interpolation=cv2.INTER_AREA))
        boxes.append(photo.boxes * np.float32((scale, scale, scale, scale)) + np.float32((x, 0, x, 0)))
        x += width
    return Photo("montage", np.concatenate(tiles, axis=1), np.concatenate(boxes))


def match(faces: np.ndarray, detections: np.ndarray, iou: float = IOU) -> tuple[np.ndarray, int]:
    """Greedy matching by score: (found bool[F], false boxes). detections [K, 5] sorted by score."""
    found = np.zeros(len(faces), bool)
    false = 0
    if len(detections) == 0:
        return found, 0
    overlaps = box_iou(torch.from_numpy(detections[:, :4].astype(np.float32)), torch.from_numpy(faces)).numpy()
    for k in range(len(detections)):
        candidates = np.where(~found & (overlaps[k] >= iou))[0]
        if len(candidates):
            found[candidates[np.argmax(overlaps[k, candidates])]] = True
        else:
            false += 1
    return found, false


def best_score(faces: np.ndarray, detections: np.ndarray, iou: float = IOU) -> np.ndarray:
    """Per face, the highest score of any detection at IoU >= `iou` with it (0 when none)."""
    if len(detections) == 0:
        return np.zeros(len(faces))
    overlaps = box_iou(torch.from_numpy(faces), torch.from_numpy(detections[:, :4].astype(np.float32))).numpy()
    return np.where(overlaps >= iou, detections[None, :, 4], 0.0).max(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="any MLflow model URI (default: %(default)s)")
    parser.add_argument("--score-threshold", type=float, default=DETECT_THRESHOLD)
    parser.add_argument("--out", type=Path, help="also write each image with its boxes above the threshold here")
    args = parser.parse_args()

    detector = load_registered(args.model).faces
    photos = load_photos()
    print(f"model {args.model} (max_size {detector.max_size}); found: IoU >= {IOU} at score >= {args.score_threshold}")
    print(f"{'image':14} {'faces':>5} {'found':>5} {'false boxes':>11}  best score per face at IoU >= {IOU}")
    total_faces = total_found = total_false = 0
    for photo in photos:
        all_boxes = detector.detect([photo.image_rgb], score_threshold=1e-6)[0]
        shown = all_boxes[all_boxes[:, 4] >= args.score_threshold]
        found, false = match(photo.boxes, shown)
        scores = best_score(photo.boxes, all_boxes)
        print(f"{photo.name:14} {len(photo.boxes):5d} {int(found.sum()):5d} {false:11d}  "
              + " ".join(f"{s:.2f}" for s in scores))
        total_faces, total_found, total_false = total_faces + len(found), total_found + int(found.sum()), total_false + false
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            image = annotate(cv2.cvtColor(photo.image_rgb, cv2.COLOR_RGB2BGR), shown)
            for x1, y1, x2, y2 in photo.boxes.astype(int):
                cv2.rectangle(image, (x1, y1), (x2, y2), (0, 255, 0), 1)
            cv2.imwrite(str(args.out / f"{photo.name}.jpg"), image)
    print(f"{'total':14} {total_faces:5d} {total_found:5d} {total_false:11d}")


if __name__ == "__main__":
    main()
