"""An ``s3://`` opener for webdataset: a buffered boto3 streaming body, one client per process.

webdataset 1.0.2 has no ``s3://`` scheme (shared/PLATFORM.md): :func:`register_s3_opener` puts
:func:`gopen_s3` into ``webdataset.gopen_schemes`` (brace expansion keeps working), so shards are
read by boto3 with the platform's credentials instead of through a ``pipe:`` to an external CLI.

boto3 clients are not fork-safe, so the module keeps one client per process id and
:func:`reset_clients` drops them in a new dataloader worker.
"""

from __future__ import annotations

import io
import os
from typing import Any

import webdataset as wds

from data_shards.storage import S3Settings, s3_client, split_s3_url

class _RawBody(io.RawIOBase):
    """A botocore StreamingBody as a raw stream, so io.BufferedReader can batch its small reads."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._body.close()
        super().close()


_opener_settings: S3Settings | None = None
_clients: dict[int, Any] = {}


def _client() -> Any:
    # boto3 clients are not fork-safe: one per process.
    pid = os.getpid()
    if pid not in _clients:
        _clients[pid] = s3_client(_opener_settings or S3Settings.from_env())
    return _clients[pid]


def gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> io.BufferedReader:
    """webdataset opener for `s3://bucket/key`: a buffered boto3 streaming body (no external CLI)."""
    if mode != "rb":
        raise ValueError(f"gopen_s3 reads only, got mode {mode!r} for {url}")
    bucket, key = split_s3_url(url)
    body = _client().get_object(Bucket=bucket, Key=key)["Body"]
    return io.BufferedReader(_RawBody(body), buffer_size=1 << 20)


def register_s3_opener(settings: S3Settings | None = None) -> None:
    """Make webdataset open s3:// URLs with boto3 and `settings` (default: the AWS_* variables)."""
    global _opener_settings
    if settings is not None and settings != _opener_settings:
        _opener_settings = settings
        _clients.clear()
    wds.gopen_schemes["s3"] = gopen_s3


def reset_clients() -> None:
    """Forget every client (call in a new worker process: never reuse one made in another process)."""
    _clients.clear()
