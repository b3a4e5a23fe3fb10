"""WIDER FACE ground truth held in memory: boxes, the settings' keep lists and the face attributes.

The official tool reads, per image, every face's box and, per setting (Easy, Medium, Hard), the
indices of the faces that count. Faces outside a setting are not dropped: a prediction that matches
one is *ignored* (see `evaluate.py`), so every face of the image is kept here and the settings are
index lists into it (0-based in this module). The six attribute labels of each face (blur,
expression, illumination, invalid, occlusion, pose) come with the official `.mat` files and feed the
per-attribute breakdown (`breakdown.py`); the metric itself does not read them. Reading and writing
the `.mat` files is `mat_files.py`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

SETTINGS: tuple[str, ...] = ("easy", "medium", "hard")
"""The official evaluation settings, in the order the official tool reports them."""

ATTRIBUTES: tuple[str, ...] = ("blur", "expression", "illumination", "invalid", "occlusion", "pose")
"""The WIDER FACE face attributes, in the column order of `wider_face_*_bbx_gt.txt` (after x y w h);
the `.mat` files hold each as `<attribute>_label_list`."""

ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "blur": ("clear", "normal", "heavy"),
    "expression": ("typical", "exaggerate"),
    "illumination": ("normal", "extreme"),
    "invalid": ("false", "true"),
    "occlusion": ("none", "partial", "heavy"),
    "pose": ("typical", "atypical"),
}
"""Attribute -> value names, indexed by the label code (the WIDER FACE readme: "clear->0, normal
blur->1, heavy blur->2", "no occlusion->0, partial occlusion->1, heavy occlusion->2", ...)."""

ImageKey = tuple[str, str]
"""(event, image name), e.g. ("0--Parade", "0_Parade_marchingband_1_465"); the name has no `.jpg`."""


@dataclass(frozen=True)
class GroundTruthImage:
    """The faces of one image.

    Attributes:
        event: the event folder, e.g. "0--Parade".
        name: the image name without extension.
        boxes: int32 array [N, 4] of (x, y, w, h) in pixels, in annotation order (order matters: the
            official matching picks the first face in this order, see `evaluate.match_faces`).
        keep: setting name -> int64 array [K] of the 0-based indices of the faces that count.
        attributes: attribute name (all of `ATTRIBUTES`) -> uint8 array [N] of label codes (see
            `ATTRIBUTE_VALUES`), or None when the ground truth carries no labels.
    """

    event: str
    name: str
    boxes: np.ndarray
    keep: Mapping[str, np.ndarray] = field(repr=False)
    attributes: Mapping[str, np.ndarray] | None = field(default=None, repr=False)

    @property
    def key(self) -> ImageKey:
        return (self.event, self.name)


@dataclass(frozen=True)
class WiderGroundTruth:
    """Ground truth of a WIDER FACE split, images in the official (event, file list) order.

    Build it with `load_ground_truth` (the official `.mat` files) or `ground_truth_from_arrays`
    (in memory); both validate their input. Faces are numbered globally in image order then
    annotation order: face k of image i is `face_offsets()[i] + k` (the face arrays below use it).
    """

    images: tuple[GroundTruthImage, ...]
    settings: tuple[str, ...] = SETTINGS

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[GroundTruthImage]:
        return iter(self.images)

    def keys(self) -> list[ImageKey]:
        return [image.key for image in self.images]

    @property
    def num_faces(self) -> int:
        """All annotated faces, in or out of any setting."""
        return sum(len(image.boxes) for image in self.images)

    @property
    def has_attributes(self) -> bool:
        """Whether every image carries the six attribute labels."""
        return all(image.attributes is not None for image in self.images)

    def num_faces_in(self, setting: str) -> int:
        """Faces that count in `setting`: the recall denominator."""
        self._check_setting(setting)
        return sum(len(image.keep[setting]) for image in self.images)

    def face_offsets(self) -> np.ndarray:
        """int64 [I + 1]: the faces of image i are the global faces `offsets[i]:offsets[i + 1]`."""
        return np.cumsum([0] + [len(image.boxes) for image in self.images], dtype=np.int64)

    def keep_mask(self, setting: str) -> np.ndarray:
        """bool [num_faces]: the faces that count in `setting`, by global face index."""
        self._check_setting(setting)
        offsets = self.face_offsets()
        mask = np.zeros(int(offsets[-1]), bool)
        for offset, image in zip(offsets, self.images):
            mask[offset + image.keep[setting]] = True
        return mask

    def face_boxes(self) -> np.ndarray:
        """int32 [num_faces, 4]: every face's (x, y, w, h), by global face index."""
        return np.concatenate([np.zeros((0, 4), np.int32), *(image.boxes for image in self.images)])

    def face_attribute(self, attribute: str) -> np.ndarray:
        """uint8 [num_faces]: every face's label code of `attribute`, by global face index.

        Raises:
            ValueError: an unknown attribute, or ground truth without attribute labels.
        """
        if attribute not in ATTRIBUTES:
            raise ValueError(f"unknown attribute {attribute!r}; expected one of {ATTRIBUTES}")
        if not self.has_attributes:
            raise ValueError(
                f"this ground truth carries no attribute labels, so faces cannot be selected by {attribute}: "
                "load the official wider_face_val.mat, which holds blur_label_list ... pose_label_list")
        return np.concatenate([np.zeros(0, np.uint8), *(image.attributes[attribute] for image in self.images)])

    def _check_setting(self, setting: str) -> None:
        if setting not in self.settings:
            raise ValueError(f"unknown setting {setting!r}; expected one of {self.settings}")


def ground_truth_from_arrays(
    events: Sequence[str],
    names: Sequence[str],
    boxes: Sequence[np.ndarray],
    keep: Mapping[str, Sequence[np.ndarray]],
    attributes: Mapping[str, Sequence[np.ndarray]] | None = None,
) -> WiderGroundTruth:
    """Ground truth from in-memory arrays, one entry per image in the same order in every argument.

    Args:
        events: event folder per image, e.g. "0--Parade".
        names: image name per image, without extension.
        boxes: per image an array [N, 4] of (x, y, w, h) in whole pixels (the official ground truth
            is int32 and the official matching depends on it); N may be 0.
        keep: setting name (e.g. "easy", "medium", "hard") -> per image the 0-based indices of the
            faces that count in that setting.
        attributes: None, or every name of `ATTRIBUTES` -> per image an array [N] of label codes
            (0 .. number of values - 1, see `ATTRIBUTE_VALUES`).

    Raises:
        ValueError: lengths differ, a box array is not [N, 4] of whole numbers, an index is out of
            range, an attribute is missing or holds an unknown code, or an (event, name) pair repeats.
            The message names the image.
    """
    num_images = len(events)
    if len(names) != num_images or len(boxes) != num_images:
        raise ValueError(
            f"events, names and boxes must have one entry per image; got {num_images}, {len(names)}, {len(boxes)}"
        )
    if not keep:
        raise ValueError("keep must name at least one setting, e.g. {'easy': [...], 'medium': [...], 'hard': [...]}")
    for setting, per_image in keep.items():
        if len(per_image) != num_images:
            raise ValueError(f"keep[{setting!r}] has {len(per_image)} entries for {num_images} images")
    if attributes is not None:
        if set(attributes) != set(ATTRIBUTES):
            raise ValueError(f"attributes must name exactly {ATTRIBUTES}; got {tuple(attributes)}")
        for attribute, per_image in attributes.items():
            if len(per_image) != num_images:
                raise ValueError(f"attributes[{attribute!r}] has {len(per_image)} entries for {num_images} images")

    images = []
    seen: set[ImageKey] = set()
    for i in range(num_images):
        key = (str(events[i]), str(names[i]))
        if key in seen:
            raise ValueError(f"image {key[0]}/{key[1]} appears twice (index {i})")
        seen.add(key)
        where = f"image {i} ({key[0]}/{key[1]})"
        image_boxes = _as_int_boxes(boxes[i], f"boxes of {where}")
        image_keep = {}
        for setting, per_image in keep.items():
            indices = np.asarray(per_image[i]).reshape(-1)
            if indices.size and not np.issubdtype(indices.dtype, np.integer):
                raise ValueError(f"keep[{setting!r}] of {where} must hold integers, got {indices.dtype}")
            indices = indices.astype(np.int64)
            bad = indices[(indices < 0) | (indices >= len(image_boxes))]
            if bad.size:
                raise ValueError(f"keep[{setting!r}] of {where} has index {int(bad[0])} outside 0..{len(image_boxes) - 1}")
            image_keep[setting] = indices
        image_attributes = None
        if attributes is not None:
            image_attributes = {name: _as_codes(attributes[name][i], name, len(image_boxes), where)
                                for name in ATTRIBUTES}
        images.append(GroundTruthImage(event=key[0], name=key[1], boxes=image_boxes, keep=image_keep,
                                       attributes=image_attributes))
    return WiderGroundTruth(images=tuple(images), settings=tuple(keep))


def _as_int_boxes(boxes: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(boxes)
    if array.size == 0:
        return np.zeros((0, 4), np.int32)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{what} must be an array [N, 4] of (x, y, w, h); got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise ValueError(f"{what} must be whole pixels (the official ground truth is int32)")
    return np.ascontiguousarray(array, dtype=np.int32)


def _as_codes(codes: np.ndarray, attribute: str, num_faces: int, where: str) -> np.ndarray:
    array = np.asarray(codes).reshape(-1)
    if len(array) != num_faces:
        raise ValueError(f"{attribute} labels of {where}: {len(array)} for {num_faces} faces")
    values = ATTRIBUTE_VALUES[attribute]
    bad = np.flatnonzero(~np.isin(array, np.arange(len(values))))
    if bad.size:
        raise ValueError(f"{attribute} label of face {int(bad[0])} of {where} is {array[bad[0]].item()!r}; expected a code "
                         f"0..{len(values) - 1} ({', '.join(f'{k}: {v}' for k, v in enumerate(values))})")
    return array.astype(np.uint8)
