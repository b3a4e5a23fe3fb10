"""WIDER FACE ground truth for evaluation: the official `.mat` files, or arrays held in memory.

The official tool reads `wider_face_val.mat` (`event_list`, `file_list`, `face_bbx_list`: int32
x, y, w, h per face) and one file per setting, `wider_{easy,medium,hard}_val.mat`, whose `gt_list`
holds, per image, the 1-based indices of the faces that count in that setting. Faces outside a
setting are not dropped: a prediction that matches one is *ignored* (see `evaluate.py`), so every
face of the image is kept here and the settings are index lists into it (0-based in this module).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SETTINGS: tuple[str, ...] = ("easy", "medium", "hard")

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
    """

    event: str
    name: str
    boxes: np.ndarray
    keep: Mapping[str, np.ndarray] = field(repr=False)

    @property
    def key(self) -> ImageKey:
        return (self.event, self.name)


@dataclass(frozen=True)
class WiderGroundTruth:
    """Ground truth of a WIDER FACE split, images in the official (event, file list) order.

    Build it with `load_ground_truth` (the official `.mat` files) or `ground_truth_from_arrays`
    (in memory); both validate their input.
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

    def num_faces_in(self, setting: str) -> int:
        """Faces that count in `setting`: the recall denominator."""
        if setting not in self.settings:
            raise ValueError(f"unknown setting {setting!r}; expected one of {self.settings}")
        return sum(len(image.keep[setting]) for image in self.images)


def ground_truth_from_arrays(
    events: Sequence[str],
    names: Sequence[str],
    boxes: Sequence[np.ndarray],
    keep: Mapping[str, Sequence[np.ndarray]],
) -> WiderGroundTruth:
    """Ground truth from in-memory arrays, one entry per image in the same order in every argument.

    Args:
        events: event folder per image, e.g. "0--Parade".
        names: image name per image, without extension.
        boxes: per image an array [N, 4] of (x, y, w, h) in whole pixels (the official ground truth
            is int32 and the official matching depends on it); N may be 0.
        keep: setting name (e.g. "easy", "medium", "hard") -> per image the 0-based indices of the
            faces that count in that setting.

    Raises:
        ValueError: lengths differ, a box array is not [N, 4] of whole numbers, an index is out of
            range, or an (event, name) pair repeats. The message names the image.
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

    images = []
    seen: set[ImageKey] = set()
    for i in range(num_images):
        key = (str(events[i]), str(names[i]))
        if key in seen:
            raise ValueError(f"image {key[0]}/{key[1]} appears twice (index {i})")
        seen.add(key)
        image_boxes = _as_int_boxes(boxes[i], f"boxes of image {i} ({key[0]}/{key[1]})")
        image_keep = {}
        for setting, per_image in keep.items():
            indices = np.asarray(per_image[i]).reshape(-1)
            if indices.size and not np.issubdtype(indices.dtype, np.integer):
                raise ValueError(f"keep[{setting!r}] of image {i} ({key[0]}/{key[1]}) must hold integers, got {indices.dtype}")
            indices = indices.astype(np.int64)
            bad = indices[(indices < 0) | (indices >= len(image_boxes))]
            if bad.size:
                raise ValueError(
                    f"keep[{setting!r}] of image {i} ({key[0]}/{key[1]}) has index {int(bad[0])} "
                    f"outside 0..{len(image_boxes) - 1}"
                )
            image_keep[setting] = indices
        images.append(GroundTruthImage(event=key[0], name=key[1], boxes=image_boxes, keep=image_keep))
    return WiderGroundTruth(images=tuple(images), settings=tuple(keep))


def load_ground_truth(gt_dir: str | Path, *, split: str = "val") -> WiderGroundTruth:
    """Read the official WIDER FACE ground truth `.mat` files from `gt_dir`.

    Reads `wider_face_{split}.mat` and `wider_{easy,medium,hard}_{split}.mat` (the layout of the
    official `eval_tools/ground_truth/` folder). The setting files must list the same images in the
    same order as the main file, as the official tool assumes.

    Raises:
        FileNotFoundError: a file is missing (names it).
        ValueError: the files disagree, or a field is missing or malformed.
    """
    import scipy.io  # lazy: keeps `import isrn_model.wider_eval` light

    gt_dir = Path(gt_dir)
    main_path = gt_dir / f"wider_face_{split}.mat"
    setting_paths = {setting: gt_dir / f"wider_{setting}_{split}.mat" for setting in SETTINGS}
    for path in (main_path, *setting_paths.values()):
        if not path.is_file():
            raise FileNotFoundError(
                f"WIDER FACE ground truth file {path} not found; --ground-truth must be the folder holding "
                f"wider_face_{split}.mat and wider_{{easy,medium,hard}}_{split}.mat (the official eval_tools/ground_truth/)"
            )

    main = _read_mat(scipy.io, main_path, ("event_list", "file_list", "face_bbx_list"))
    events = [_mat_string(cell) for cell in main["event_list"].reshape(-1)]
    file_lists = [[_mat_string(cell) for cell in files.reshape(-1)] for files in main["file_list"].reshape(-1)]
    box_lists = [list(cell.reshape(-1)) for cell in main["face_bbx_list"].reshape(-1)]
    if not (len(events) == len(file_lists) == len(box_lists)):
        raise ValueError(f"{main_path}: event_list, file_list and face_bbx_list differ in length; {_OFFICIAL}")

    keep_lists: dict[str, list[list[np.ndarray]]] = {}
    for setting, path in setting_paths.items():
        mat = _read_mat(scipy.io, path, ("event_list", "file_list", "gt_list"))
        setting_files = [[_mat_string(cell) for cell in files.reshape(-1)] for files in mat["file_list"].reshape(-1)]
        setting_events = [_mat_string(cell) for cell in mat["event_list"].reshape(-1)]
        if setting_events != events or setting_files != file_lists:
            raise ValueError(f"{path} lists other images (or another order) than {main_path}: the four files "
                             f"must come from one release; {_OFFICIAL}")
        keep_lists[setting] = [list(cell.reshape(-1)) for cell in mat["gt_list"].reshape(-1)]

    flat_events, flat_names, flat_boxes = [], [], []
    flat_keep: dict[str, list[np.ndarray]] = {setting: [] for setting in SETTINGS}
    for e, event in enumerate(events):
        if len(box_lists[e]) != len(file_lists[e]):
            raise ValueError(f"{main_path}: event {event} has {len(file_lists[e])} files but {len(box_lists[e])} "
                             f"box lists; {_OFFICIAL}")
        for j, name in enumerate(file_lists[e]):
            boxes = np.asarray(box_lists[e][j])
            if boxes.size and (boxes.ndim != 2 or boxes.shape[1] != 4):  # reshaping would mix up faces
                raise ValueError(f"{main_path}: face_bbx_list of {event}/{name} must be [N, 4] (x, y, w, h), got "
                                 f"shape {boxes.shape}; {_OFFICIAL}")
            flat_events.append(event)
            flat_names.append(name)
            flat_boxes.append(boxes if boxes.size else np.zeros((0, 4), np.int32))
            for setting in SETTINGS:
                one_based = np.asarray(keep_lists[setting][e][j]).reshape(-1).astype(np.int64)
                flat_keep[setting].append(one_based - 1)
    try:
        return ground_truth_from_arrays(flat_events, flat_names, flat_boxes, flat_keep)
    except ValueError as error:
        raise ValueError(f"{gt_dir}: {error}; {_OFFICIAL}") from None


def save_ground_truth(ground_truth: WiderGroundTruth, gt_dir: str | Path, *, split: str = "val") -> Path:
    """Write `ground_truth` as the official `.mat` files that `load_ground_truth` reads.

    Writes `wider_face_{split}.mat` (`event_list`, `file_list`, `face_bbx_list`) and one
    `wider_{setting}_{split}.mat` per setting (the same plus `gt_list`, 1-based). Images are grouped
    by event in order of first appearance, as the official files are; the attribute label lists are
    not written (the metric does not read them).
    """
    import scipy.io

    gt_dir = Path(gt_dir)
    gt_dir.mkdir(parents=True, exist_ok=True)
    events: dict[str, list[GroundTruthImage]] = {}
    for image in ground_truth.images:
        events.setdefault(image.event, []).append(image)

    def cells(values: list) -> np.ndarray:
        array = np.empty((len(values), 1), dtype=object)
        for i, value in enumerate(values):
            array[i, 0] = value
        return array

    main = {
        "event_list": cells(list(events)),
        "file_list": cells([cells([image.name for image in images]) for images in events.values()]),
        "face_bbx_list": cells([cells([image.boxes.astype(np.int32) for image in images]) for images in events.values()]),
    }
    scipy.io.savemat(gt_dir / f"wider_face_{split}.mat", main)
    for setting in ground_truth.settings:
        gt_list = cells([
            cells([(image.keep[setting] + 1).astype(np.float64).reshape(-1, 1) for image in images])
            for images in events.values()
        ])
        scipy.io.savemat(gt_dir / f"wider_{setting}_{split}.mat", {**main, "gt_list": gt_list})
    return gt_dir


_OFFICIAL = ("use the official eval_tools/ground_truth/ files, or write them with "
             "isrn_model.wider_eval.save_ground_truth")


def _read_mat(scipy_io, path: Path, fields: Sequence[str]) -> dict:
    try:
        mat = scipy_io.loadmat(str(path))
    except (ValueError, OSError, NotImplementedError) as error:
        raise ValueError(f"{path}: not a readable MATLAB file ({error}); {_OFFICIAL}") from error
    missing = [name for name in fields if name not in mat]
    if missing:
        raise ValueError(f"{path}: missing variable(s) {', '.join(missing)}; {_OFFICIAL}")
    return mat


def _mat_string(cell: np.ndarray) -> str:
    """A MATLAB char array as loaded by scipy (a 1-element str array) -> str."""
    value = np.asarray(cell).reshape(-1)
    return str(value[0]) if value.size else ""


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
