"""The writer lease of a run: one live writer, a dead one's lease taken over, two takers at once.

On the local filesystem (pyarrow's, as for a local checkpoint path) with short timeouts, and on the
real S3 (SeaweedFS), whose clock decides staleness through the objects' modification times.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from pyarrow import fs

from jobs.train.lease import LEASE_FILE, LeaseHeldError, LeaseLostError, WriterLease, check_held

TIMEOUT = 2.0  # renewed every 0.5 s, stale after 2 s


def _lease(root, **kwargs) -> WriterLease:
    return WriterLease(fs.LocalFileSystem(), str(root / "run"), timeout_s=kwargs.pop("timeout_s", TIMEOUT),
                       settle_s=kwargs.pop("settle_s", 0.1), **kwargs)


def test_a_run_is_held_then_released(tmp_path):
    lease = _lease(tmp_path)
    lease.acquire()
    assert lease.read().holder == lease.holder
    check_held(lease.filesystem, lease.path, lease.holder)
    lease.release()
    assert lease.read() is None and not (tmp_path / "run" / LEASE_FILE).exists()
    assert [p.name for p in (tmp_path / "run").iterdir()] == []  # no probe object left behind


def test_a_live_writer_is_never_taken_over(tmp_path):
    """A second job (a `--resume` of a running run) is refused as soon as it sees a renewal: well within
    the timeout, and however long it was willing to wait."""
    live = _lease(tmp_path)
    live.acquire()
    with live.kept_alive():
        second = _lease(tmp_path)
        started = time.monotonic()
        with pytest.raises(LeaseHeldError, match=r"being written by another job: .* it is alive: its lease was "
                                                 r"renewed while this job watched it"):
            second.acquire(wait_s=30)
        assert time.monotonic() - started < TIMEOUT
        live.check()  # still the live writer's
    live.release()


def test_a_dead_writers_lease_is_taken_over_after_the_timeout(tmp_path):
    dead = _lease(tmp_path)
    dead.acquire()  # and never renewed: its driver died
    retry = _lease(tmp_path)
    started = time.monotonic()
    retry.acquire()
    waited = time.monotonic() - started
    assert TIMEOUT - 0.5 <= waited <= TIMEOUT + 2, waited
    assert retry.read().holder == retry.holder
    with pytest.raises(LeaseLostError, match="another job took the run over"):
        check_held(dead.filesystem, dead.path, dead.holder)  # what the dead job's workers would hit
    with pytest.raises(LeaseLostError):
        dead.renew()


def test_staleness_is_judged_by_the_storages_clock(tmp_path):
    """A lease whose object is older than the timeout by the storage's clock is taken over at once:
    no client's clock is read (here the lease's mtime is set an hour back)."""
    dead = _lease(tmp_path, timeout_s=600)
    dead.acquire()
    hour_ago = time.time() - 3600
    os.utime(tmp_path / "run" / LEASE_FILE, (hour_ago, hour_ago))
    retry = _lease(tmp_path, timeout_s=600)
    started = time.monotonic()
    retry.acquire()
    assert time.monotonic() - started < 5
    assert retry.read().holder == retry.holder


def test_a_fresh_lease_refuses_without_waiting(tmp_path):
    _lease(tmp_path).acquire()
    with pytest.raises(LeaseHeldError, match="still fresh after 0 s"):
        _lease(tmp_path).acquire(wait_s=0)


def _race(make_lease, takers: int = 4) -> list[WriterLease]:
    """`takers` jobs take the lease at the same moment; returns those that hold it."""
    leases = [make_lease() for _ in range(takers)]
    start, winners = threading.Barrier(takers), []

    def take(lease):
        start.wait()
        try:
            lease.acquire(wait_s=0)
            winners.append(lease)
        except LeaseHeldError:
            pass

    threads = [threading.Thread(target=take, args=(lease,)) for lease in leases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return winners


def test_jobs_starting_at_once_get_one_writer(tmp_path):
    for attempt in range(5):
        winners = _race(lambda: _lease(tmp_path / str(attempt)))
        assert len(winners) == 1, [w.holder for w in winners]
        assert winners[0].read().holder == winners[0].holder


def test_a_renewal_that_finds_another_holder_stops_the_job(tmp_path):
    mine = _lease(tmp_path)
    mine.acquire()
    # Another job took it over (as after a long pause of this one): the next renewal finds out.
    (tmp_path / "run" / LEASE_FILE).write_text('{"holder": "someone-else", "renewals": 0}')
    lost = []
    with mine.kept_alive(on_lost=lambda: lost.append(True)):
        deadline = time.monotonic() + 5
        while not lost and time.monotonic() < deadline:
            time.sleep(0.05)
    assert lost and isinstance(mine.lost, LeaseLostError)
    with pytest.raises(LeaseLostError):
        mine.check()
    mine.release()  # leaves the other job's lease alone
    assert mine.read().holder == "someone-else"


@pytest.mark.integration
def test_on_s3_one_writer_and_the_storage_clock(local_s3, fresh_bucket, monkeypatch):
    from data_shards.storage import S3Settings, arrow_s3_filesystem

    for name, value in local_s3.env().items():
        monkeypatch.setenv(name, value)
    s3 = arrow_s3_filesystem(S3Settings.from_env())

    def make(attempt: int, **kwargs) -> WriterLease:
        return WriterLease(s3, f"{fresh_bucket}/runs/r{attempt}", timeout_s=kwargs.pop("timeout_s", 6.0),
                           settle_s=2.0, **kwargs)

    for attempt in range(3):
        winners = _race(lambda: make(attempt))
        assert len(winners) == 1, [w.holder for w in winners]
    holder = winners[0]
    assert abs(holder.storage_now() - time.time()) < 60  # S3's clock, whole seconds (LastModified)
    retry = make(attempt)
    started = time.monotonic()
    retry.acquire()  # the winner never renews: taken over once 6 s old by S3's clock (whole seconds)
    assert 3 <= time.monotonic() - started <= 15
    with pytest.raises(LeaseLostError):
        holder.check()
    retry.release()
    keys = [o["Key"] for o in local_s3.client().list_objects_v2(Bucket=fresh_bucket, Prefix=f"runs/r{attempt}/")
            .get("Contents", [])]
    assert not [k for k in keys if LEASE_FILE in k or ".isrn-clock-" in k], keys
