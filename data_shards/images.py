"""Encoded images as the shards carry them: the size their header declares, and how they are decoded.

    width, height = declared_size(data)       # the header only, no pixel decoded
    image = decode_bgr(data)                  # uint8 [H, W, 3] BGR, in stored pixel coordinates

Shards keep the original bytes. Whatever OpenCV reads by content is fine: a PNG under a `.jpg`
name, CMYK, grayscale, 16-bit and alpha images all decode to 8-bit BGR (`cv2.IMREAD_COLOR`). Two
decisions are ours:

- EXIF orientation is ignored (`cv2.IMREAD_IGNORE_ORIENTATION`): WIDER boxes are in stored pixel
  coordinates, and OpenCV would otherwise rotate the image away from its boxes.
- A pixel limit, checked on the header before decoding: a 1 kB file can declare 30000 × 30000
  pixels, which OpenCV (whose own limit is 2^30 pixels) would decode into 2.7 GB.
"""

from __future__ import annotations

import io
import warnings

import numpy as np

MEAN_BGR = (104.0, 117.0, 123.0)
"""ImageNet mean, BGR: the fill of zoom-out expansion [S3FD code] and of val and served padding; 0 after
the model's normalisation, which is SRN's "zero-padding". Here, in the module serving imports anyway,
so the served canvas takes it without OpenCV or the config tree."""
MAX_IMAGE_PIXELS = 1 << 26
"""8192 × 8192: far above any WIDER FACE or COCO image, far below what a worker can hold decoded."""


class ImageError(ValueError):
    """Bytes the loader could not use as an image: empty, unreadable, truncated or too large."""


def check_pixels(width: int, height: int, what: str = "the image") -> None:
    """ImageError when `what` declares more than MAX_IMAGE_PIXELS."""
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(f"{what} declares {width} × {height} pixels, more than the limit of {MAX_IMAGE_PIXELS} "
                         "(8192 × 8192): a decompression bomb or a scan, not a photo")


def declared_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the image header, in stored pixels (EXIF orientation not applied).

    Raises ImageError for empty bytes, bytes without an image header, or a size over the limit.
    """
    from PIL import Image

    if not data:
        raise ImageError("corrupt JPEG: the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit is lower
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except Image.DecompressionBombError as error:  # PIL refuses before telling the size
        raise ImageError(f"the image header declares more pixels than {MAX_IMAGE_PIXELS} ({error})") from None
    except Image.UnidentifiedImageError:
        raise ImageError("corrupt JPEG: no image header that PIL recognises") from None
    except (OSError, ValueError) as error:  # a header cut short
        raise ImageError(f"corrupt JPEG: unreadable image header ({error})") from None
    check_pixels(width, height, "the image header")
    return width, height


def decode_bgr(data: bytes, *, reduced: bool = False) -> np.ndarray:
    """uint8 [H, W, 3] BGR pixels of an encoded image, its header checked first (`declared_size`).

    `reduced`: decode at 1/8 scale, which proves the whole file decodes at half the cost.
    Raises ImageError when the header is refused or OpenCV cannot decode the data.
    """
    import cv2

    declared_size(data)
    flags = (cv2.IMREAD_REDUCED_COLOR_8 if reduced else cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as error:
        raise ImageError(f"corrupt JPEG: OpenCV cannot decode it ({error})") from None
    if image is None:
        raise ImageError("corrupt JPEG: OpenCV cannot decode it (truncated or damaged)")
    return image
