"""The storage-outage refit: what is an outage, what is not, and the one failure budget it shares.

The S3 messages are pyarrow 2x's, captured against SeaweedFS and a fake S3 answering each status
(connection refused, a silent server, 503 SlowDown, 500, 403, 404, 507); the local ones are raised
here by the real filesystem (/dev/full, sysfs).
"""

from __future__ import annotations

import errno

import pytest
from pyarrow import fs
from ray.train import ControllerError

from jobs.spec import load_spec
from jobs.train import run
from jobs.train.outages import outage_cause

CAPTURED = {
    # (message, is an outage)
    "When initiating multiple part upload for key 'run/x' in bucket 'bkt': AWS Error NETWORK_CONNECTION during "
    "CreateMultipartUpload operation: curlCode: 7, Could not connect to server; Details: Failed to connect to "
    "127.0.0.1 port 53519 after 0 ms: Could not connect to server": True,
    "When getting information for key 'run/lease.json' in bucket 'bkt': AWS Error NETWORK_CONNECTION during "
    "HeadObject operation: curlCode: 28, Timeout was reached; Details: Operation too slow. Less than 1 bytes/sec "
    "transferred the last 3 seconds": True,
    "When listing objects under key 'run/' in bucket 'bkt': AWS Error SLOW_DOWN during ListObjectsV2 operation: "
    "SlowDown from fake (Request ID: 1)": True,
    "When initiating multiple part upload for key 'run/x' in bucket 'bkt': AWS Error SERVICE_UNAVAILABLE during "
    "CreateMultipartUpload operation: ServiceUnavailable from fake (Request ID: 1)": True,
    "When getting information for key 'run/lease.json' in bucket 'bkt': AWS Error UNKNOWN (HTTP status 503) during "
    "HeadObject operation: No response body.": True,
    "When listing objects under key 'run/' in bucket 'bkt': AWS Error INTERNAL_FAILURE during ListObjectsV2 "
    "operation: InternalError from fake (Request ID: 1)": True,
    "When initiating multiple part upload for key 'run/x' in bucket 'bkt': AWS Error ACCESS_DENIED during "
    "CreateMultipartUpload operation: AccessDenied from fake (Request ID: 1)": False,
    "When initiating multiple part upload for key 'run/x' in bucket 'bkt': AWS Error SIGNATURE_DOES_NOT_MATCH "
    "during CreateMultipartUpload operation: The request signature we calculated does not match the signature you "
    "provided. Check your key and signing method. (Request ID: 18EED175D30D556699D6676C)": False,
    "When initiating multiple part upload for key 'run/x' in bucket 'bkt': AWS Error NO_SUCH_BUCKET during "
    "CreateMultipartUpload operation: NoSuchBucket from fake (Request ID: 1)": False,
    "When initiating multiple part upload for key 'run/x' in bucket 'bkt': AWS Error UNKNOWN (HTTP status 507) "
    "during CreateMultipartUpload operation: Unable to parse ExceptionName: InsufficientStorage Message: "
    "InsufficientStorage from fake (Request ID: 1)": False,
}


@pytest.mark.parametrize("message,outage", list(CAPTURED.items()), ids=[m.split("AWS Error ")[1][:28]
                                                                         for m in CAPTURED])
def test_s3_errors_are_classified_by_their_aws_error(message, outage):
    assert (outage_cause(OSError(message)) is not None) is outage


def _local_error(path: str, make_dir: bool = False) -> OSError:
    local = fs.LocalFileSystem()
    try:
        if make_dir:
            local.create_dir(path)
        else:
            with local.open_output_stream(path) as out:
                out.write(b"x" * 4096)
    except OSError as error:
        return error
    raise AssertionError(f"writing {path} did not fail")


def test_local_errors_are_classified_by_errno():
    full = _local_error("/dev/full")                       # [Errno 28] No space left on device
    denied = _local_error("/sys/kernel/isrn-probe")        # [Errno 13] Permission denied (even for root)
    assert (full.errno, denied.errno) == (errno.ENOSPC, errno.EACCES)
    assert outage_cause(full) is None and outage_cause(denied) is None
    assert outage_cause(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")) == \
        "connection refused (ECONNREFUSED)"
    assert outage_cause(TimeoutError(errno.ETIMEDOUT, "timed out")) == "timed out (ETIMEDOUT)"
    assert outage_cause(ValueError("a bug")) is None
    wrapped = RuntimeError("Ray's bookkeeping write failed")
    wrapped.__cause__ = OSError(next(m for m, o in CAPTURED.items() if o))
    assert outage_cause(wrapped) == "AWS Error NETWORK_CONNECTION"


class _Trainer:
    def __init__(self, outcomes: list, counter, failures: list):
        self.outcomes, self.counter, self.failures = outcomes, counter, failures

    def fit(self):
        self.counter.causes = self.failures.pop(0) if self.failures else []
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


class _Counter:
    """A fit's worker-group failures, as `WorkerFailureCounter.drain` reports them: the storage outage
    that caused each ("" for another cause)."""

    def __init__(self):
        self.causes: list[str] = []

    def drain(self) -> list[str]:
        return self.causes


def _fit(outcomes: list, answers: bool = True, max_failures: int = 2, failures: list | None = None):
    spec = load_spec("smoke", [f"scaling.max_failures={max_failures}", "scaling.storage_outage_timeout_s=1"])
    waited, allowed, recorded = [], [], []

    def storage_answers(spec, env, timeout_s, run_name):
        waited.append(timeout_s)
        return answers

    def make_trainer(failures_left, counter):
        allowed.append(failures_left)
        return _Trainer(outcomes, counter, failures if failures is not None else [])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run, "storage_answers", storage_answers)
        outcome = run.fit_through_storage_outages(make_trainer, spec, env=None, run_name="smoke-1",
                                                  on_outage=recorded.append, new_counter=_Counter)
    return outcome, allowed, waited, recorded


OUTAGE = ControllerError(OSError("AWS Error NETWORK_CONNECTION during CreateMultipartUpload operation: curlCode: 7"))


def test_a_storage_outage_fits_again_once_the_storage_answers():
    outcome, allowed, waited, recorded = _fit([OUTAGE, OUTAGE, "result"])
    assert (outcome.result, outcome.outages, waited, recorded) == ("result", 2, [1.0, 1.0], [1, 2])
    assert allowed == [2, 1, 0]  # each outage spends one of scaling.max_failures


def test_outages_and_worker_restarts_share_max_failures():
    # The first fit restarted its workers once (a bug), then lost the storage: 2 of 3 spent, one left.
    outcome, allowed, _, _ = _fit([OUTAGE, "result"], max_failures=3, failures=[["", ], []])
    assert allowed == [3, 1] and (outcome.outages, outcome.worker_failures, outcome.storage_outages) == (1, 1, 1)
    with pytest.raises(OSError, match=r"failure budget spent \(scaling.max_failures = 2: 0 storage outages and 2 "
                                      r"worker-group restarts"):
        _fit([OUTAGE, "result"], max_failures=2, failures=[["", ""]])


def test_worker_failures_a_storage_outage_caused_count_as_outages():
    """S3 went away under a worker's checkpoint upload first: Ray Train restarted the worker group (no
    refit), and the run counts that outage too."""
    upload = "AWS Error NETWORK_CONNECTION (curlCode: 7)"
    outcome, allowed, waited, recorded = _fit(["result"], max_failures=3, failures=[[upload, ""]])
    assert (outcome.outages, outcome.worker_failures, outcome.storage_outages, waited) == (0, 2, 1, [])


def test_a_workers_wrapped_upload_error_is_an_outage():
    """Ray Train hands a worker's exception over wrapped, with the original kept."""
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

    from jobs.train.failure_count import WorkerFailureCounter

    error = OSError(next(m for m, o in CAPTURED.items() if o))
    wrapped = UserExceptionWithTraceback(error, "Traceback (most recent call last): ...")
    assert outage_cause(wrapped) == "AWS Error NETWORK_CONNECTION"
    counter = object.__new__(WorkerFailureCounter)
    counter.queue = type("Q", (), {"items": [], "put": lambda self, x: self.items.append(x)})()
    counter.after_exception(None, {0: wrapped, 1: RuntimeError("collective aborted")})
    counter.after_exception(None, {1: RuntimeError("a bug")})
    assert counter.queue.items == ["AWS Error NETWORK_CONNECTION", ""]
    with pytest.raises(OSError, match="failure budget spent"):
        _fit([OUTAGE, OUTAGE, "result"], max_failures=1)


def test_a_permission_error_or_a_full_disk_is_not_waited_for():
    for error in (_local_error("/sys/kernel/isrn-probe"), _local_error("/dev/full"),
                  OSError(next(m for m, o in CAPTURED.items() if "ACCESS_DENIED" in m))):
        with pytest.raises(ControllerError) as raised:
            _, allowed, waited, _ = _fit([ControllerError(error), "result"])
        assert raised.value.controller_failure is error
    with pytest.raises(ControllerError):
        _fit([ControllerError(ValueError("a bug")), "result"])


def test_a_storage_that_stays_down_ends_the_run_with_the_resume_command():
    with pytest.raises(OSError, match=r"did not answer for 1 s.*isrn train smoke --resume smoke-1"):
        _fit([OUTAGE, "result"], answers=False)


def test_the_probe_writes_so_a_readable_but_unwritable_storage_fails_at_once():
    """sysfs lists (the old probe, a listing, passed at once) but refuses every write."""
    spec = load_spec("smoke", ["checkpoint.storage=/sys/kernel"])
    assert fs.LocalFileSystem().get_file_info("/sys/kernel").type == fs.FileType.Directory
    with pytest.raises(PermissionError):
        run.storage_answers(spec, None, timeout_s=60, run_name="smoke-1")


def test_the_probe_answers_for_a_writable_storage_and_leaves_nothing(tmp_path):
    spec = load_spec("smoke", [f"checkpoint.storage={tmp_path}"])
    assert run.storage_answers(spec, None, timeout_s=1, run_name="smoke-1")
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == []
