"""Where shards live: a local folder or `s3://bucket/prefix`, and how to reach S3.

Endpoint and credentials come from the standard AWS variables, resolved in one place so the
shard writer, the loader and the trainer (Ray's checkpoint storage) all agree:

    AWS_ENDPOINT_URL       e.g. http://127.0.0.1:8333 (SeaweedFS); unset means AWS itself
    AWS_ACCESS_KEY_ID      static keys (the local platform, MinIO); when unset, boto3 and pyarrow
    AWS_SECRET_ACCESS_KEY  use the standard AWS credential chain: AWS_PROFILE and ~/.aws, a web
                           identity token (IRSA on EKS), container or instance credentials
    AWS_DEFAULT_REGION     default us-east-1

`check_access(url, settings)` fails early, with a message naming the missing credential (and the
chain that was tried), the endpoint or the bucket, so a job never starts dataloader workers
against a store it cannot read.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

SHA256_METADATA_KEY = "sha256"  # S3 user metadata holding the object's sha256 (x-amz-meta-sha256)
_MULTIPART_THRESHOLD = 64 * 1024 * 1024


class StorageAccessError(RuntimeError):
    """The store named by a URL cannot be used: missing credentials, endpoint down, no bucket."""


@dataclass(frozen=True, kw_only=True)
class S3Settings:
    """How to reach an S3-compatible store."""

    endpoint_url: str | None = None
    """Full endpoint URL (`http://127.0.0.1:8333`); None means the AWS default endpoint."""
    access_key: str | None = None
    """AWS_ACCESS_KEY_ID."""
    secret_key: str | None = None
    """AWS_SECRET_ACCESS_KEY."""
    region: str = "us-east-1"
    """AWS_DEFAULT_REGION."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> S3Settings:
        """Read the standard AWS_* variables (from `os.environ` unless `env` is given)."""
        env = os.environ if env is None else env
        return cls(
            endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
            access_key=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            region=env.get("AWS_DEFAULT_REGION") or "us-east-1",
        )

    def credentials_problem(self) -> str | None:
        """What is wrong with the credentials, or None when some are available.

        Static keys must come in pairs; without them, the standard AWS chain must find some.
        """
        if bool(self.access_key) != bool(self.secret_key):
            present, absent = (("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if self.access_key
                               else ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"))
            return f"{present} is set but {absent} is not: set both, or neither to use the AWS credential chain"
        if self.access_key:
            return None
        import boto3

        if boto3.Session(region_name=self.region).get_credentials() is None:
            return ("no S3 credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY are unset and the AWS credential "
                    f"chain found none ({CREDENTIAL_CHAIN}); for the local platform run `isrn platform up`")
        return None

    def exported(self) -> dict[str, str]:
        """These settings as the standard AWS_* variables (for a process environment, never for a job)."""
        env = {"AWS_DEFAULT_REGION": self.region}
        if self.endpoint_url:
            env["AWS_ENDPOINT_URL"] = self.endpoint_url
        if self.access_key and self.secret_key:
            env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key)
        return env

    def __repr__(self) -> str:  # never print the secret
        return (
            f"S3Settings(endpoint_url={self.endpoint_url!r}, access_key={self.access_key!r}, "
            f"secret_key={'***' if self.secret_key else None}, region={self.region!r})"
        )


def s3_client(settings: S3Settings) -> Any:
    """A boto3 S3 client for `settings` (path-style addressing, which SeaweedFS and MinIO need)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        aws_access_key_id=settings.access_key,
        aws_secret_access_key=settings.secret_key,
        region_name=settings.region,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
        ),
    )


CREDENTIAL_CHAIN = ("environment variables, AWS_PROFILE / ~/.aws/credentials and ~/.aws/config, "
                    "web identity (AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE: IRSA), container and instance "
                    "metadata credentials")


def arrow_s3_filesystem(settings: S3Settings) -> Any:
    """A `pyarrow.fs.S3FileSystem` for Ray's checkpoint storage (use paths `bucket/prefix`, no s3://).

    It carries the endpoint and region but never the keys: Ray pickles it into the trainer, the
    run config and Tune's experiment state (stored in the checkpoint bucket), and every process
    that unpickles it takes credentials from its own environment through the AWS chain, as
    boto3 does. A process that holds keys only in `settings` must export them first
    (`S3Settings.exported`).
    """
    from pyarrow import fs

    kwargs: dict[str, Any] = {"region": settings.region}
    if settings.endpoint_url:
        parsed = urlparse(settings.endpoint_url)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    return fs.S3FileSystem(**kwargs)


# ---------------------------------------------------------------- URLs


def is_s3_url(url: str) -> bool:
    return url.startswith("s3://")


def split_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> (`bucket`, `a/b`)."""
    if not is_s3_url(url):
        raise ValueError(f"not an s3:// URL: {url!r}")
    bucket, _, key = url[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"s3 URL without a bucket: {url!r}")
    return bucket, key.strip("/")


def join_url(base: str, *parts: str) -> str:
    """Join path parts onto a local path or an s3:// URL with '/'."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- access check


def check_access(url: str, settings: S3Settings | None = None, *, write: bool = False) -> None:
    """Fail fast, naming the cause, if `url` cannot be read (or written with `write=True`).

    Local paths: the folder must exist (or, for writing, be creatable). s3:// URLs: credentials set,
    endpoint reachable, credentials accepted, bucket present.
    """
    if not is_s3_url(url):
        path = Path(url)
        if write:
            path.mkdir(parents=True, exist_ok=True)
        elif not path.exists():
            raise StorageAccessError(f"local shard folder {url!r} does not exist: build the shards there with "
                                     "`isrn shards build --out`, or fix the path")
        return
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    settings = settings or S3Settings.from_env()
    try:
        bucket, _ = split_s3_url(url)
    except ValueError:
        raise StorageAccessError(f"{url!r} names no bucket: write s3://BUCKET/prefix") from None
    if problem := settings.credentials_problem():
        raise StorageAccessError(f"cannot use {url!r}: {problem}")
    endpoint = settings.endpoint_url or "the AWS default endpoint (AWS_ENDPOINT_URL is unset)"
    client = s3_client(settings)
    try:
        client.head_bucket(Bucket=bucket)
    except (EndpointConnectionError, ConnectionError) as exn:
        raise StorageAccessError(_unreachable(endpoint, url, exn)) from exn
    except NoCredentialsError as exn:
        raise StorageAccessError(f"no S3 credentials for {url!r}: set AWS_ACCESS_KEY_ID") from exn
    except ClientError as exn:
        code = str(exn.response.get("Error", {}).get("Code", ""))
        status = exn.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("404", "NoSuchBucket") or status == 404:
            raise StorageAccessError(f"bucket {bucket!r} does not exist at {endpoint} (for {url!r}): create it "
                                     f"(`aws s3 mb s3://{bucket}`) or fix the URL") from exn
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch") or status == 403:
            raise StorageAccessError(
                f"S3 at {endpoint} refused the credentials of AWS_ACCESS_KEY_ID="
                f"{settings.access_key!r} for bucket {bucket!r} ({code or status}): set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY to a pair this store accepts with access to the bucket "
                "(the local platform's: `eval \"$(isrn platform env)\"`)"
            ) from exn
        raise StorageAccessError(f"S3 error for bucket {bucket!r} at {endpoint}: {exn}") from exn
    except Exception as exn:  # urllib3/botocore wrap refused connections in several types
        raise StorageAccessError(_unreachable(endpoint, url, exn)) from exn


def _unreachable(endpoint: str, url: str, error: Exception) -> str:
    return (f"cannot reach S3 endpoint {endpoint} (AWS_ENDPOINT_URL) for {url!r}: {error}; start the local platform "
            "(`isrn platform up`) or set AWS_ENDPOINT_URL to a store that answers")


# ---------------------------------------------------------------- object stores


class ObjectStore:
    """The few operations the shard writer and manifest need, on a folder or an S3 prefix."""

    def stat(self, name: str) -> tuple[int, str | None] | None:
        """(size, sha256 if known) of object `name`, or None if absent."""
        raise NotImplementedError

    def put_file(self, local_path: str | Path, name: str, sha256: str) -> None:
        """Publish a local file as `name`; readers never see a partial object."""
        raise NotImplementedError

    def put_bytes(self, data: bytes, name: str) -> None:
        raise NotImplementedError

    def get_bytes(self, name: str) -> bytes:
        raise NotImplementedError

    def delete(self, name: str) -> None:
        """Remove object `name` if present."""
        raise NotImplementedError

    def open(self, name: str) -> IO[bytes]:
        raise NotImplementedError

    def list(self, prefix: str = "") -> Iterator[str]:
        """Names (relative to the store root) that start with `prefix`."""
        raise NotImplementedError

    def url(self, name: str) -> str:
        raise NotImplementedError


class LocalStore(ObjectStore):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, name: str) -> Path:
        return self.root / name

    def stat(self, name: str) -> tuple[int, str | None] | None:
        path = self._path(name)
        if not path.is_file():
            return None
        return path.stat().st_size, sha256_file(path)

    def put_file(self, local_path: str | Path, name: str, sha256: str) -> None:
        dest = self._path(name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
        shutil.copyfile(local_path, tmp)
        os.replace(tmp, dest)  # atomic: a reader sees the old object or the whole new one

    def put_bytes(self, data: bytes, name: str) -> None:
        dest = self._path(name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)

    def get_bytes(self, name: str) -> bytes:
        return self._path(name).read_bytes()

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def open(self, name: str) -> IO[bytes]:
        return open(self._path(name), "rb")

    def list(self, prefix: str = "") -> Iterator[str]:
        if not self.root.is_dir():
            return
        for path in sorted(self.root.rglob("*")):
            rel = path.relative_to(self.root).as_posix()
            if path.is_file() and rel.startswith(prefix) and ".tmp-" not in path.name:
                yield rel

    def url(self, name: str) -> str:
        return str(self._path(name))


class S3Store(ObjectStore):
    def __init__(self, url: str, settings: S3Settings | None = None) -> None:
        self.bucket, self.prefix = split_s3_url(url)
        self.settings = settings or S3Settings.from_env()
        self.client = s3_client(self.settings)

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def stat(self, name: str) -> tuple[int, str | None] | None:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(name))
        except ClientError as exn:
            if exn.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise
        return int(head["ContentLength"]), head.get("Metadata", {}).get(SHA256_METADATA_KEY)

    def put_file(self, local_path: str | Path, name: str, sha256: str) -> None:
        from boto3.s3.transfer import TransferConfig

        # Managed transfer: multipart above the threshold, retried parts; the object becomes
        # visible only when the upload completes, so a reader never sees half a shard.
        self.client.upload_file(
            str(local_path),
            self.bucket,
            self._key(name),
            ExtraArgs={"Metadata": {SHA256_METADATA_KEY: sha256}},
            Config=TransferConfig(multipart_threshold=_MULTIPART_THRESHOLD, max_concurrency=4),
        )

    def put_bytes(self, data: bytes, name: str) -> None:
        digest = hashlib.sha256(data).hexdigest()
        self.client.put_object(
            Bucket=self.bucket, Key=self._key(name), Body=data,
            Metadata={SHA256_METADATA_KEY: digest},
        )

    def get_bytes(self, name: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            # The same contract as LocalStore: a missing object is a missing file.
            raise FileNotFoundError(f"{self.url(name)} does not exist") from None

    def delete(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(name))

    def open(self, name: str) -> IO[bytes]:
        return self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"]

    def list(self, prefix: str = "") -> Iterator[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=base + prefix):
            for obj in page.get("Contents", []):
                yield obj["Key"][len(base) :]

    def url(self, name: str) -> str:
        return f"s3://{self.bucket}/{self._key(name)}"


def open_store(url: str, settings: S3Settings | None = None) -> ObjectStore:
    """The store rooted at a local path or an s3:// URL."""
    if is_s3_url(url):
        return S3Store(url, settings)
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalStore(parsed.path)
    if parsed.scheme and len(parsed.scheme) > 1:
        raise ValueError(f"unsupported shard URL scheme {parsed.scheme!r} in {url!r}")
    return LocalStore(url)
