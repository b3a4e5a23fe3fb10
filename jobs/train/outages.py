"""Which storage errors are outages: the storage did not answer, and will answer again if waited for.

    outage_cause(OSError("... AWS Error NETWORK_CONNECTION during PutObject operation: curlCode: 7 ..."))
    # -> "connection refused or lost (AWS Error NETWORK_CONNECTION)"
    outage_cause(PermissionError(13, "Permission denied"))          # -> None: waiting will not help

Checkpoint storage is a pyarrow filesystem (S3, or a local path): its errors are `OSError`s. A local
one carries its errno; pyarrow's S3 errors carry none, only the AWS SDK's error name and, for the
ones it cannot name, the HTTP status, in the message ("AWS Error SLOW_DOWN during
CreateMultipartUpload operation: ...", "AWS Error UNKNOWN (HTTP status 503) during HeadObject
operation"). An outage is a refused, reset or timed-out connection, or a server error (5xx,
throttling) other than 507 Insufficient Storage; a permission, not-found, bad-credential or
full-disk error is not, and neither is anything unrecognised: retrying those only delays the error.
"""

from __future__ import annotations

import errno
import re

OUTAGE_ERRNOS = {
    errno.ECONNREFUSED: "connection refused", errno.ECONNRESET: "connection reset",
    errno.ECONNABORTED: "connection aborted", errno.ETIMEDOUT: "timed out", errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable", errno.ENETDOWN: "network down", errno.EPIPE: "broken pipe",
}
"""Errno of a local or mounted filesystem that says the storage did not answer."""

# The AWS SDK's names for "no answer" and for server-side failures worth waiting out.
_AWS_OUTAGE = re.compile(r"AWS Error (NETWORK_CONNECTION|SERVICE_UNAVAILABLE|INTERNAL_FAILURE|SLOW_DOWN|THROTTLING|"
                         r"REQUEST_TIMEOUT)\b")
_HTTP_STATUS = re.compile(r"\(HTTP status (\d{3})\)")
NOT_AN_OUTAGE_STATUS = {507}
"""5xx answers that waiting will not cure: 507 Insufficient Storage (a full store)."""


def outage_cause(error: BaseException) -> str | None:
    """Why `error` (or an OSError it was raised from) is a storage outage, or None when it is not one."""
    for link in _chain(error):
        if not isinstance(link, OSError):
            continue
        if link.errno in OUTAGE_ERRNOS:
            return f"{OUTAGE_ERRNOS[link.errno]} ({errno.errorcode[link.errno]})"
        if link.errno is not None:
            return None  # a local errno that is not a lost connection: permission, not found, disk full, ...
        text = str(link)
        status = _HTTP_STATUS.search(text)
        if status is not None:
            code = int(status.group(1))
            return f"HTTP status {code}" if 500 <= code < 600 and code not in NOT_AN_OUTAGE_STATUS else None
        named = _AWS_OUTAGE.search(text)
        if named is not None:
            return f"AWS Error {named.group(1)}"
        return None
    return None


def _chain(error: BaseException) -> list[BaseException]:
    """`error` and what it was raised from, outermost first. Ray wraps the storage's OSError: Ray Train
    hands a worker's exception to the driver's side as `UserExceptionWithTraceback`, which keeps it
    as `_base_exc`."""
    seen: list[BaseException] = []
    while error is not None and error not in seen:
        seen.append(error)
        error = getattr(error, "_base_exc", None) or error.__cause__ or error.__context__
    return seen
