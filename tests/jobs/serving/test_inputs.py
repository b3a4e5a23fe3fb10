"""A request row → pixels: the three formats, bytes or base64, and every bad row named with its cause."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest

from jobs.serving.inputs import DetectionInputError, decode_row, image_format


def photo_bgr(height: int = 48, width: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    return cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (5, 5), 0)


def encoded(extension: str, image: np.ndarray | None = None) -> bytes:
    return cv2.imencode(extension, photo_bgr() if image is None else image)[1].tobytes()


def declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) declares `width` × `height` pixels: a decompression bomb."""
    data = bytearray(encoded(".jpg"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5: sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


@pytest.mark.parametrize("extension, kind", [(".jpg", "JPEG"), (".png", "PNG"), (".webp", "WebP")])
def test_the_three_formats_are_recognised_by_their_first_bytes(extension: str, kind: str) -> None:
    data = encoded(extension)
    assert image_format(data) == kind
    rgb = decode_row(data, row=0)
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), 1), cv2.COLOR_BGR2RGB))


def test_base64_as_text_as_ascii_bytes_and_wrapped_at_76_columns_is_the_same_file() -> None:
    data = encoded(".png")
    text = base64.b64encode(data).decode()
    wrapped = base64.encodebytes(data).decode()  # what `base64 FILE` prints: lines of 76 characters
    assert "\n" in wrapped
    expected = decode_row(data, row=0)
    # A JSON string (dataframe_split gives the server's own decoding; this is the in-process call),
    # MLflow's `inputs` form (the base64 text as ASCII bytes), and the wrapped text.
    for value in (text, text.encode("ascii"), wrapped):
        np.testing.assert_array_equal(decode_row(value, row=0), expected)


@pytest.mark.parametrize("value, message", [
    (b"<html>404 Not Found</html>\n", r"row 3: not a JPEG, PNG or WebP file \(27 bytes starting b'<html>404 No'\)"),
    (b"", r"row 3: not a JPEG, PNG or WebP file \(empty \(0 bytes\)\)"),
    (base64.b64encode(b"GIF89a and more").decode(), r"row 3: not a JPEG, PNG or WebP file \(15 bytes starting b'GIF89a"),
    ("not base64!", r"row 3: a string that is not base64 \(11 characters starting 'not base64!'\)"),
    (17, r"row 3: expected an encoded image file \(bytes, or a base64 string\), got int"),
])
def test_a_row_that_is_not_an_image_is_named_with_what_it_holds(value: object, message: str) -> None:
    with pytest.raises(DetectionInputError, match=message):
        decode_row(value, row=3)


def test_a_truncated_file_is_refused() -> None:
    data = encoded(".jpg", photo_bgr(480, 640))
    cut = data[: data.index(b"\xff\xda") + 100]  # the header reads, the pixels do not
    with pytest.raises(DetectionInputError, match=rf"row 1: unusable JPEG file of {len(cut)} bytes: .*cannot decode"):
        decode_row(cut, row=1)
    png = encoded(".png", photo_bgr(480, 640))
    with pytest.raises(DetectionInputError, match="row 2: unusable PNG file"):
        decode_row(png[: len(png) // 2], row=2)


def test_an_image_over_the_pixel_limit_is_refused_before_decoding() -> None:
    # 9000 × 9000 = 81,000,000 > 8192² = 67,108,864 pixels, declared by a file of a few kB.
    with pytest.raises(DetectionInputError, match=r"row 0: unusable JPEG file .* declares 9000 × 9000 pixels, more "
                                                  r"than the limit"):
        decode_row(declaring(9000, 9000), row=0)
