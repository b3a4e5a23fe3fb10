"""A head-and-shoulders person drawn at the size it is pasted, for the generated data sets.

    person = render_person(rng, w=96, h=115, texture=lfw_face)   # a sprite whose face box is 96 x 115

The generator (``data_shards.synth``) pastes these instead of bare face crops: a face that a
detector should learn is skin-coloured and lit from one side, sharp at its own size (features are
drawn at the pasted size, small faces supersampled, never a small crop blown up), and sits in a
head with hair and ears, on a neck and shoulders. The face box follows WIDER's annotation habit:
from the hairline to the chin and from cheek to cheek, ears and hair outside it.

Drawn, back to front: long hair behind the head, shoulders in a shirt with a neckline, neck, ears,
the head (an egg-shaped skin region shaded as an ellipsoid under one light), the hair on top (or a
cap, or none), eye sockets, eyebrows, eyes (sclera, iris, pupil, upper lid), nose shading and
nostrils, lips, and sometimes glasses, a moustache or a beard. An optional real face texture (a
25 px LFW crop) modulates the skin's brightness a little, so identities differ in more than colour.

Every choice comes from the ``rng`` passed in: the same generator state draws the same person.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

SKIN_TONES_BGR = np.array(
    [(183, 204, 236), (162, 189, 232), (140, 170, 222), (118, 150, 205), (96, 130, 190),
     (80, 112, 170), (64, 92, 146), (50, 72, 118), (38, 54, 92)], dtype=np.float32,
)  # light to dark skin, measured-looking reflectances (BGR)
HAIR_BGR = np.array(
    [(20, 20, 22), (28, 34, 44), (34, 50, 74), (48, 74, 112), (80, 120, 168), (150, 160, 170),
     (40, 60, 120)], dtype=np.float32,
)  # black, dark brown, brown, light brown, blond, grey, auburn
IRIS_BGR = np.array([(30, 50, 80), (20, 30, 45), (120, 100, 60), (70, 110, 80)], dtype=np.float32)
SUPERSAMPLE_MIN_WIDTH = 48
"""Faces narrower than this are drawn at a multiple of their size and shrunk with area averaging,
so eyes and lips one or two pixels wide are averaged as a camera would, not aliased."""
BODY_SCALE = 0.5
"""Bodies of faces at least twice SUPERSAMPLE_MIN_WIDTH wide are drawn at this scale and enlarged:
shoulders and shirts are smooth, and the body canvas is most of a large sprite's pixels."""


@dataclass(frozen=True)
class Person:
    """A drawn person, all arrays float32 over the same H x W sprite.

    colour: BGR [H, W, 3], 0..255. body_alpha: [H, W] everything drawn (shoulders, neck, hair,
    head); head_alpha: [H, W] the head alone (skin, ears, hair or cap on it), which the generator
    pastes over every body so no body hides a face; face_mask: [H, W] the face's ellipse (hairline to
    chin, cheek to cheek), whose extent is the annotated box. box: (x, y, w, h) the face box in sprite
    pixels.
    """

    colour: np.ndarray
    body_alpha: np.ndarray
    head_alpha: np.ndarray
    face_mask: np.ndarray
    box: tuple[int, int, int, int]


class _Canvas:
    """Painter's-algorithm canvas over the sprite rectangle [x0, x0 + width) x [y0, y0 + height),
    drawn at `ss` render pixels per sprite pixel (below 1 for large smooth shapes); shapes are given
    in sprite pixels."""

    def __init__(self, x0: int, y0: int, width: int, height: int, ss: float) -> None:
        self.x0, self.y0, self.ss, self.size = x0, y0, ss, (width, height)
        rh, rw = max(1, round(height * ss)), max(1, round(width * ss))
        self.colour = np.zeros((rh, rw, 3), np.float32)
        self.alpha = np.zeros((rh, rw), np.float32)
        # Sprite coordinates of each render pixel, as a column and a row (they broadcast).
        self.xs = np.arange(rw, dtype=np.float32) / ss + x0
        self.ys = (np.arange(rh, dtype=np.float32) / ss + y0)[:, None]

    def pts(self, points: np.ndarray) -> np.ndarray:
        """Sprite points [N, 2] → int32 render points (OpenCV's 3 fractional bits)."""
        p = (np.asarray(points, np.float64) - (self.x0, self.y0)) * self.ss * 8
        return np.round(p).astype(np.int32).reshape(-1, 1, 2)

    def ellipse(self, centre: tuple[float, float], axes: tuple[float, float]) -> np.ndarray:
        m = np.zeros(self.alpha.shape, np.uint8)
        c = self.pts(np.array([centre]))[0, 0]
        a = (max(1, round(axes[0] * self.ss * 8)), max(1, round(axes[1] * self.ss * 8)))
        cv2.ellipse(m, (int(c[0]), int(c[1])), a, 0, 0, 360, 255, -1, cv2.LINE_AA, 3)
        return m.astype(np.float32) / 255.0

    def polygon(self, points: np.ndarray) -> np.ndarray:
        m = np.zeros(self.alpha.shape, np.uint8)
        cv2.fillPoly(m, [self.pts(points)], 255, cv2.LINE_AA, 3)
        return m.astype(np.float32) / 255.0

    def stroke(self, points: np.ndarray, thickness: float) -> np.ndarray:
        m = np.zeros(self.alpha.shape, np.uint8)
        cv2.polylines(m, [self.pts(points)], False, 255, max(1, round(thickness * self.ss)), cv2.LINE_AA, 3)
        return m.astype(np.float32) / 255.0

    def blur(self, mask: np.ndarray, sigma: float) -> np.ndarray:
        """`mask` softened by `sigma` sprite pixels."""
        return cv2.GaussianBlur(mask, (0, 0), sigma * self.ss + 0.3)

    def paint(self, mask: np.ndarray, colour: np.ndarray) -> None:
        """Paint `colour` (BGR, or [H, W, 3] over the canvas) where `mask` (0..1) is set."""
        rows, cols = np.flatnonzero(mask.max(axis=1) > 0), np.flatnonzero(mask.max(axis=0) > 0)
        if len(rows) == 0:
            return
        roi = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)  # most shapes are small
        m = mask[roi][:, :, None]
        colour = colour[roi] if np.ndim(colour) == 3 else colour
        self.colour[roi] = self.colour[roi] * (1.0 - m) + m * colour
        np.maximum(self.alpha[roi], mask[roi], out=self.alpha[roi])

    def at_sprite_size(self) -> tuple[np.ndarray, np.ndarray]:
        """(colour, alpha) at one pixel per sprite pixel: area-averaged as a camera would when drawn
        larger, interpolated when drawn smaller."""
        if self.ss == 1:
            return self.colour, self.alpha
        interp = cv2.INTER_AREA if self.ss > 1 else cv2.INTER_LINEAR
        return (cv2.resize(self.colour, self.size, interpolation=interp),
                cv2.resize(self.alpha, self.size, interpolation=interp))


def _arc(cx: float, cy: float, half_width: float, bend: float, n: int = 12) -> np.ndarray:
    """Points of a parabola through (cx ± half_width, cy) whose middle is `bend` lower (negative: higher)."""
    t = np.linspace(-1.0, 1.0, n)
    return np.stack([cx + t * half_width, cy + bend * (1.0 - t**2)], axis=1)


def render_person(rng: np.random.Generator, w: int, h: int, texture: np.ndarray | None = None) -> Person:
    """Draw a person whose face box is `w` x `h` pixels (see the module docstring).

    texture: optional grey face image (float32 [n, n], 0..255) modulating the skin by up to ~±20 %.
    The body is drawn at the sprite's resolution (large smooth shapes), the head on its own canvas,
    supersampled when small; only the head's pixels pay for its shading and features.
    """
    if w < 1 or h < 1:
        raise ValueError(f"face box must be at least 1 x 1 px, got {w} x {h}")
    ss = max(1, math.ceil(SUPERSAMPLE_MIN_WIDTH / w))
    bx, by = w, int(math.ceil(0.45 * h))  # face box in the sprite: room for hair above, shoulders aside
    width, height = 3 * w, by + int(math.ceil(2.3 * h))
    cx, cy = bx + w / 2.0, by + 0.47 * h  # head centre: eyes sit a little above the box's middle

    skin = SKIN_TONES_BGR[rng.integers(len(SKIN_TONES_BGR))] * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    hair = HAIR_BGR[rng.integers(len(HAIR_BGR))] * np.float32(rng.uniform(0.8, 1.2))
    shirt = rng.uniform(20, 235, 3).astype(np.float32)
    light = np.array([rng.uniform(-0.7, 0.7), rng.uniform(-0.6, 0.2), 1.0])
    light /= np.linalg.norm(light)
    style = rng.choice(4, p=(0.5, 0.25, 0.12, 0.13))  # short hair, long hair, bald/shaved, cap
    volume = rng.uniform(1.04, 1.14)

    def side_light(cv: _Canvas) -> np.ndarray:
        """A linear fall-off along the light's image direction, [H, W, 1]."""
        return (1.0 + 0.25 * ((cv.xs - cx) / w * light[0] + (cv.ys - cy) / h * light[1]))[:, :, None]

    # The body, back to front: long hair behind, shoulders in a shirt with a neckline, the neck.
    body = _Canvas(0, 0, width, height, BODY_SCALE if w >= 2 * SUPERSAMPLE_MIN_WIDTH else 1.0)
    lit = side_light(body)
    if style == 1:
        body.paint(body.polygon(np.array([[cx - 0.62 * w, cy - 0.2 * h], [cx + 0.62 * w, cy - 0.2 * h],
                                          [cx + 0.7 * w, by + 1.45 * h], [cx - 0.7 * w, by + 1.45 * h]])),
                   hair * lit * 0.8)
    shoulder_w = w * rng.uniform(1.15, 1.45)
    top = by + h * rng.uniform(1.2, 1.35)
    torso = np.maximum(body.ellipse((cx, top + 0.45 * h), (shoulder_w, 0.5 * h)),
                       body.polygon(np.array([[cx - shoulder_w, top + 0.45 * h], [cx + shoulder_w, top + 0.45 * h],
                                              [cx + shoulder_w * 1.05, height + 1], [cx - shoulder_w * 1.05, height + 1]])))
    rh, rw = body.alpha.shape
    weave = cv2.resize(rng.normal(0, 1, (rh // 3 + 1, rw // 3 + 1)).astype(np.float32), (rw, rh),
                       interpolation=cv2.INTER_LINEAR)  # cloth's folds and weave, smoother than the skin
    body.paint(torso, shirt * lit * (1 + 0.05 * weave[:, :, None]))
    neckline = rng.uniform(0.2, 0.5) * h
    body.paint(body.polygon(np.array([[cx - 0.3 * w, top], [cx + 0.3 * w, top], [cx, top + neckline]])), skin * 0.85 * lit)
    neck = body.polygon(np.array([[cx - 0.25 * w, by + 0.75 * h], [cx + 0.25 * w, by + 0.75 * h],
                                  [cx + 0.28 * w, top + 0.1 * h], [cx - 0.28 * w, top + 0.1 * h]]))
    chin_shadow = np.clip((body.ys - (by + h)) / (0.3 * h), 0.0, 1.0)[:, :, None] * 0.3 + 0.55
    body.paint(neck, skin * chin_shadow * lit)

    # The head on its own canvas: ears, an egg-shaped head (narrower jaw) shaded as an ellipsoid.
    hx0, hy0 = int(math.floor(cx - 0.72 * w)), int(math.floor(cy - 0.72 * h))
    head = _Canvas(hx0, hy0, int(math.ceil(cx + 0.72 * w)) - hx0, int(math.ceil(by + 1.08 * h)) - hy0, ss)
    xs, ys = head.xs, head.ys
    hlit = side_light(head)
    for sign in (-1, 1):
        head.paint(head.ellipse((cx + sign * 0.49 * w, by + 0.5 * h), (0.09 * w, 0.15 * h)), skin * 0.85 * hlit)
    a, b = 0.5 * w, 0.55 * h
    jaw = rng.uniform(0.15, 0.3)
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    narrowing = 1.0 - jaw * np.clip(np.sin(t), 0, None) ** 2
    head_mask = head.polygon(np.stack([cx + a * np.cos(t) * narrowing, cy + b * np.sin(t)], axis=1))
    nx, ny = (xs - cx) / (a * 1.05), (ys - cy) / (b * 1.05)
    nz = np.sqrt(np.clip(1.0 - nx**2 - ny**2, 0.0, None))
    lambert = np.clip(nx * light[0] + ny * light[1] + nz * light[2], 0.0, None)
    shade = 0.45 + 0.65 * lambert
    if texture is not None:  # a real face's light and shade, kept to a modulation of the skin
        tex = cv2.resize(np.ascontiguousarray(texture), (w * ss, h * ss), interpolation=cv2.INTER_CUBIC)
        tex = 1.0 + rng.uniform(0.15, 0.35) * (np.clip(tex / max(float(tex.mean()), 1.0), 0.3, 1.7) - 1.0)
        fx0, fy0 = (bx - hx0) * ss, (by - hy0) * ss
        shade[fy0 : fy0 + h * ss, fx0 : fx0 + w * ss] *= tex
    pores = cv2.GaussianBlur(rng.normal(0, 1, shade.shape).astype(np.float32), (0, 0), 0.6 * ss)
    skin_img = skin * (shade * (1 + 0.03 * pores))[:, :, None]
    head.paint(head_mask, skin_img)

    # Hair on top of the head (hairline lower at the temples), a cap, or nothing.
    hairline = by + h * rng.uniform(0.04, 0.16)
    if style in (0, 1):
        outer = head.ellipse((cx, cy - 0.03 * h), (a * volume, b * volume))
        above = (ys < hairline + 0.22 * h * ((xs - cx) / a) ** 2).astype(np.float32)
        if style == 1:  # long: down the sides of the face as far as the ears
            above = np.maximum(above, ((np.abs(xs - cx) > 0.4 * w) & (ys < by + 0.45 * h)).astype(np.float32))
        strands = cv2.GaussianBlur(rng.normal(0, 1, shade.shape).astype(np.float32), (0, 0), sigmaX=0.3 * ss, sigmaY=1.5 * ss)
        head.paint(head.blur(outer * above, 0.5), hair * (0.6 + 0.5 * lambert + 0.15 * strands)[:, :, None])
    elif style == 3:
        cap = rng.uniform(20, 235, 3).astype(np.float32)
        crown = head.ellipse((cx, cy - 0.05 * h), (a * 1.06, b * 1.02)) * (ys < hairline + 0.03 * h)
        brim = head.ellipse((cx + rng.choice((-1, 1)) * 0.1 * w, hairline), (0.6 * w, 0.07 * h))
        head.paint(np.maximum(crown, brim), cap * (0.6 + 0.5 * lambert)[:, :, None])

    # The face's features, sizes in face widths.
    eye_y = by + h * rng.uniform(0.38, 0.45)
    eye_dx = w * rng.uniform(0.19, 0.23)
    eye_w, eye_h = 0.1 * w, 0.045 * w * rng.uniform(0.8, 1.2)
    iris = IRIS_BGR[rng.integers(len(IRIS_BGR))]
    for sign in (-1, 1):
        ex = cx + sign * eye_dx
        head.paint(head.blur(head.ellipse((ex, eye_y), (0.15 * w, 0.08 * h)), 0.04 * w), skin_img * 0.75)  # socket
        brow = _arc(ex + sign * 0.02 * w, eye_y - rng.uniform(0.1, 0.14) * h, 0.12 * w, -0.03 * h)
        head.paint(head.stroke(brow, max(0.6, 0.04 * w)), hair * 0.8)
        white = head.ellipse((ex, eye_y), (eye_w, eye_h))
        head.paint(white, np.float32((210, 215, 220)) * shade[:, :, None])
        head.paint(head.ellipse((ex, eye_y), (0.045 * w, min(0.045 * w, eye_h * 1.1))) * white, iris)
        head.paint(head.ellipse((ex, eye_y), (0.02 * w, 0.02 * w)), np.float32((10, 10, 12)))
        head.paint(head.stroke(_arc(ex, eye_y, eye_w, -eye_h * 1.1), max(0.5, 0.02 * w)), np.float32((25, 25, 30)))
    nose_y = by + h * rng.uniform(0.6, 0.66)
    nose_side = 1 if light[0] < 0 else -1  # the nose's shadow falls on the side away from the light
    head.paint(head.blur(head.stroke(np.array([[cx + nose_side * 0.05 * w, eye_y + 0.05 * h],
                                               [cx + nose_side * 0.08 * w, nose_y]]), 0.05 * w), 0.03 * w), skin_img * 0.78)
    head.paint(head.blur(head.ellipse((cx, nose_y + 0.02 * h), (0.12 * w, 0.04 * h)), 0.02 * w), skin_img * 0.8)
    for sign in (-1, 1):
        head.paint(head.ellipse((cx + sign * 0.05 * w, nose_y + 0.03 * h), (0.03 * w, 0.015 * h)), skin * 0.35)
    mouth_y = by + h * rng.uniform(0.78, 0.83)
    mouth_w = w * rng.uniform(0.15, 0.21)
    smile = rng.uniform(-0.01, 0.04) * h
    lips = skin * np.float32((0.75, 0.7, 1.0)) * 0.8
    head.paint(head.ellipse((cx, mouth_y + 0.02 * h), (mouth_w * 0.85, 0.045 * h)), lips * shade[:, :, None])
    if rng.random() < 0.25:  # open: teeth
        head.paint(head.ellipse((cx, mouth_y + 0.02 * h), (mouth_w * 0.6, 0.02 * h)), np.float32((200, 210, 215)))
    head.paint(head.stroke(_arc(cx, mouth_y + 0.015 * h, mouth_w * 0.9, smile), max(0.5, 0.015 * w)), skin * 0.3)
    extra = rng.random()
    if extra < 0.12:  # glasses
        frame = rng.uniform(10, 120, 3).astype(np.float32)
        rim = max(0.6, 0.02 * w)
        for sign in (-1, 1):
            ring = head.ellipse((cx + sign * eye_dx, eye_y), (0.14 * w, 0.09 * w))
            ring -= head.ellipse((cx + sign * eye_dx, eye_y), (0.14 * w - rim, 0.09 * w - rim))
            head.paint(np.clip(ring, 0, 1), frame)
        head.paint(head.stroke(np.array([[cx - eye_dx + 0.14 * w, eye_y], [cx + eye_dx - 0.14 * w, eye_y]]), rim), frame)
    elif extra < 0.22:  # moustache and maybe a beard
        head.paint(head.ellipse((cx, mouth_y - 0.03 * h), (mouth_w * 1.05, 0.035 * h)) * 0.9, hair)
        if rng.random() < 0.6:
            head.paint(head_mask * (ys > mouth_y + 0.04 * h) * 0.85, hair * (0.7 + 0.4 * lambert)[:, :, None])

    # The head over the body; the face bounded by its ellipse.
    head_colour, head_alpha_local = head.at_sprite_size()
    hh, hw = head_alpha_local.shape
    colour, body_alpha = body.at_sprite_size()
    head_alpha = np.zeros_like(body_alpha)
    region = (slice(hy0, hy0 + hh), slice(hx0, hx0 + hw))
    a3 = head_alpha_local[:, :, None]
    colour[region] = colour[region] * (1 - a3) + head_colour * a3
    head_alpha[region] = head_alpha_local
    np.maximum(body_alpha, head_alpha, out=body_alpha)
    box = (bx, by, w, h)
    return Person(np.clip(colour, 0, 255), body_alpha, head_alpha, face_ellipse(height, width, box), box)


def face_ellipse(height: int, width: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """float32 [height, width]: the ellipse inscribed in `box` (x, y, w, h), edge soft over ~12 % of
    its radius; 0.5 on the ellipse itself, so its > 0.5 extent is the box."""
    x, y, w, h = box
    fy = (np.arange(height, dtype=np.float32) + 0.5 - (y + h / 2.0)) / (h / 2.0)
    fx = (np.arange(width, dtype=np.float32) + 0.5 - (x + w / 2.0)) / (w / 2.0)
    return np.clip((1.0 - np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)) / 0.12 + 0.5, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class Template:
    """A person drawn once at a reference size and kept compact, to be shrunk for each use.

    levels: the drawing and its successive halvings (area-averaged), each (colour uint8 [H, W, 3] BGR,
    alphas uint8 [H, W, 2] body and head alpha 0..255, face box (x, y, w, h)), largest first; a use
    shrinks the smallest level still at least its size, so no shrink averages more than 2 x 2 pixels
    into one beyond what the camera-like halvings already did.
    """

    levels: tuple[tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]], ...]

    @classmethod
    def of(cls, person: Person, smallest_face: int = 12) -> Template:
        colour = np.round(person.colour).astype(np.uint8)
        alphas = np.round(np.stack([person.body_alpha, person.head_alpha], axis=2) * 255).astype(np.uint8)
        box = person.box
        levels = [(colour, alphas, box)]
        while box[2] >= 2 * smallest_face:
            height, width = alphas.shape[:2]
            size = (width // 2, height // 2)
            colour = cv2.resize(colour, size, interpolation=cv2.INTER_AREA)
            alphas = cv2.resize(alphas, size, interpolation=cv2.INTER_AREA)
            box = tuple(v / 2 for v in box)
            levels.append((colour, alphas, box))
        return cls(tuple(levels))

    def at(self, w: int, h: int, flip: bool) -> Person:
        """This person with a `w` x `h` face box, shrunk with area averaging: as sharp at its pasted
        size as a camera would make it (never enlarged: at most the drawing's own face box)."""
        top = self.levels[0][2]
        if w > top[2] or h > top[3]:
            raise ValueError(f"template face box {top[2]} x {top[3]} is smaller than the {w} x {h} asked")
        colour, alphas, (bx, by, bw, bh) = next(lv for lv in reversed(self.levels) if lv[2][2] >= w and lv[2][3] >= h)
        sx, sy = w / bw, h / bh
        height, width = alphas.shape[:2]
        size = (max(w, round(width * sx)), max(h, round(height * sy)))
        colour = cv2.resize(colour, size, interpolation=cv2.INTER_AREA).astype(np.float32)
        alphas = cv2.resize(alphas, size, interpolation=cv2.INTER_AREA).astype(np.float32) * np.float32(1 / 255)
        x, y = min(round(bx * sx), size[0] - w), min(round(by * sy), size[1] - h)
        if flip:
            colour, alphas, x = colour[:, ::-1], alphas[:, ::-1], size[0] - x - w
        box = (x, y, w, h)
        return Person(np.ascontiguousarray(colour), np.ascontiguousarray(alphas[:, :, 0]),
                      np.ascontiguousarray(alphas[:, :, 1]), face_ellipse(size[1], size[0], box), box)
