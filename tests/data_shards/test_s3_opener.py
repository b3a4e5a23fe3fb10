"""The S3 opener's read-ahead: the same bytes as the body, its errors raised in the reader, closed on request."""

import io
import threading
import time

import pytest

from data_shards import s3_opener


class FakeBody(io.BytesIO):
    """A botocore StreamingBody stand-in: `read(n)`, `close()`, and an optional failure after `fail_after` bytes."""

    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        super().__init__(data)
        self.fail_after = fail_after
        self.closed_by = None

    def read(self, size: int = -1) -> bytes:
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise ConnectionError("connection reset by peer")
        return super().read(size)

    def close(self) -> None:
        self.closed_by = threading.current_thread().name
        super().close()


def _reader(body: FakeBody) -> io.BufferedReader:
    return io.BufferedReader(s3_opener._ReadAhead(body), buffer_size=s3_opener.READ_CHUNK)


def test_read_ahead_yields_the_body_byte_for_byte_in_small_reads(monkeypatch):
    monkeypatch.setattr(s3_opener, "READ_CHUNK", 1000)  # many chunks, and reads that straddle them
    data = bytes(range(256)) * 50  # 12,800 bytes
    body = FakeBody(data)
    reader = _reader(body)
    parts = []
    while part := reader.read(777):
        parts.append(part)
    assert b"".join(parts) == data and reader.read(10) == b""
    for _ in range(100):  # the thread closes the body once it has read the end
        if body.closed_by:
            break
        time.sleep(0.01)
    assert body.closed_by == "isrn-s3-read-ahead"


def test_a_read_error_is_raised_in_the_reader_after_the_good_bytes(monkeypatch):
    monkeypatch.setattr(s3_opener, "READ_CHUNK", 100)
    reader = _reader(FakeBody(b"x" * 1000, fail_after=300))
    assert reader.read(300) == b"x" * 300
    with pytest.raises(ConnectionError, match="reset by peer"):
        reader.read(100)


def test_closing_an_unfinished_reader_stops_its_thread(monkeypatch):
    monkeypatch.setattr(s3_opener, "READ_CHUNK", 10)
    body = FakeBody(b"y" * 10_000)  # far more than the read-ahead holds: the thread waits on the queue
    reader = _reader(body)
    assert reader.read(5) == b"yyyyy"
    reader.close()
    for _ in range(200):
        if body.closed_by:
            break
        time.sleep(0.01)
    assert body.closed_by == "isrn-s3-read-ahead"
