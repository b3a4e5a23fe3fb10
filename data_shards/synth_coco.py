"""The generated data set in COCO format too: COCO `bbox` person boxes and COCO-WholeBody `face_box`.

    isrn data synth --out data/synth ...      # writes data/synth/coco/coco_wholebody_{train,val}.json
    isrn shards build --coco data/synth/coco/coco_wholebody_train.json --images data/synth/WIDER_train/images \\
        --split train --boxes face --out s3://isrn-shards/synth-coco

The images stay where the WIDER layout put them: `file_name` is `<event>/<name>.jpg` under
`WIDER_<split>/images/`, so the COCO path reads the very files (and gives the very keys) the WIDER path
does. One annotation of category `person` (id 1) per generated face, in the WIDER file's order:

- `face_box` is the face's box and `face_valid` is false for the faces the WIDER file marks invalid.
  COCO-WholeBody zeroes the box of an invalid face; we keep it (the reader takes both), so that the
  COCO path sees exactly the WIDER path's faces.
- `bbox` is an invented head-and-shoulders box (`person_boxes`): the face widened by half its width on
  each side, raised by 15 % of its height for the hair and lowered by twice its height for the
  shoulders, clipped to the image; shrunk towards the face box until its overlap with every other
  face and every earlier person box stays under the metric's 0.5, so that the official matching (the
  first box of overlap >= 0.5 wins) scores a perfect prediction set AP 1 on person boxes too.
- `iscrowd` 0, `area` the bbox area, no keypoints. Images without a face are listed in `images`
  without annotations, as COCO lists them (the reader keeps only images with a box).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data_shards.images import declared_size
from data_shards.wider_layout import Face, ImageRecord, WiderLayout
from isrn_model.wider_eval import IOU_THRESHOLD, box_overlap

PERSON_CATEGORY_ID = 1
COCO_DIR = "coco"
SHAPES = ((0.5, 0.15, 2.0), (0.4, 0.1, 1.5), (0.3, 0.1, 1.0), (0.15, 0.05, 0.5), (0.0, 0.0, 0.0))
"""Person box shapes tried in order, as (widen each side, raise, lower) in face widths / heights. The
last is the face box itself, which always passes the overlap test: every earlier box kept its overlap
with this face under 0.5, and faces do not overlap one another."""


def annotation_path(root: str | Path, split: str) -> Path:
    """Where the generated set's COCO annotation file of `split` is."""
    return Path(root) / COCO_DIR / f"coco_wholebody_{split}.json"


def person_boxes(faces: tuple[Face, ...] | list[Face], width: int, height: int) -> list[list[int]]:
    """A person box [x, y, w, h] (whole pixels, inside the width × height image) per face (module docstring)."""
    solid = [k for k, f in enumerate(faces) if not f.is_degenerate]
    out: list[list[int]] = []
    for k, face in enumerate(faces):
        if face.is_degenerate:
            out.append(face.xywh())  # nothing drawn: no person either, the WIDER quirk kept as it is
            continue
        others = np.array([faces[j].xywh() for j in solid if j != k] + [b for j, b in enumerate(out) if j in solid],
                          dtype=np.int32).reshape(-1, 4)
        for side, up, down in SHAPES:
            x1 = max(0, round(face.x - side * face.w))
            y1 = max(0, round(face.y - up * face.h))
            x2 = min(width, round(face.x + face.w + side * face.w))
            y2 = min(height, round(face.y + face.h + down * face.h))
            box = [x1, y1, x2 - x1, y2 - y1]
            if not len(others) or box_overlap(np.array([box], np.float64), others).max() < IOU_THRESHOLD:
                break
        out.append(box)
    return out


def coco_annotations(records: list[ImageRecord], sizes: list[tuple[int, int]]) -> dict:
    """A COCO-WholeBody-style annotation file of `records` ((width, height) per image in `sizes`)."""
    images, annotations = [], []
    for image_id, (record, (width, height)) in enumerate(zip(records, sizes, strict=True), 1):
        images.append({"id": image_id, "file_name": record.path, "width": width, "height": height})
        for face, bbox in zip(record.faces, person_boxes(record.faces, width, height), strict=True):
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": PERSON_CATEGORY_ID,
                "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0, "num_keypoints": 0,
                "face_box": face.xywh(), "face_valid": not face.invalid,
            })
    return {
        "info": {"description": "isrn data synth: generated faces in COCO-WholeBody format"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": PERSON_CATEGORY_ID, "name": "person", "supercategory": "person"}],
    }


def write_coco_split(root: str | Path, split: str, records: list[ImageRecord]) -> Path:
    """Write the COCO annotation file of a generated split whose images are under `root`; returns its path."""
    layout = WiderLayout(root)
    sizes = [declared_size(layout.image_path(split, record).read_bytes()) for record in records]
    path = annotation_path(root, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(coco_annotations(records, sizes)))
    return path
