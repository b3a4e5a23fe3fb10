"""What one row of a detection request may hold, and how it becomes pixels.

    image_rgb = decode_row(value, row=3)      # uint8 [H, W, 3] RGB, or DetectionInputError naming row 3

A row is one encoded image file, JPEG, PNG or WebP (recognised by its first bytes, whatever a name
says), given as

* bytes: in-process, ``model.predict(pd.DataFrame({"image": [Path("photo.jpg").read_bytes()]}))``;
* a base64 string: JSON has no bytes, so this is what a client sends to ``POST /invocations``.
  MLflow's scoring server decodes the base64 of a ``dataframe_split`` / ``dataframe_records`` column
  that the signature declares ``binary`` itself, but hands the ``inputs`` form's strings to the model
  as their ASCII bytes: bytes that do not start like an image file are therefore read as base64 too.

Pixels come from ``data_shards.images.decode_bgr``, the decoder the shards are read with: the pixel
count the header declares is checked before anything is decoded (``MAX_IMAGE_PIXELS``, 8192 × 8192),
a truncated or damaged file is refused, and EXIF orientation is ignored, so boxes are in the file's
stored pixels, as in WIDER FACE.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np

from data_shards.images import ImageError, decode_bgr


class DetectionInputError(ValueError):
    """A request the detector cannot serve: a row that is not a usable image, an empty request, a
    parameter out of its range. The message names the row or the parameter, and the cause."""


def image_format(data: bytes) -> str | None:
    """"JPEG", "PNG" or "WebP" from the file signature at the start of ``data``; None for anything else."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


def _base64_decoded(text: bytes | str) -> bytes | None:
    try:  # lenient, as MLflow's own decoding: line breaks (`base64` wraps at 76 columns) are skipped
        return base64.b64decode(text)
    except (binascii.Error, ValueError):
        return None


def encoded_file(value: object, row: int) -> bytes:
    """The encoded image file that request row ``row`` holds (see the module docstring)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        if image_format(data) is None:
            decoded = _base64_decoded(data)
            if decoded is not None and image_format(decoded) is not None:
                return decoded
        return data
    if isinstance(value, str):
        decoded = _base64_decoded(value)
        if decoded is None:
            raise DetectionInputError(f"row {row}: a string that is not base64 ({len(value)} characters "
                                      f"starting {value[:16]!r}); send the file's bytes base64-encoded")
        return decoded
    raise DetectionInputError(f"row {row}: expected an encoded image file (bytes, or a base64 string), got "
                              f"{type(value).__name__}")


def decode_row(value: object, row: int) -> np.ndarray:
    """uint8 [H, W, 3] RGB pixels of request row ``row``; DetectionInputError naming the row otherwise."""
    import cv2

    data = encoded_file(value, row)
    kind = image_format(data)
    if kind is None:
        what = "empty (0 bytes)" if not data else f"{len(data)} bytes starting {data[:12]!r}"
        raise DetectionInputError(f"row {row}: not a JPEG, PNG or WebP file ({what})")
    try:
        image_bgr = decode_bgr(data)
    except ImageError as error:
        raise DetectionInputError(f"row {row}: unusable {kind} file of {len(data)} bytes: {error}") from None
    return cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
