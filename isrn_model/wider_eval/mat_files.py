"""The official WIDER FACE ground truth `.mat` files: read and written here only.

The evaluation tool's `ground_truth/` folder holds, per split:

    wider_face_{split}.mat     event_list    cell [E, 1] of event names
                               file_list     cell [E, 1], each a cell [n_e, 1] of image names (no .jpg)
                               face_bbx_list cell [E, 1], each a cell [n_e, 1] of int32 [N, 4] (x, y, w, h)
                               <attribute>_label_list, for blur, expression, illumination, invalid,
                                             occlusion and pose: the same nesting, uint8 [N, 1] codes
    wider_{setting}_{split}.mat  the same, plus gt_list: the same nesting, [K, 1] 1-based indices of
                               the faces that count in the setting (uint8; uint16 past 255 faces)

Events are grouped: the images of one event are consecutive. `save_ground_truth` writes this layout
(compressed MATLAB 5 files with a fixed header, so the same ground truth gives the same bytes);
`load_ground_truth` reads it, the attribute lists included when present.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from isrn_model.wider_eval.ground_truth import ATTRIBUTES, SETTINGS, GroundTruthImage, WiderGroundTruth, ground_truth_from_arrays

MAT_HEADER = b"MATLAB 5.0 MAT-file, written by isrn_model.wider_eval"
"""The 116-byte text at the start of a MATLAB 5 file. scipy writes the creation time there, so two
writes of the same ground truth would differ whenever they straddled a second."""

_OFFICIAL = ("use the official eval_tools/ground_truth/ files, or write them with "
             "isrn_model.wider_eval.save_ground_truth")


def mat_file_names(split: str = "val") -> dict[str, str]:
    """File name of each part: {"face": "wider_face_val.mat", "easy": "wider_easy_val.mat", ...}."""
    return {"face": f"wider_face_{split}.mat", **{setting: f"wider_{setting}_{split}.mat" for setting in SETTINGS}}


def load_ground_truth(gt_dir: str | Path, *, split: str = "val") -> WiderGroundTruth:
    """Read the official WIDER FACE ground truth `.mat` files from `gt_dir`.

    Reads `wider_face_{split}.mat` (boxes, and the six attribute label lists when it holds them:
    all six or none) and `wider_{easy,medium,hard}_{split}.mat` (the keep lists). The setting files
    must list the same images in the same order as the main file, as the official tool assumes.

    Raises:
        FileNotFoundError: a file is missing (names it).
        ValueError: the files disagree, or a field is missing or malformed (names file, field, image).
    """
    import scipy.io  # lazy: keeps `import isrn_model.wider_eval` light

    gt_dir = Path(gt_dir)
    names = mat_file_names(split)
    main_path = gt_dir / names["face"]
    setting_paths = {setting: gt_dir / names[setting] for setting in SETTINGS}
    for path in (main_path, *setting_paths.values()):
        if not path.is_file():
            raise FileNotFoundError(
                f"WIDER FACE ground truth file {path} not found; --ground-truth must be the folder holding "
                f"wider_face_{split}.mat and wider_{{easy,medium,hard}}_{split}.mat (the official eval_tools/ground_truth/)"
            )

    main = _read_mat(scipy.io, main_path, ("event_list", "file_list", "face_bbx_list"))
    events = [_mat_string(cell) for cell in main["event_list"].reshape(-1)]
    file_lists = [[_mat_string(cell) for cell in files.reshape(-1)] for files in main["file_list"].reshape(-1)]
    box_lists = _per_event(main, "face_bbx_list", main_path, file_lists)
    label_fields = [f"{attribute}_label_list" for attribute in ATTRIBUTES]
    present = [name for name in label_fields if name in main]
    if present and len(present) != len(label_fields):
        missing = ", ".join(name for name in label_fields if name not in main)
        raise ValueError(f"{main_path}: has {', '.join(present)} but not {missing}: the attribute lists come "
                         f"all six or none; {_OFFICIAL}")
    label_lists = {attribute: _per_event(main, f"{attribute}_label_list", main_path, file_lists)
                   for attribute in ATTRIBUTES} if present else None

    keep_lists: dict[str, list[list[np.ndarray]]] = {}
    for setting, path in setting_paths.items():
        mat = _read_mat(scipy.io, path, ("event_list", "file_list", "gt_list"))
        setting_files = [[_mat_string(cell) for cell in files.reshape(-1)] for files in mat["file_list"].reshape(-1)]
        setting_events = [_mat_string(cell) for cell in mat["event_list"].reshape(-1)]
        if setting_events != events or setting_files != file_lists:
            raise ValueError(f"{path} lists other images (or another order) than {main_path}: the four files "
                             f"must come from one release; {_OFFICIAL}")
        keep_lists[setting] = _per_event(mat, "gt_list", path, file_lists)

    flat_events, flat_names, flat_boxes = [], [], []
    flat_keep: dict[str, list[np.ndarray]] = {setting: [] for setting in SETTINGS}
    flat_labels: dict[str, list[np.ndarray]] = {attribute: [] for attribute in ATTRIBUTES}
    for e, event in enumerate(events):
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
            if label_lists is not None:
                for attribute in ATTRIBUTES:
                    flat_labels[attribute].append(np.asarray(label_lists[attribute][e][j]).reshape(-1))
    try:
        return ground_truth_from_arrays(flat_events, flat_names, flat_boxes, flat_keep,
                                        flat_labels if label_lists is not None else None)
    except ValueError as error:
        raise ValueError(f"{gt_dir}: {error}; {_OFFICIAL}") from None


def ground_truth_mat_files(ground_truth: WiderGroundTruth, *, split: str = "val") -> dict[str, bytes]:
    """The official `.mat` files of `ground_truth`, as file name -> bytes (see the module docstring).

    Images are grouped by event in order of first appearance. The attribute label lists are written
    when the ground truth carries them, into every file as the official release does. The bytes
    depend on the ground truth only: the same ground truth always gives the same files.
    """
    events: dict[str, list[GroundTruthImage]] = {}
    for image in ground_truth.images:
        events.setdefault(image.event, []).append(image)
    groups = list(events.values())

    def nested(per_image) -> np.ndarray:
        return _cell([_cell([per_image(image) for image in images]) for images in groups])

    face = {
        "event_list": _cell([np.array([event]) for event in events]),
        "file_list": nested(lambda image: np.array([image.name])),
        "face_bbx_list": nested(lambda image: image.boxes.astype(np.int32).reshape(-1, 4)),
    }
    if ground_truth.has_attributes:
        for attribute in ATTRIBUTES:
            face[f"{attribute}_label_list"] = nested(
                lambda image, a=attribute: image.attributes[a].astype(np.uint8).reshape(-1, 1))
    names = mat_file_names(split)
    files = {names["face"]: _mat_bytes(face)}
    for setting in ground_truth.settings:
        def gt_list(image: GroundTruthImage, s: str = setting) -> np.ndarray:
            dtype = np.uint8 if len(image.boxes) <= 255 else np.uint16 if len(image.boxes) <= 65535 else np.uint32
            return (image.keep[s] + 1).astype(dtype).reshape(-1, 1)

        files[f"wider_{setting}_{split}.mat"] = _mat_bytes({**face, "gt_list": nested(gt_list)})
    return files


def save_ground_truth(ground_truth: WiderGroundTruth, gt_dir: str | Path, *, split: str = "val") -> Path:
    """Write `ground_truth` as the official `.mat` files that `load_ground_truth` reads; returns `gt_dir`.

    Each file is written under a temporary name and renamed, so a reader never sees half a file.
    """
    gt_dir = Path(gt_dir)
    gt_dir.mkdir(parents=True, exist_ok=True)
    for name, data in ground_truth_mat_files(ground_truth, split=split).items():
        _write_atomically(gt_dir / name, data)
    return gt_dir


def _write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it to `path`."""
    descriptor, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cell(items: list) -> np.ndarray:
    """A MATLAB column cell array [n, 1] holding `items` as they are (no numpy broadcasting)."""
    out = np.empty((len(items), 1), dtype=object)
    for i, item in enumerate(items):
        out[i, 0] = item
    return out


def _mat_bytes(variables: dict[str, np.ndarray]) -> bytes:
    """A compressed MATLAB 5 file of `variables`, byte-identical for identical contents."""
    import scipy.io

    buffer = io.BytesIO()
    scipy.io.savemat(buffer, variables, do_compression=True)
    return MAT_HEADER.ljust(116) + buffer.getvalue()[116:]


def _read_mat(scipy_io, path: Path, fields: Sequence[str]) -> dict:
    try:
        mat = scipy_io.loadmat(str(path))
    except (ValueError, OSError, NotImplementedError) as error:
        raise ValueError(f"{path}: not a readable MATLAB file ({error}); {_OFFICIAL}") from error
    missing = [name for name in fields if name not in mat]
    if missing:
        raise ValueError(f"{path}: missing variable(s) {', '.join(missing)}; {_OFFICIAL}")
    return mat


def _per_event(mat: dict, field: str, path: Path, file_lists: list[list[str]]) -> list[list[np.ndarray]]:
    """`mat[field]` as per event a list of per-image arrays, checked against the file list's shape."""
    per_event = [list(cell.reshape(-1)) for cell in mat[field].reshape(-1)]
    if len(per_event) != len(file_lists):
        raise ValueError(f"{path}: {field} has {len(per_event)} events, file_list {len(file_lists)}; {_OFFICIAL}")
    for e, (cells, files) in enumerate(zip(per_event, file_lists)):
        if len(cells) != len(files):
            raise ValueError(f"{path}: {field} of event {e + 1} has {len(cells)} entries for {len(files)} files; "
                             f"{_OFFICIAL}")
    return per_event


def _mat_string(cell: np.ndarray) -> str:
    """A MATLAB char array as loaded by scipy (a 1-element str array) -> str."""
    value = np.asarray(cell).reshape(-1)
    return str(value[0]) if value.size else ""
