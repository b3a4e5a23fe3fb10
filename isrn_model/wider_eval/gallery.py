"""A gallery of a detector's worst mistakes on WIDER FACE: faces it missed and its false positives.

    cases = gallery_cases(ground_truth, detections, keys=images.keys())   # pure: which faces and boxes
    save_gallery(cases, images, "gallery_epoch_003.jpg")                   # OpenCV: crops with labels

`gallery_cases` selects, for one setting (Hard by default), with the official matching
(`evaluate.match_faces`):
    misses            faces of the setting no detection matched (at any score), biggest first (box
                      height, then width): what the model does not find at all;
    false positives   detections the setting counts as false: matching no face, or a second box on a
                      face of the setting already found by a higher-scoring one; highest raw score
                      first. Images without faces are skipped, as the official tool skips them.
`save_gallery` crops each case from its image with some context, draws the box (misses orange, false
positives red) and writes under it what it is: size and size band, the face's non-typical
attributes, or the score. Only the images of the chosen cases are needed, so a training loop passes
the val images it holds (`keys=`) and a command line loads the images of the cases it got.
"""

from __future__ import annotations

import math
import os
import tempfile
import textwrap
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from isrn_model.wider_eval.evaluate import match_faces, sort_by_score
from isrn_model.wider_eval.ground_truth import ATTRIBUTE_VALUES, ATTRIBUTES, GroundTruthImage, ImageKey, WiderGroundTruth
from isrn_model.wider_eval.subsets import size_band

MISS = "miss"
FALSE_POSITIVE = "false positive"
_COLOURS = {MISS: (0, 165, 255), FALSE_POSITIVE: (0, 0, 255)}  # BGR: orange, red


@dataclass(frozen=True)
class GalleryCase:
    """One missed face or one false positive.

    Attributes:
        kind: `MISS` or `FALSE_POSITIVE`.
        key: the image, (event, name).
        box_xywh: (x, y, w, h) in pixels of the original image: the face (miss) or the detection.
        score: the detection's raw score (false positive); None for a miss.
        notes: the lines written under the crop (ASCII).
    """

    kind: str
    key: ImageKey
    box_xywh: tuple[float, float, float, float]
    score: float | None
    notes: tuple[str, ...]


def gallery_cases(
    ground_truth: WiderGroundTruth,
    detections: Mapping[ImageKey, np.ndarray],
    *,
    setting: str = "hard",
    keys: Collection[ImageKey] | None = None,
    misses: int = 12,
    false_positives: int = 12,
    float_iou: bool = False,
) -> list[GalleryCase]:
    """The `misses` biggest missed faces, then the `false_positives` highest-scoring false positives.

    Args:
        ground_truth: as for `evaluate`.
        detections: (event, name) -> float array [N, 5] of (x, y, w, h, raw score), pixels of the
            original image, as `evaluate` takes (`WiderFaceEvaluator.detections` gives them).
        setting: the setting whose faces count (a face outside it is neither missed nor hit).
        keys: only these images (e.g. the ones whose pixels the caller holds); None: every image.
        misses, false_positives: how many of each to return, at most.
        float_iou: match as the Python ports instead of the official int32 overlap.

    Raises:
        ValueError: an unknown setting or a malformed detection array (names the image).
    """
    ground_truth.keep_mask(setting)  # raises on an unknown setting
    wanted = None if keys is None else {(str(k[0]), str(k[1])) for k in keys}
    missed_faces: list[tuple[int, int, GroundTruthImage, int]] = []  # (h, w, image, face)
    wrong: list[tuple[float, ImageKey, np.ndarray, str]] = []  # (score, key, box, why)
    for image in ground_truth.images:
        if wanted is not None and image.key not in wanted:
            continue
        rows = detections.get(image.key)
        rows = np.zeros((0, 5)) if rows is None or np.size(rows) == 0 else np.asarray(rows, np.float64)
        if rows.ndim != 2 or rows.shape[1] != 5:
            raise ValueError(f"detections of {image.event}/{image.name} must be an array [N, 5] of (x, y, w, h, score); "
                             f"got shape {rows.shape}")
        if len(image.boxes) == 0:
            continue
        rows = sort_by_score(rows)
        face_of = match_faces(rows[:, :4], image.boxes, float_iou=float_iou) if len(rows) else np.zeros(0, np.int64)
        counted = np.zeros(len(image.boxes), bool)
        counted[image.keep[setting]] = True
        hits_counted = np.flatnonzero((face_of >= 0) & counted[np.maximum(face_of, 0)])
        _, first = np.unique(face_of[hits_counted], return_index=True)  # score order: the first hit finds the face
        duplicate = np.zeros(len(rows), bool)
        duplicate[hits_counted] = True
        duplicate[hits_counted[first]] = False
        for index in np.flatnonzero((face_of < 0) | duplicate)[:false_positives]:  # the image's best, in score order
            why = f"2nd box on face {face_of[index] + 1}" if duplicate[index] else "no face there"
            wrong.append((float(rows[index, 4]), image.key, rows[index, :4], why))
        found = np.zeros(len(image.boxes), bool)
        found[face_of[hits_counted]] = True
        for face in np.flatnonzero(counted & ~found):
            missed_faces.append((int(image.boxes[face, 3]), int(image.boxes[face, 2]), image, int(face)))
    missed_faces.sort(key=lambda item: (-item[0], -item[1]))  # stable: image then annotation order among ties
    wrong.sort(key=lambda item: -item[0])
    cases = [GalleryCase(MISS, image.key, tuple(float(v) for v in image.boxes[face]), None,
                         (f"missed {w}x{h} px", _face_notes(image, face)))
             for h, w, image, face in missed_faces[:misses]]
    cases += [GalleryCase(FALSE_POSITIVE, key, tuple(float(v) for v in box), score, (f"score {score:.3f}", why))
              for score, key, box, why in wrong[:false_positives]]
    return cases


def save_gallery(
    cases: list[GalleryCase],
    images: Mapping[ImageKey, np.ndarray],
    path: str | Path,
    *,
    scales: Mapping[ImageKey, float] | None = None,
    cell: int = 192,
    columns: int = 6,
    title: str | None = None,
) -> Path:
    """Draw `cases` as a grid of labelled crops (misses, then false positives) and save it to `path`.

    Args:
        cases: from `gallery_cases`.
        images: (event, name) -> BGR uint8 array [H, W, 3] (or grey [H, W]) of every case's image.
        path: the picture to write; its extension picks the format (.png, .jpg). Written under a
            temporary name, then renamed.
        scales: (event, name) -> image pixels per original pixel, for images held resized (e.g. a
            val batch's letterboxed tensors, cut to the image); default 1 for every image.
        cell: side of one crop, pixels.
        columns: crops per row.
        title: a line written above the grid.

    Raises:
        ValueError: an image of a case is missing (names it), or OpenCV cannot write `path`'s format.
    """
    import cv2

    path = Path(path)
    sections = [(kind, [case for case in cases if case.kind == kind]) for kind in (MISS, FALSE_POSITIVE)]
    heading = {MISS: "Missed faces, biggest first", FALSE_POSITIVE: "False positives, highest score first"}
    line_height, text_lines = 14, 3
    tile_h = cell + text_lines * line_height + 6
    bands: list[np.ndarray] = []
    if title:
        bands.append(_text_band(cv2, [title], columns * cell, 22, scale=0.55))
    for kind, chosen in sections:
        if not chosen:
            bands.append(_text_band(cv2, [f"{heading[kind]}: none"], columns * cell, 20))
            continue
        bands.append(_text_band(cv2, [heading[kind]], columns * cell, 20))
        rows = math.ceil(len(chosen) / columns)
        grid = np.full((rows * tile_h, columns * cell, 3), 24, np.uint8)
        for index, case in enumerate(chosen):
            if case.key not in images:
                raise ValueError(f"no image for {case.key[0]}/{case.key[1]} (a {case.kind} of the gallery): pass its "
                                 "pixels in images, or choose cases among the images held (gallery_cases(keys=...))")
            scale = 1.0 if scales is None else float(scales.get(case.key, 1.0))
            tile = _tile(cv2, images[case.key], case, scale, cell, text_lines, line_height)
            r, c = divmod(index, columns)
            grid[r * tile_h: r * tile_h + tile.shape[0], c * cell: c * cell + tile.shape[1]] = tile
        bands.append(grid)
    picture = np.concatenate(bands, axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(descriptor)
    try:
        if not cv2.imwrite(tmp, picture):
            raise ValueError(f"OpenCV cannot write {path}: use a .png or .jpg name")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _face_notes(image: GroundTruthImage, face: int) -> str:
    """'small, blur=heavy occlusion=partial': the size band and the attributes that are not typical."""
    band = size_band(np.array([image.boxes[face, 3]]))[0] or "under 10 px"
    if image.attributes is None:
        return band
    unusual = [f"{name}={ATTRIBUTE_VALUES[name][int(image.attributes[name][face])]}" for name in ATTRIBUTES
               if int(image.attributes[name][face]) != 0]
    return f"{band}, " + (" ".join(unusual) if unusual else "typical")


def _tile(cv2, image: np.ndarray, case: GalleryCase, scale: float, cell: int, text_lines: int, line_height: int) -> np.ndarray:
    """The crop around the case's box with context, the box drawn, fitted in cell x cell, notes below."""
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    x, y, w, h = (v * scale for v in case.box_xywh)
    margin = max(8.0, 0.5 * max(w, h))  # context: half the box on each side
    x0, y0 = math.floor(x - margin), math.floor(y - margin)
    x1, y1 = max(x0 + 1, math.ceil(x + w + margin)), max(y0 + 1, math.ceil(y + h + margin))
    crop = np.full((y1 - y0, x1 - x0, 3), 64, np.uint8)  # grey where the window leaves the image
    height, width = image.shape[:2]
    ix0, iy0, ix1, iy1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    if ix1 > ix0 and iy1 > iy0:
        crop[iy0 - y0: iy1 - y0, ix0 - x0: ix1 - x0] = image[iy0:iy1, ix0:ix1]
    factor = cell / max(crop.shape[:2])
    crop = cv2.resize(crop, (max(1, round(crop.shape[1] * factor)), max(1, round(crop.shape[0] * factor))),
                      interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
    top_left = (round((x - x0) * factor), round((y - y0) * factor))
    bottom_right = (round((x + w - x0) * factor), round((y + h - y0) * factor))
    cv2.rectangle(crop, top_left, bottom_right, _COLOURS[case.kind], 2)
    tile = np.full((cell + text_lines * line_height + 6, cell, 3), 24, np.uint8)
    tile[: crop.shape[0], : crop.shape[1]] = crop[:cell, :cell]
    lines = [line for note in case.notes for line in textwrap.wrap(note, max(8, cell // 6))]  # ~6 px a character
    for n, line in enumerate(lines[:text_lines]):
        cv2.putText(tile, line, (3, cell + (n + 1) * line_height), cv2.FONT_HERSHEY_SIMPLEX, 0.38,
                    (235, 235, 235), 1, cv2.LINE_AA)
    return tile


def _text_band(cv2, lines: list[str], width: int, height: int, *, scale: float = 0.45) -> np.ndarray:
    band = np.full((height * len(lines), width, 3), 48, np.uint8)
    for n, line in enumerate(lines):
        cv2.putText(band, line, (6, height * n + height - 6), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return band
