"""COCO-format person annotations -> per-image box records, the ones the WIDER reader gives.

    split = read_coco("annotations/coco_wholebody_val_v1.0.json", boxes="face")
    split.images[0].record      # ImageRecord("coco/000000000785", faces=(Face(x, y, w, h, invalid=…), …))

Two public annotations of COCO's person images are read, both COCO JSON (`images`, `annotations`,
`categories`), one annotation per person:

- COCO's own `instances_*.json` / `person_keypoints_*.json`: `bbox` [x, y, w, h] (float pixels) and
  `iscrowd`. `boxes="person"` takes the `bbox` of every annotation of the category named `person`.
- COCO-WholeBody (Jin et al., ECCV 2020) `coco_wholebody_*.json`: the same, plus `face_box` [x, y, w, h]
  and `face_valid`. `boxes="face"` takes the `face_box`. WholeBody stores the box of a face too unclear to
  annotate as all zeros, which is no box: such a person contributes no face.

What the flags become (the record's `invalid`, which training drops with `loader.keep_invalid: false`,
and which the val ground truth leaves out of every setting's keep list, so that a detection on it is
neither a true nor a false positive, the official protocol's ignored faces):

    iscrowd: 1                         invalid 1   (a box around a group, not one person or face)
    face_valid: false (with a box)     invalid 1   (boxes="face" only: too blurred or occluded)
    anything else                      invalid 0

Which images: those with at least one box of the chosen kind, in the order of `images` (COCO's "person
images" for `person`; those with a face box for `face`). An image's faces are its annotations' boxes in
the order of `annotations`.

Boxes become whole pixels as WIDER's are: each edge rounded to the nearest pixel (x1 = round(x),
x2 = round(x + w)), so a box moves by at most half a pixel. A box reaching past its image (COCO's
float edges sometimes pass the border by a fraction of a pixel) is clipped to it and counted; a box
entirely outside its image, a non-finite number, an annotation naming an image that is not in `images`,
and a file that is not COCO JSON raise `CocoFormatError` naming the file, the annotation or image id
and the fix. Boxes with w or h <= 0 after rounding are kept as WIDER's degenerate boxes are
(`Face.is_degenerate`): training and the ground truth's keep lists skip them.

Keys: an image's record is `<event>/<name>.jpg`, the key `<event>/<name>`: `name` is the file name's
stem with dots made `_` (a dot would end a WebDataset key), `event` the folder holding it in
`file_name` if it has one (the generated set's `0--Parade/…`), else `coco`.

Easy, Medium and Hard (COCO has no official definition; [ours]): the height rule of the WIDER sets,
`wider_layout.face_settings` (Hard at least 10 px tall, Medium 30, Easy 50), the same pixel heights for
both box kinds.
"""

from __future__ import annotations

import collections
import json
import math
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_shards.wider_layout import Face, ImageRecord, face_settings
from isrn_model.wider_eval import SETTINGS

BOX_KINDS = ("face", "person")
PERSON_CATEGORY = "person"
DEFAULT_EVENT = "coco"
"""The event of an image whose `file_name` has no folder (COCO 2017's own: `000000000785.jpg`)."""

_FIX = "fix or remove the annotation in the annotation file"


class CocoFormatError(ValueError):
    """An annotation file that cannot be read as COCO; the message names the file, the id and the fix."""

    def __init__(self, path: str | Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = str(path)


@dataclass(frozen=True)
class CocoImage:
    """One image of the split: its COCO entry and its record (key and boxes as WIDER faces)."""

    image_id: int
    file_name: str
    """Path under the images folder, as `images[].file_name` gives it."""
    width: int
    height: int
    record: ImageRecord


@dataclass(frozen=True)
class CocoSplit:
    """The images of an annotation file that carry boxes of the chosen kind, and what was counted."""

    path: Path
    boxes: str
    images: tuple[CocoImage, ...]
    counts: dict[str, int] = field(default_factory=dict)
    """images (in `images`), kept (with a box), boxes, invalid, crowd, clipped, no_face_box, other_categories."""


def read_coco(path: str | Path, *, boxes: str = "face") -> CocoSplit:
    """The images and boxes of a COCO-format annotation file (module docstring); CocoFormatError on bad input."""
    if boxes not in BOX_KINDS:
        raise ValueError(f"boxes must be one of {BOX_KINDS}, got {boxes!r}")
    path = Path(path)
    data = _load_json(path)
    person_ids = _person_categories(path, data)
    entries = _images(path, data)
    counts: collections.Counter[str] = collections.Counter(images=len(entries))
    faces: dict[int, list[Face]] = collections.defaultdict(list)
    for index, ann in enumerate(data["annotations"]):
        ann_id = _annotation_id(path, ann, index)
        image_id = ann.get("image_id")
        if ann.get("category_id") not in person_ids:
            counts["other_categories"] += 1
            continue
        if image_id not in entries:
            raise CocoFormatError(path, f"annotation {ann_id} names image_id {image_id!r}, which is not in `images`: "
                                        f"fix its image_id, or remove the annotation")
        entry = entries[image_id]
        face = _face(path, ann, ann_id, entry, boxes, counts)
        if face is not None:
            faces[image_id].append(face)
    images = []
    for image_id, entry in entries.items():
        if faces.get(image_id):
            images.append(CocoImage(image_id, entry["file_name"], entry["width"], entry["height"],
                                    ImageRecord(entry["key"] + ".jpg", tuple(faces[image_id]))))
    counts["kept"] = len(images)
    counts["boxes"] = sum(len(image.record.faces) for image in images)
    return CocoSplit(path, boxes, tuple(images), dict(counts))


def ground_truth_arrays(images: tuple[CocoImage, ...] | list[CocoImage]) -> dict[str, Any]:
    """Keyword arguments of `isrn_model.wider_eval.ground_truth_from_arrays` for `images`: every box
    of every image, and per setting the indices of the boxes that count (`face_settings`)."""
    records = [image.record for image in images]
    return {
        "events": [r.event for r in records],
        "names": [r.name for r in records],
        "boxes": [np.array([f.xywh() for f in r.faces], dtype=np.int32).reshape(-1, 4) for r in records],
        "keep": {setting: [np.array([k for k, f in enumerate(r.faces) if setting in face_settings(f)], dtype=np.int64)
                           for r in records] for setting in SETTINGS},
    }


# ---------------------------------------------------------------- reading


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    try:
        data = json.loads(path.read_bytes())
    except UnicodeDecodeError as error:
        raise CocoFormatError(path, f"not UTF-8 text ({error}): give a COCO JSON annotation file") from None
    except json.JSONDecodeError as error:
        raise CocoFormatError(path, f"not JSON (line {error.lineno}, column {error.colno}: {error.msg}): give a COCO "
                                    "JSON annotation file (instances_*.json, or coco_wholebody_*.json)") from None
    missing = [name for name in ("images", "annotations", "categories")
               if not isinstance(data, dict) or not isinstance(data.get(name), list)]
    if missing:
        what = "its keys are " + ", ".join(sorted(map(repr, data))[:6]) if isinstance(data, dict) else \
            f"it is a JSON {type(data).__name__}"
        raise CocoFormatError(path, f"not a COCO annotation file: no {' or '.join(repr(m) for m in missing)} list "
                                    f"({what}); give a COCO JSON annotation file (instances_*.json, or "
                                    "coco_wholebody_*.json)")
    return data


def _person_categories(path: Path, data: dict) -> set[int]:
    ids = {c.get("id") for c in data["categories"] if isinstance(c, dict) and c.get("name") == PERSON_CATEGORY}
    if not ids:
        names = sorted(str(c.get("name")) for c in data["categories"] if isinstance(c, dict))[:5]
        raise CocoFormatError(path, f"no category named {PERSON_CATEGORY!r} (categories: "
                                    f"{', '.join(names) or 'none'}): give COCO's instances_*.json, "
                                    "person_keypoints_*.json or coco_wholebody_*.json")
    return ids


def _images(path: Path, data: dict) -> dict[int, dict]:
    """id -> {file_name, width, height, key}, in the order of `images`."""
    entries: dict[int, dict] = {}
    keys: dict[str, str] = {}
    for index, image in enumerate(data["images"]):
        image_id = image.get("id") if isinstance(image, dict) else None
        if not _is_int(image_id):
            raise CocoFormatError(path, f"images[{index}] has no integer id: fix or remove the entry")
        file_name, width, height = image.get("file_name"), image.get("width"), image.get("height")
        if not (isinstance(file_name, str) and _relative_path(file_name)):
            raise CocoFormatError(path, f"image id {image_id}: file_name {file_name!r} is not a relative path inside "
                                        "the images folder: fix the entry's file_name")
        if not (_is_int(width) and _is_int(height) and width > 0 and height > 0):
            raise CocoFormatError(path, f"image id {image_id} ({file_name}): width and height must be whole numbers "
                                        f"> 0, got {width!r} × {height!r}: fix the entry")
        if image_id in entries:
            raise CocoFormatError(path, f"image id {image_id} is listed twice (images[{index}]): give each image "
                                        "one entry")
        key = _key(file_name)
        if key in keys:
            raise CocoFormatError(path, f"image id {image_id} ({file_name}) and {keys[key]} have the same sample key "
                                        f"{key!r}: rename one of the files")
        keys[key] = f"{file_name} (id {image_id})"
        entries[image_id] = {"file_name": file_name, "width": width, "height": height, "key": key}
    return entries


def _key(file_name: str) -> str:
    folder, base = posixpath.split(file_name)
    event = posixpath.basename(folder) or DEFAULT_EVENT
    stem = base.rsplit(".", 1)[0] if "." in base else base
    return f"{event.replace('.', '_')}/{stem.replace('.', '_')}"


def _annotation_id(path: Path, ann: Any, index: int) -> int:
    ann_id = ann.get("id") if isinstance(ann, dict) else None
    if not _is_int(ann_id):
        raise CocoFormatError(path, f"annotations[{index}] has no integer id: fix or remove the entry")
    return ann_id


def _face(path: Path, ann: dict, ann_id: int, image: dict, boxes: str,
          counts: collections.Counter[str]) -> Face | None:
    """The annotation's box of kind `boxes` as a WIDER face, None when it has none."""
    where = f"annotation {ann_id} (image {image['file_name']})"
    crowd = ann.get("iscrowd", 0)
    if crowd not in (0, 1) or isinstance(crowd, float):
        raise CocoFormatError(path, f"{where}: iscrowd must be 0 or 1, got {crowd!r}: {_FIX}")
    invalid = bool(crowd)
    if boxes == "person":
        values = _numbers(path, ann, "bbox", where)
    else:
        if "face_box" not in ann:
            raise CocoFormatError(path, f"{where}: no face_box: --boxes face needs COCO-WholeBody annotations "
                                        "(coco_wholebody_*.json); use --boxes person for COCO's own")
        values = _numbers(path, ann, "face_box", where)
        valid = ann.get("face_valid", True)
        if not isinstance(valid, bool):
            raise CocoFormatError(path, f"{where}: face_valid must be true or false, got {valid!r}: {_FIX}")
        if not any(values):
            counts["no_face_box"] += 1
            return None
        invalid = invalid or not valid
    x1, y1 = _round(values[0]), _round(values[1])
    x2, y2 = _round(values[0] + values[2]), _round(values[1] + values[3])
    if x2 > x1 and y2 > y1:
        width, height = image["width"], image["height"]
        if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
            raise CocoFormatError(path, f"{where}: its box {values} lies outside the {width} × {height} image: "
                                        "fix its box or its image_id (or the image's width and height), or remove "
                                        "the annotation")
        clipped = (max(x1, 0), max(y1, 0), min(x2, width), min(y2, height))
        counts["clipped"] += clipped != (x1, y1, x2, y2)
        x1, y1, x2, y2 = clipped
    counts["invalid"] += invalid
    counts["crowd"] += bool(crowd)
    return Face(x1, y1, x2 - x1, y2 - y1, invalid=int(invalid))


def _numbers(path: Path, ann: dict, name: str, where: str) -> list[float]:
    values = ann.get(name)
    if not (isinstance(values, list) and len(values) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
        raise CocoFormatError(path, f"{where}: {name} must be 4 numbers [x, y, w, h], got {values!r}: {_FIX}")
    if not all(math.isfinite(v) for v in values):
        raise CocoFormatError(path, f"{where}: {name} {values} holds a non-finite number: {_FIX}")
    return [float(v) for v in values]


def _round(value: float) -> int:
    return math.floor(value + 0.5)  # half up, as WIDER's pixel grid: the same for every edge


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _relative_path(name: str) -> bool:
    return (bool(name) and not name.startswith("/") and "\\" not in name
            and all(part not in ("", ".", "..") for part in name.split("/")))
