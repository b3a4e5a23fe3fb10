"""The writer lease of a run: one job at a time writes a run's checkpoints and its MLflow run.

    lease = WriterLease(filesystem, "isrn-checkpoints/runs/smoke-20261129-101500-3fa9c1", timeout_s=120)
    lease.acquire()                 # LeaseHeldError while a live job holds the run; a dead one's is taken over
    with lease.kept_alive():        # a thread renews it every timeout_s / 4
        ...                         # train; workers call `check_held` before they write
    lease.release()

The lease is a small JSON object, `isrn-writer-lease.json`, in the run's storage folder (S3 or a local
path, through the pyarrow filesystem Ray Train writes with). It names its holder (a random id, with
the host, pid and Ray job for people) and counts its renewals.

**Alive or dead.** A holder renews its lease every `timeout_s / 4`. A lease is stale when its object
is older than `timeout_s` by the **storage's clock**: the modification time of a probe object written
just then, against the lease object's; the clients' clocks never enter. A job that finds a fresh
lease watches it: a renewal proves its holder alive and the job is refused at once; a lease that goes
stale meanwhile belonged to a dead driver (a lost head pod, a killed submitter) and is taken over.
So a retried job takes a run over at most `timeout_s` (plus a poll) after its previous driver died,
and never while that driver renews.

**Two jobs starting at once.** S3 has no compare-and-set through pyarrow, so taking a lease is
write, wait `settle_s`, read back: whoever reads back its own record holds the run, the other is
refused. That is exact when S3 is strongly consistent per object (AWS S3 since December 2020, one
SeaweedFS filer) and each taker's read-then-write takes under `settle_s`, which the taker measures on
its own monotonic clock and abandons otherwise: of two takers that both found the run free, the
later write lands within `settle_s` of the earlier one, so the earlier taker's read-back sees it.
A renewal checks the holder before it writes, and when its lease had aged past `timeout_s / 2` or
the write was slow, reads it back after `settle_s` too.

What remains: a holder paused or cut off from the storage for longer than `timeout_s` loses its
lease to a retried job; it stops at its next renewal or worker check (`check_held`), but a write it
had already started (one checkpoint upload) may land in the run after the takeover. The resumed
job never loads a folder without its marker, and the pruning of incomplete folders happens only
under a held lease, so such a stray folder is removed, never trusted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

LEASE_FILE = "isrn-writer-lease.json"
CLOCK_PREFIX = ".isrn-clock-"
"""Probe objects written to read the storage's clock (deleted right after)."""


class LeaseHeldError(RuntimeError):
    """Another job holds the run; the message names it and what to do."""


class LeaseLostError(RuntimeError):
    """This job no longer holds the run's lease (another job took it over): it must stop writing."""


@dataclasses.dataclass(frozen=True)
class LeaseRecord:
    holder: str
    """A random id per job attempt: what decides who holds the lease."""
    renewals: int
    host: str = ""
    pid: int = 0
    job: str = ""
    """The Ray Jobs API submission id of the holder's driver ("" outside the Jobs API)."""
    taken_at: str = ""
    """When the holder took the lease, by its own clock (for people; never compared)."""
    mtime: float = 0.0
    """The lease object's modification time by the storage's clock (seconds since the epoch)."""

    def describe(self, age_s: float | None = None) -> str:
        renewed = f", renewed {age_s:.0f} s ago by the storage's clock" if age_s is not None else ""
        job = f", Ray job {self.job}" if self.job else ""
        return f"{self.host} pid {self.pid}{job} (lease {self.holder}, taken {self.taken_at}{renewed})"


def new_holder_id() -> str:
    return uuid.uuid4().hex[:12]


class WriterLease:
    """The lease of the run whose storage folder is `run_path` on a pyarrow `filesystem`."""

    def __init__(self, filesystem: Any, run_path: str, *, timeout_s: float = 120.0, settle_s: float | None = None,
                 job: str = "", holder: str | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        if not timeout_s > 0:
            raise ValueError(f"lease timeout {timeout_s} s must be > 0")
        self.filesystem, self.run_path = filesystem, run_path.rstrip("/")
        self.path = f"{self.run_path}/{LEASE_FILE}"
        self.timeout_s = timeout_s
        self.renew_every_s = timeout_s / 4
        self.settle_s = min(5.0, timeout_s / 8) if settle_s is None else settle_s
        self.poll_s = min(5.0, timeout_s / 8)
        self.holder = holder or new_holder_id()
        self.job, self.sleep = job, sleep
        self.renewals = 0
        self.held = False
        self.lost: LeaseLostError | None = None
        self._last_write_started = 0.0

    # ---- storage -------------------------------------------------------------------------------
    def read(self) -> LeaseRecord | None:
        """The lease as stored now, with its object's modification time; None when there is none."""
        from pyarrow import fs

        info = self.filesystem.get_file_info(self.path)
        if info.type != fs.FileType.File:
            return None
        try:
            with self.filesystem.open_input_stream(self.path) as stream:
                record = json.loads(stream.readall())
        except FileNotFoundError:
            return None  # released between the two calls
        fields = {k: record[k] for k in ("holder", "renewals", "host", "pid", "job", "taken_at") if k in record}
        return LeaseRecord(**fields, mtime=info.mtime.timestamp() if info.mtime else 0.0)

    def storage_now(self) -> float:
        """Seconds since the epoch by the storage's clock: the modification time of an object written now."""
        probe = f"{self.run_path}/{CLOCK_PREFIX}{self.holder}"
        with self.filesystem.open_output_stream(probe) as out:
            out.write(b"")
        try:
            return self.filesystem.get_file_info(probe).mtime.timestamp()
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.filesystem.delete_file(probe)

    def _write(self, renewals: int, taken_at: str) -> None:
        record = {"holder": self.holder, "renewals": renewals, "host": socket.gethostname(), "pid": os.getpid(),
                  "job": self.job, "taken_at": taken_at}
        body = json.dumps(record).encode()
        if self.filesystem.type_name == "local":
            # A local file is written in place: publish it whole with a rename, as S3 publishes an object.
            partial = f"{self.path}.{self.holder}.partial"
            with self.filesystem.open_output_stream(partial) as out:
                out.write(body)
            self.filesystem.move(partial, self.path)
        else:
            with self.filesystem.open_output_stream(self.path) as out:
                out.write(body)

    # ---- taking and keeping it ---------------------------------------------------------------
    def acquire(self, wait_s: float | None = None) -> None:
        """Take the lease (see the module docstring). A fresh lease of another job is watched for up to
        `wait_s` (default: long enough for a dead holder's lease to go stale): LeaseHeldError as soon
        as it is renewed, or when it is still fresh at the deadline; taken over once stale."""
        self.filesystem.create_dir(self.run_path)
        wait_s = self.timeout_s + 2 * self.poll_s if wait_s is None else wait_s
        deadline = time.monotonic() + wait_s
        watched: LeaseRecord | None = None
        taken_at = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        while True:
            began = time.monotonic()
            current = self.read()
            if current is not None:
                age = self.storage_now() - current.mtime
                if age <= self.timeout_s:
                    if watched is not None and (current.holder, current.renewals) != (watched.holder, watched.renewals):
                        raise LeaseHeldError(self._held_message(current, age, "it is alive: its lease was renewed "
                                                                              "while this job watched it"))
                    if watched is None:
                        log.warning("run folder %s is leased by %s; waiting up to %.0f s to see whether that job "
                                    "is alive (it renews every %.0f s) or dead (its lease expires %.0f s after its "
                                    "last renewal)", self.run_path, current.describe(age), wait_s,
                                    self.renew_every_s, self.timeout_s)
                        watched = current
                    if time.monotonic() >= deadline:
                        raise LeaseHeldError(self._held_message(current, age, f"its lease is still fresh after "
                                                                              f"{wait_s:.0f} s"))
                    self.sleep(self.poll_s)
                    continue
                log.warning("taking over the lease of run folder %s from %s: not renewed for %.0f s (> %.0f s), "
                            "its driver is gone", self.run_path, current.describe(age), age, self.timeout_s)
            if time.monotonic() - began > self.settle_s:
                continue  # what was read is too old to act on: read again
            self._last_write_started = time.monotonic()
            self._write(0, taken_at)
            if time.monotonic() - began > self.settle_s:
                # Too slow to be sure no other taker wrote unseen: our record stays and expires like
                # any other (a slow store costs `timeout_s` here, never a second writer).
                log.warning("taking the lease of %s took over %.1f s; trying again", self.run_path, self.settle_s)
                continue
            self.sleep(self.settle_s)
            back = self.read()
            if back is None or (back.holder, back.renewals) != (self.holder, 0):
                raise LeaseHeldError(self._held_message(back, None, "another job took it at the same moment")
                                     if back else f"run folder {self.run_path}: the lease this job wrote vanished "
                                                  "while it was being taken; another job is at work on the run")
            self.renewals, self.held = 0, True
            log.info("holding the writer lease of %s (%s)", self.run_path, self.holder)
            return

    def _held_message(self, record: LeaseRecord, age: float | None, why: str) -> str:
        return (f"run folder {self.run_path} is being written by another job: {record.describe(age)}; {why}. "
                f"Two jobs never write one run; wait for that job to end (or stop it: `isrn jobs stop ID`). "
                f"A driver that died leaves its lease to expire {self.timeout_s:.0f} s after its last renewal "
                f"(checkpoint.lease_timeout_s); a retry then takes the run over")

    def renew(self) -> None:
        """Write the next renewal if the lease is still this job's; LeaseLostError when another took it."""
        began = time.monotonic()
        current = self.read()
        if current is None or current.holder != self.holder:
            self._lose(current)
        aged = began - self._last_write_started > self.timeout_s / 2
        self._last_write_started = began
        self._write(self.renewals + 1, current.taken_at)
        self.renewals += 1
        if aged or time.monotonic() - began > self.settle_s:
            # A lease this old might have been judged stale, and a slow write might have crossed a
            # takeover: make sure the record that stays is ours.
            self.sleep(self.settle_s)
            back = self.read()
            if back is None or (back.holder, back.renewals) != (self.holder, self.renewals):
                self._lose(back)

    def _lose(self, now: LeaseRecord | None) -> None:
        self.held = False
        self.lost = LeaseLostError(f"this job lost the writer lease of {self.run_path} "
                                   f"(now: {now.describe() if now else 'no lease'}); it stops writing to the run")
        raise self.lost

    @contextlib.contextmanager
    def kept_alive(self, on_lost: Callable[[], None] = lambda: None) -> Iterator["WriterLease"]:
        """Renew the lease every `timeout_s / 4` in a thread while the block runs. A storage that does
        not answer is retried at the next period; a lost lease is logged, kept in `self.lost`, and
        `on_lost()` called (the training driver interrupts its fit)."""
        stop = threading.Event()

        def renew_forever() -> None:
            while not stop.wait(self.renew_every_s):
                try:
                    self.renew()
                except LeaseLostError as error:
                    log.error("%s", error)
                    on_lost()
                    return
                except OSError as error:
                    log.warning("could not renew the writer lease of %s (%s); trying again in %.0f s",
                                self.run_path, str(error)[:200], self.renew_every_s)

        thread = threading.Thread(target=renew_forever, name="isrn-lease", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(timeout=60)

    def check(self) -> None:
        """LeaseLostError unless the stored lease is this job's (before a write that must be ours)."""
        if self.lost is not None:
            raise self.lost
        check_held(self.filesystem, self.path, self.holder)

    def release(self) -> None:
        """Delete the lease if it is still this job's; leave another's alone."""
        if not self.held:
            return
        self.held = False
        current = self.read()
        if current is None or current.holder != self.holder:
            log.warning("the writer lease of %s is no longer this job's (now: %s); leaving it", self.run_path,
                        current.describe() if current else "none")
            return
        with contextlib.suppress(FileNotFoundError):
            self.filesystem.delete_file(self.path)


def check_held(filesystem: Any, lease_path: str, holder: str) -> None:
    """LeaseLostError unless the lease at `lease_path` names `holder` (what a worker checks before it
    prunes or uploads: a driver that lost the run must not write into it)."""
    try:
        with filesystem.open_input_stream(lease_path) as stream:
            current = json.loads(stream.readall()).get("holder")
    except FileNotFoundError:
        current = None
    if current != holder:
        raise LeaseLostError(f"the writer lease {lease_path} is held by {current or 'nobody'}, not this job's driver "
                             f"({holder}): another job took the run over; this one stops writing to it")
