"""Generated WIDER-format data sets: drawn people, textured with real faces, on real photographs.

    isrn data synth --out /tmp/wider-synth --train 400 --val 100 --seed 0

Writes the official layout (`data_shards.wider_layout`) so the reader, the shard writer, training
and the official metric run on it unchanged:

    WIDER_{train,val[,test]}/images/<event>/<image>.jpg
    wider_face_split/wider_face_{train,val}_bbx_gt.txt, wider_face_test_filelist.txt,
                     wider_face_val.mat
    ground_truth/wider_face_val.mat, wider_{easy,medium,hard}_val.mat   (gt_list per setting)

Each face is a head-and-shoulders person drawn at the size it is pasted (`data_shards.synth_person`:
skin tones, one light, hair or a cap, ears, neck and shirt, features sharp at that size) with one
of the 100 real LFW faces shipped with scikit-image (`skimage.data.lfw_subset()`, 25x25 grey) as a
faint texture of its skin: identities 0-79 for train/test, 80-99 for val. The face box goes from
hairline to chin, cheek to cheek, 8 to ~320 px wide (box h = 1.2 w). People are pasted onto a
random crop of one of scikit-image's photographs (people-free ones: coffee, chelsea, rocket,
hubble, ...; `astronaut` and `camera` contain faces and are excluded: they are the held-out check
of bench/heldout_photos.py), smaller ones first, every body before every head, so a body never
hides a face. `SynthConfig.faces = "lfw"` pastes the tinted LFW crop in a soft ellipse instead (the
generator before people were drawn).

What is done to a face sets its flags, and nothing else does:
    blur 1/2          Gaussian blur of the whole person, sigma = 0.03 w + 0.5 / 0.08 w + 1
    illumination 1    gain of the whole person x0.25-0.45 (dark) or x1.8-2.5 (blown out)
    occlusion 1/2     a patch of another photo covers 15-35% / 45-70% of the box
    pose 1            in-plane rotation by 25-45 degrees; the box is the rotated face's extent
    invalid 1         "unrecognisable": blur sigma 0.4 w and 80% covered (also blur 2, occlusion 2)
    expression        always 0 (no expression change is rendered)
Images with 0 faces (annotated with the all-zero line) occur at `empty_prob`; train also gets rare
degenerate annotations (w = 0, invalid 1, nothing drawn) at `degenerate_prob`, as real WIDER has.

Settings: the height rule of `wider_layout.face_settings`, which reproduces the official val lists
(real WIDER defines them by the detection rate of EdgeBox); invalid and degenerate faces never count:
    hard    h >= 10 px
    medium  h >= 30 px
    easy    h >= 50 px
Everything is a function of (seed, split, image index): deterministic, order-independent.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from data_shards.config import SynthConfig
from data_shards.synth_person import Person, Template, render_person
from data_shards.wider_layout import Face, ImageRecord, face_settings, format_bbx_gt
from isrn_model.wider_eval import ATTRIBUTES, SETTINGS, WiderGroundTruth, ground_truth_from_arrays, ground_truth_mat_files

log = logging.getLogger(__name__)

EVENTS = (
    "0--Parade", "1--Handshaking", "2--Demonstration", "3--Riot", "4--Dancing", "5--Car_Accident",
    "6--Funeral", "7--Cheering", "8--Election_Campain", "9--Press_Conference", "10--People_Marching",
    "11--Meeting", "12--Group", "13--Interview", "14--Traffic", "15--Stock_Market",
    "16--Award_Ceremony", "17--Ceremony", "18--Concerts", "19--Couple", "20--Family_Group",
    "21--Festival", "22--Picnic", "23--Shoppers", "24--Soldier_Firing", "25--Soldier_Patrol",
    "26--Soldier_Drilling", "27--Spa", "28--Sports_Fan", "29--Students_Schoolkids", "30--Surgeons",
    "31--Waiter_Waitress", "32--Worker_Laborer", "33--Running", "34--Baseball", "35--Basketball",
    "36--Football", "37--Soccer", "38--Tennis", "39--Ice_Skating", "40--Gymnastics", "41--Swimming",
    "42--Car_Racing", "43--Row_Boat", "44--Aerobics", "45--Balloonist", "46--Jockey",
    "47--Matador_Bullfighter", "48--Parachutist_Paratrooper", "49--Greeting",
    "50--Celebration_Or_Party", "51--Dresses", "52--Photographers", "53--Raid", "54--Rescue",
    "55--Sports_Coach_Trainer", "56--Voter", "57--Angler", "58--Hockey", "59--people--driving--car",
    "61--Street_Battle",
)  # the 61 WIDER events (60 does not exist)

BACKGROUNDS = (
    "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
    "brick", "grass", "gravel", "clock", "coins", "moon", "cell", "page",
)  # skimage.data photographs and textures without human faces

_SPLIT_IDS = {"train": 1, "val": 2, "test": 3}
_FACE_ASPECT = 1.2  # box h / w; WIDER boxes are taller than wide (ISRN anchors use 1.25)
_SKIN_TONES_RGB = np.array(
    [(255, 224, 196), (241, 194, 160), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 58, 38)],
    dtype=np.float32,
)


@lru_cache(maxsize=1)
def _lfw_faces() -> np.ndarray:
    import skimage.data

    return (skimage.data.lfw_subset()[:100] * 255.0).astype(np.float32)  # first 100 are faces


@lru_cache(maxsize=1)
def _backgrounds() -> tuple[np.ndarray, ...]:
    import skimage.data

    out = []
    for name in BACKGROUNDS:
        try:
            img = getattr(skimage.data, name)()
        except Exception:  # an image that needs a download: skip it
            log.debug("background %s unavailable", name)
            continue
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        out.append(np.ascontiguousarray(img[:, :, :3][:, :, ::-1]))  # RGB -> BGR for OpenCV
    return tuple(out)


def _identities(split: str) -> np.ndarray:
    return np.arange(80, 100) if split == "val" else np.arange(0, 80)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    sources = _backgrounds()

    def one() -> np.ndarray:
        src = sources[rng.integers(len(sources))]
        sh, sw = src.shape[:2]
        frac = rng.uniform(0.4, 1.0)
        ch, cw = max(8, int(sh * frac)), max(8, int(min(sw, sh * frac * width / height)))
        y0, x0 = rng.integers(0, sh - ch + 1), rng.integers(0, sw - cw + 1)
        img = cv2.resize(src[y0 : y0 + ch, x0 : x0 + cw], (width, height), interpolation=cv2.INTER_LINEAR)
        if rng.random() < 0.5:
            img = img[:, ::-1]
        gains = rng.uniform(0.7, 1.3, size=3).astype(np.float32)
        return img.astype(np.float32) * gains + rng.uniform(-30, 30)

    img = one()
    if rng.random() < 0.4:  # blend a second source for clutter
        img = 0.5 * img + 0.5 * one()
    return np.clip(img, 0, 255)


def _render_face(rng: np.random.Generator, identity: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """A tinted BGR face (h x w x 3, float32) and its soft elliptical alpha mask (h x w): `faces: lfw`."""
    gray = _lfw_faces()[identity]
    if rng.random() < 0.5:
        gray = gray[:, ::-1]
    interp = cv2.INTER_AREA if w < 25 else cv2.INTER_CUBIC
    gray = cv2.resize(np.ascontiguousarray(gray), (w, h), interpolation=interp)
    tone = _SKIN_TONES_RGB[rng.integers(len(_SKIN_TONES_RGB))][::-1] / 255.0  # BGR
    face = gray[:, :, None] * tone[None, None, :] * rng.uniform(1.0, 1.5)
    # Ellipse inscribed in the box, alpha falling from 1 to 0 over the outer ~12% of the radius.
    ys = (np.arange(h, dtype=np.float32) + 0.5 - h / 2.0) / (h / 2.0)
    xs = (np.arange(w, dtype=np.float32) + 0.5 - w / 2.0) / (w / 2.0)
    radius = np.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2)
    mask = np.clip((1.0 - radius) / 0.12 + 0.5, 0.0, 1.0).astype(np.float32)
    return np.clip(face, 0, 255), mask


TEMPLATE_FACE_WIDTH = 96
"""Faces at most this wide are shrunk from people drawn once per split at this width (area averaging
keeps them as sharp as drawing them at their size, at a fraction of the cost); wider faces are drawn
at their own size."""


@lru_cache(maxsize=4)
def _templates(seed: int, split: str, count: int) -> tuple[Template, ...]:
    """The split's `count` people drawn at TEMPLATE_FACE_WIDTH, each from its own seeded generator
    and one of the split's LFW identities as texture (a pure function of its arguments)."""
    identities = _identities(split)
    out = []
    for i in range(count):
        rng = np.random.default_rng([seed, 11, _SPLIT_IDS[split], i])
        texture = _lfw_faces()[identities[i % len(identities)]]
        if rng.random() < 0.5:
            texture = texture[:, ::-1]
        w = TEMPLATE_FACE_WIDTH
        out.append(Template.of(render_person(rng, w, int(round(w * _FACE_ASPECT)), texture)))
    return tuple(out)


def _render(rng: np.random.Generator, split: str, seed: int, config: SynthConfig, w: int, h: int) -> Person:
    """The sprite of one face whose box is w x h, as `config.faces` asks."""
    identity = int(rng.choice(_identities(split)))
    if config.faces == "lfw":
        face, mask = _render_face(rng, identity, w, h)
        return Person(face, mask, mask, mask, (0, 0, w, h))
    if w <= TEMPLATE_FACE_WIDTH and h <= int(round(TEMPLATE_FACE_WIDTH * _FACE_ASPECT)):
        templates = _templates(seed, split, config.person_templates)
        person = templates[rng.integers(len(templates))].at(w, h, flip=bool(rng.random() < 0.5))
        gain = rng.uniform(0.9, 1.1, 3).astype(np.float32)  # each use of a person a little differently lit
        return replace(person, colour=np.clip(person.colour * gain, 0, 255))
    texture = _lfw_faces()[identity]
    if rng.random() < 0.5:
        texture = texture[:, ::-1]
    return render_person(rng, w, h, texture)


def _rotate(person: Person, angle: float) -> Person:
    """`person` turned in-plane by `angle` degrees about its face's centre; the box is the turned
    face ellipse's extent."""
    h, w = person.face_mask.shape
    fx, fy, fw, fh = person.box
    cx, cy = fx + fw / 2.0, fy + fh / 2.0
    side = 2 * int(math.ceil(math.hypot(max(cx, w - cx), max(cy, h - cy)))) + 2  # holds every corner
    m = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
    m[:, 2] += (side / 2.0 - cx, side / 2.0 - cy)

    def turn(a: np.ndarray) -> np.ndarray:
        return cv2.warpAffine(a, m, (side, side), flags=cv2.INTER_LINEAR)

    face_mask = turn(person.face_mask)
    ys, xs = np.nonzero(face_mask > 0.5)
    box = (int(xs.min()), int(ys.min()), int(xs.max() + 1 - xs.min()), int(ys.max() + 1 - ys.min()))
    return Person(turn(person.colour), turn(person.body_alpha), turn(person.head_alpha), face_mask, box)


def _extent(alpha: np.ndarray, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of where `alpha` > 0.5, widened to hold `box` (x, y, w, h)."""
    ys, xs = np.nonzero(alpha > 0.5)
    x, y, w, h = box
    if len(xs) == 0:
        return x, y, x + w, y + h
    return min(int(xs.min()), x), min(int(ys.min()), y), max(int(xs.max()) + 1, x + w), max(int(ys.max()) + 1, y + h)


def _paste(image: np.ndarray, colour: np.ndarray, alpha: np.ndarray, x: int, y: int, *, to_bottom: bool = False) -> None:
    """Alpha-blend a sprite whose top-left corner lands at (x, y), clipped to the image, in place.

    to_bottom: the sprite's last row goes on down to the image's bottom edge (a body continues below
    the sprite instead of ending in mid-air)."""
    H, W = image.shape[:2]
    h, w = alpha.shape
    x0, x1 = max(0, x), min(W, x + w)
    if x0 >= x1:
        return
    y0, y1 = max(0, y), min(H, y + h)
    if y0 < y1:
        region = image[y0:y1, x0:x1]
        region += alpha[y0 - y : y1 - y, x0 - x : x1 - x, None] * (colour[y0 - y : y1 - y, x0 - x : x1 - x] - region)
    if to_bottom and y + h < H:
        below = image[max(0, y + h) :, x0:x1]
        below += alpha[-1, x0 - x : x1 - x, None] * (colour[-1, x0 - x : x1 - x] - below)


def _occlude(rng: np.random.Generator, image: np.ndarray, box: tuple[int, int, int, int], fraction: float) -> None:
    """Cover `fraction` of the box with a band of another photo, from a random side, in place."""
    x, y, w, h = box
    side = rng.integers(4)
    if side < 2:  # from the bottom or the top: the usual hand / scarf / hat occluders
        bh = max(1, round(h * fraction))
        rect = (x, y + h - bh, w, bh) if side == 0 else (x, y, w, bh)
    else:
        bw = max(1, round(w * fraction))
        rect = (x + w - bw, y, bw, h) if side == 2 else (x, y, bw, h)
    rx, ry, rw, rh = rect
    patch = _background(rng, max(rw, 8), max(rh, 8))[:rh, :rw]
    image[ry : ry + rh, rx : rx + rw] = patch


def _place(rng: np.random.Generator, heads: list[tuple[int, int, int, int]], face: tuple[int, int, int, int],
           head: tuple[int, int, int, int], W: int, H: int) -> tuple[int, int] | None:
    """Top-left of a sprite that puts its face box (x, y, w, h in the sprite) inside the image and its
    head (x0, y0, x1, y1 in the sprite) clear of every head placed (image xyxy); None after 30 tries."""
    fx, fy, fw, fh = face
    for _ in range(30):
        x, y = int(rng.integers(0, W - fw + 1)) - fx, int(rng.integers(0, H - fh + 1)) - fy
        hx0, hy0, hx1, hy1 = x + head[0], y + head[1], x + head[2], y + head[3]
        if all(hx1 <= bx0 or bx1 <= hx0 or hy1 <= by0 or by1 <= hy0 for bx0, by0, bx1, by1 in heads):
            return x, y
    return None


def generate_image(split: str, index: int, seed: int, config: SynthConfig = SynthConfig()) -> tuple[np.ndarray, list[Face]]:
    """One BGR uint8 image and its faces, a pure function of (split, index, seed).

    People are pasted in two passes, smaller (farther) first: every body, then every head, so a
    body never hides a face and a face's attribute labels stay what was done to it.
    """
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    W = config.image_width
    H = int(round(W * rng.uniform(0.56, 1.0) / 2) * 2)
    image = _background(rng, W, H)

    regime = rng.random()
    if regime < config.empty_prob:
        n, lo, hi = 0, 0, 0
    elif regime < 0.45:  # portraits and small groups
        n, lo, hi = int(rng.integers(1, 4)), 24, config.max_face
    elif regime < 0.8:  # groups
        n, lo, hi = int(rng.integers(4, 13)), 12, 96
    else:  # crowds
        n, lo, hi = int(rng.integers(15, 51)), config.min_face, 40
    hi = min(hi, int(0.8 * min(W, H) / _FACE_ASPECT))
    lo = max(config.min_face, min(lo, hi))

    people: list[tuple[Person, int, int, Face, float]] = []  # sprite, its position, face, occluded share
    heads: list[tuple[int, int, int, int]] = []
    for _ in range(n):
        w = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi + 1e-6)))))
        w = max(config.min_face, w)
        h = int(round(w * _FACE_ASPECT))
        blur = int(rng.choice(3, p=(0.7, 0.2, 0.1)))
        occlusion = int(rng.choice(3, p=(0.8, 0.13, 0.07)))
        illumination = int(rng.random() < 0.08)
        pose = int(rng.random() < 0.08)
        invalid = int(rng.random() < 0.03)
        person = _render(rng, split, seed, config, w, h)
        if pose:
            person = _rotate(person, float(rng.uniform(25, 45) * rng.choice((-1, 1))))
        fx, fy, fw, fh = person.box
        head = _extent(person.head_alpha, person.box)
        if fw > W or fh > H or (pos := _place(rng, heads, person.box, head, W, H)) is None:
            continue
        x, y = pos
        colour, body_alpha, head_alpha = person.colour, person.body_alpha, person.head_alpha
        if illumination:
            colour = colour * (rng.uniform(0.25, 0.45) if rng.random() < 0.5 else rng.uniform(1.8, 2.5))
        if invalid:
            blur, occlusion = 2, 2
            sigma = 0.4 * fw
        else:
            sigma = {0: 0.0, 1: 0.03 * fw + 0.5, 2: 0.08 * fw + 1.0}[blur]
        if sigma > 0:  # out of focus or moving: the whole person, edges included
            colour, body_alpha, head_alpha = (cv2.GaussianBlur(a, (0, 0), sigma) for a in (colour, body_alpha, head_alpha))
        fraction = 0.0
        if occlusion:
            fraction = 0.8 if invalid else rng.uniform(*((0.15, 0.35) if occlusion == 1 else (0.45, 0.7)))
        heads.append((x + head[0], y + head[1], x + head[2], y + head[3]))
        people.append((Person(colour, body_alpha, head_alpha, person.face_mask, person.box), x, y,
                       Face(x + fx, y + fy, fw, fh, blur, 0, illumination, invalid, occlusion, pose), fraction))

    faces = [face for _, _, _, face, _ in people]
    by_size = sorted(people, key=lambda p: p[3].w)
    for person, x, y, _, _ in by_size:
        _paste(image, person.colour, person.body_alpha, x, y, to_bottom=True)
    for person, x, y, face, fraction in by_size:
        _paste(image, person.colour, person.head_alpha, x, y)
        if fraction:
            _occlude(rng, image, (face.x, face.y, face.w, face.h), fraction)

    if split == "train" and rng.random() < config.degenerate_prob:
        x, y = int(rng.integers(0, W)), int(rng.integers(0, H))
        faces.append(Face(x, y, 0, int(rng.integers(1, 10)), 2, 0, 0, 1, 0, 0))
    return np.clip(image, 0, 255).astype(np.uint8), faces


def _image_path(split: str, index: int, seed: int) -> tuple[str, str]:
    event = EVENTS[int(np.random.default_rng([seed, 9, _SPLIT_IDS[split], index]).integers(len(EVENTS)))]
    number, name = event.split("--", 1)
    return event, f"{number}_{name}_{name}_{number}_{index}"


def generate_split(root: str | Path, split: str, count: int, seed: int, config: SynthConfig = SynthConfig()) -> list[ImageRecord]:
    """Write `count` images of `split` under `root` and return their records (annotation order)."""
    from tqdm import tqdm

    root = Path(root)
    records = []
    for index in tqdm(range(count), desc=f"synth {split}", unit="img", disable=None):
        event, name = _image_path(split, index, seed)
        image, faces = generate_image(split, index, seed, config)
        quality = int(np.random.default_rng([seed, 7, _SPLIT_IDS[split], index]).integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {split} image {index}")
        path = root / f"WIDER_{split}" / "images" / event / f"{name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg.tobytes())
        records.append(ImageRecord(f"{event}/{name}.jpg", tuple(faces)))
    # WIDER's files list images grouped by event; keep that order.
    records.sort(key=lambda r: (EVENTS.index(r.event), r.path))
    return records


# ---------------------------------------------------------------- .mat files


def val_ground_truth(records: list[ImageRecord]) -> WiderGroundTruth:
    """The val records as the metric's ground truth, for its `.mat` files (`ground_truth_mat_files`).

    Events in MATLAB's `dir` order (lexicographic), as in the official files, images in record
    order; the keep lists follow `face_settings`; each face's six labels are what was done to it.
    """
    by_event: dict[str, list[ImageRecord]] = {}
    for rec in records:
        by_event.setdefault(rec.event, []).append(rec)
    ordered = [rec for event in sorted(by_event) for rec in by_event[event]]
    return ground_truth_from_arrays(
        [rec.event for rec in ordered], [rec.name for rec in ordered],
        [np.array([f.xywh() for f in rec.faces], dtype=np.int32).reshape(-1, 4) for rec in ordered],
        {setting: [np.array([k for k, f in enumerate(rec.faces) if setting in face_settings(f)], dtype=np.int64)
                   for rec in ordered] for setting in SETTINGS},
        {name: [np.array([getattr(f, name) for f in rec.faces], dtype=np.uint8) for rec in ordered]
         for name in ATTRIBUTES},
    )


def write_val_mats(records: list[ImageRecord], *folders: Path) -> None:
    """`wider_face_val.mat` into every folder; the setting files into the one named `ground_truth`."""
    for name, data in ground_truth_mat_files(val_ground_truth(records)).items():
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            if name == "wider_face_val.mat" or folder.name == "ground_truth":
                (folder / name).write_bytes(data)


# ---------------------------------------------------------------- whole data set


def generate_dataset(root: str | Path, *, train: int, val: int, test: int = 0, seed: int = 0,
                     config: SynthConfig = SynthConfig()) -> dict[str, list[ImageRecord]]:
    """Write a complete WIDER-format data set under `root`; returns the records per split."""
    root = Path(root)
    split_dir = root / "wider_face_split"
    split_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, count in (("train", train), ("val", val)):
        records = generate_split(root, split, count, seed, config)
        (split_dir / f"wider_face_{split}_bbx_gt.txt").write_text(format_bbx_gt(records))
        out[split] = records
    write_val_mats(out["val"], split_dir, root / "ground_truth")
    test_records = [ImageRecord(r.path) for r in generate_split(root, "test", test, seed, replace(config))]
    (split_dir / "wider_face_test_filelist.txt").write_text("".join(f"{r.path}\n" for r in test_records))
    out["test"] = test_records
    return out
