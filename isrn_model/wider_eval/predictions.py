"""Predictions in the official WIDER FACE submission format.

One text file per image, `<pred_dir>/<event>/<image>.txt`:

    0_Parade_marchingband_1_465     <- line 1: the image name (not checked, as in the official tool)
    2                               <- line 2: the number of boxes
    345.0 211.0 4.0 4.0 0.98        <- x y w h score, pixels, one box per line
    331 126 3 3 0.5

An image without a file has no detections (the official tool does the same). Unlike the official
tool, which silently drops a malformed file, a malformed file raises `ValueError` naming the file
and line.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from isrn_model.wider_eval.ground_truth import ImageKey

Detections = dict[ImageKey, np.ndarray]
"""(event, image name) -> float64 array [N, 5] of (x, y, w, h, score)."""


def read_prediction_file(path: str | Path) -> np.ndarray:
    """One prediction file -> float64 array [N, 5] of (x, y, w, h, score), in file order.

    Numbers may be separated by any run of spaces, tabs or commas; blank lines are skipped.

    Raises:
        ValueError: a missing count line, a box line without exactly five numbers, a number that
            does not parse or is not finite, or a count that differs from the number of box lines;
            the message names the file and the 1-based line.
    """
    path = Path(path)
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise ValueError(f"{path}: expected the image name on line 1 and the box count on line 2")
    try:
        count = float(lines[1].strip())  # "12" or "12.0", as MATLAB's str2num reads it
    except ValueError:
        count = -1.0
    if count < 0 or count != int(count):
        raise ValueError(f"{path}, line 2: expected the box count, got {lines[1].strip()!r}")
    count = int(count)

    body = lines[2:]
    if any("," in line for line in body):
        body = [line.replace(",", " ") for line in body]
    rows = [tokens for tokens in (line.split() for line in body) if tokens]  # blank lines skipped
    boxes = None
    if rows:
        try:
            boxes = np.array(rows, dtype=np.float64)  # fails on ragged rows or a token that is no number
        except ValueError:
            pass
    if rows and (boxes is None or boxes.shape[1] != 5 or not np.all(np.isfinite(boxes))):
        _raise_on_bad_line(path, lines)
    if len(rows) != count:
        raise ValueError(f"{path}: line 2 says {count} boxes but the file has {len(rows)} box lines")
    return boxes if rows else np.zeros((0, 5), np.float64)


def _raise_on_bad_line(path: Path, lines: list[str]) -> None:
    """The slow path of `read_prediction_file`: find the first bad box line and name it."""
    for number, line in enumerate(lines[2:], start=3):
        tokens = line.replace(",", " ").split()
        if tokens and len(tokens) != 5:
            raise ValueError(f"{path}, line {number}: expected 5 numbers (x y w h score), got {len(tokens)}: {line.strip()!r}")
        try:
            finite = all(np.isfinite(float(token)) for token in tokens)
        except ValueError:
            finite = False
        if not finite:
            raise ValueError(f"{path}, line {number}: expected 5 finite numbers, got {line.strip()!r}")
    raise AssertionError(f"{path}: no bad line found")  # internal: called only when one exists


def read_predictions(pred_dir: str | Path) -> Detections:
    """Every `<pred_dir>/<event>/<image>.txt` -> {(event, image): array [N, 5] of (x, y, w, h, score)}.

    Files outside an event folder and files not ending in `.txt` are ignored.

    Raises:
        FileNotFoundError: `pred_dir` is not a folder.
        ValueError: a malformed file (see `read_prediction_file`).
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"predictions folder {pred_dir} not found (expected <dir>/<event>/<image>.txt)")
    detections: Detections = {}
    for event_dir in sorted(p for p in pred_dir.iterdir() if p.is_dir()):
        for path in sorted(event_dir.glob("*.txt")):
            detections[(event_dir.name, path.stem)] = read_prediction_file(path)
    return detections


def write_predictions(pred_dir: str | Path, detections: Mapping[ImageKey, np.ndarray], *, overwrite: bool = False) -> Path:
    """Write `detections` in the submission format, atomically.

    The files are written into a temporary folder beside `pred_dir`, which is renamed to `pred_dir`
    at the end, so a reader never sees half a set. Boxes are written in the given order with
    Python's shortest round-trip float repr, so reading them back gives the same numbers.

    Args:
        pred_dir: the folder to create.
        detections: (event, image name) -> array [N, 5] of (x, y, w, h, score); N may be 0.
        overwrite: replace an existing `pred_dir` (otherwise `FileExistsError`).

    Returns:
        `pred_dir` as a Path.
    """
    pred_dir = Path(pred_dir)
    if pred_dir.exists() and not overwrite:
        raise FileExistsError(f"{pred_dir} exists; pass overwrite=True to replace it")
    arrays = {key: _as_detections(key, boxes) for key, boxes in detections.items()}
    pred_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{pred_dir.name}.tmp-", dir=pred_dir.parent))
    try:
        for (event, name), boxes in arrays.items():
            event_dir = tmp_dir / event
            event_dir.mkdir(exist_ok=True)
            lines = [name, str(len(boxes))]
            lines.extend(_ROW_FORMAT % tuple(row) for row in boxes.tolist())
            (event_dir / f"{name}.txt").write_text("\n".join(lines) + "\n")
        if pred_dir.exists():
            # A non-empty folder cannot be replaced in one rename: move the old one aside first.
            old_dir = pred_dir.parent / f".{pred_dir.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(pred_dir, old_dir)
            os.rename(tmp_dir, pred_dir)
            shutil.rmtree(old_dir, ignore_errors=True)
        else:
            os.rename(tmp_dir, pred_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return pred_dir


_ROW_FORMAT = "%r %r %r %r %r"  # shortest round-trip repr: reading back gives the same float64


def _as_detections(key: ImageKey, boxes: np.ndarray) -> np.ndarray:
    event, name = key
    if not event or not name or "/" in event or "/" in name:
        raise ValueError(f"image key {key!r} must be (event, image name) without slashes")
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 5), np.float64)
    if array.ndim != 2 or array.shape[1] != 5:
        raise ValueError(f"detections of {event}/{name} must be an array [N, 5] of (x, y, w, h, score); got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"detections of {event}/{name} contain a NaN or infinite value")
    return array
