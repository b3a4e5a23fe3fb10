"""The promotion lock: a registered model `<name>.promotion-lock` that exists while one promotion runs.

    with promotion_lock(client, "isrn-face", LockPolicy(), tracking_uri) as held:
        ...                                   # read the champion, decide, write; held.waited_s

The registry has no compare-and-set, but two of its operations succeed for exactly one caller,
because the tracking database has a unique key on the registered model's name:
- **acquire** `create_registered_model(lock)`: one creator wins, the others get ALREADY_EXISTS;
- **break** `rename_registered_model(lock, tombstone)`: one renamer wins. The others find no lock
  (404), or on PostgreSQL update 0 rows behind the winner's row lock (400, "expected to update 1
  row(s); 0 were matched"), or find the tombstone taken (ALREADY_EXISTS).

Release renames the lock to a name of this promotion's own, reads what it renamed, and deletes it
only if its owner tag is this promotion's token; anyone else's lock (ours was broken and another
promotion took the name) is renamed back: a delete by name after reading the owner could delete a
lock taken between the read and the delete. A lock is stale when its
age by the **server's** clock (the `Date` of a server answer minus the lock's `creation_timestamp`)
exceeds `stale_s`; the clients' clocks never enter. The tombstone is named after the lock instance
(`<lock>.broken-<created ms>-<owner hash>`), and the winner checks that what it renamed is the
instance it judged stale: if a slow waiter renamed a fresh lock instead, it gives it back. A waiter
gives up after `wait_s` > `stale_s`, so it outlives a crashed holder, with an error that names the
holder and the command that clears the lock.

What remains: a holder that runs longer than `stale_s` can have its lock broken under it. It checks
the lock is still its own before it writes (`check_held`), and the default stale age (180 s) is
far above a promotion's few seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterator

from jobs.promotion.errors import (
    ALREADY_EXISTS,
    DOES_NOT_EXIST,
    PromotionError,
    RegistryError,
    already_exists,
    get_or_none,
    is_missing,
)
from jobs.tags import LOCK_OWNER

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".promotion-lock"
LOST_RACE = (DOES_NOT_EXIST, *ALREADY_EXISTS, "BAD_REQUEST")
"""Codes a losing `rename_registered_model` gets; each is checked against the registry's state."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class LockPolicy:
    stale_s: float = 180.0
    """A lock older than this (server clock) belongs to a crashed promotion and is broken."""
    wait_s: float = 240.0
    """How long a promotion waits for the lock; longer than `stale_s`, so it outlives a crashed holder."""
    poll_s: float = 0.5
    """Mean pause between attempts (jittered ±50 % so waiters do not move in step)."""

    def __post_init__(self) -> None:
        if not self.stale_s > 0:
            raise ValueError(f"lock stale age {self.stale_s} s must be > 0")
        if not self.wait_s > self.stale_s:
            raise ValueError(f"lock wait {self.wait_s:g} s must exceed the stale age {self.stale_s:g} s, "
                             "or a waiter gives up before a crashed holder's lock can be broken")
        if not self.poll_s > 0:
            raise ValueError(f"lock poll interval {self.poll_s} s must be > 0")


@dataclasses.dataclass(frozen=True)
class Holder:
    """One instance of a lock: its name, owner token and the server's creation time."""

    lock: str
    owner: str
    created_ms: int

    def same_instance(self, other: Holder | None) -> bool:
        return other is not None and (self.owner, self.created_ms) == (other.owner, other.created_ms)

    def age_s(self, now_ms: float) -> float:
        return (now_ms - self.created_ms) / 1000.0

    def describe(self, now_ms: float) -> str:
        since = dt.datetime.fromtimestamp(self.created_ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"owner {self.owner}, taken at {since} ({self.age_s(now_ms):.0f} s ago by the registry's clock)"


@dataclasses.dataclass(frozen=True)
class HeldLock:
    lock: str
    token: str
    policy: LockPolicy
    waited_s: float
    """Seconds between the first attempt and holding the lock."""
    broken: tuple[Holder, ...] = ()
    """Stale locks this promotion broke on its way in."""


def lock_name(name: str) -> str:
    return name + LOCK_SUFFIX


def is_stale(holder: Holder, now_ms: float, policy: LockPolicy) -> bool:
    return holder.age_s(now_ms) > policy.stale_s


def tombstone_name(holder: Holder) -> str:
    """The name a stale lock is renamed to: one per lock instance, so two breakers of it collide."""
    return f"{holder.lock}.broken-{holder.created_ms}-{hashlib.sha1(holder.owner.encode()).hexdigest()[:8]}"


def new_token() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def break_command(tracking_uri: str, name: str) -> str:
    return f"MLFLOW_TRACKING_URI={tracking_uri} isrn promote --model-name {name} --break-lock"


def server_clock(tracking_uri: str) -> Callable[[], float]:
    """Milliseconds now by the tracking server's clock: the `Date` header of its /health answer.

    For a database URI (no server) the database's clients share this machine's clock. `Date` has a
    resolution of one second and is truncated, so a lock's age reads at most 1 s too young.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return lambda: time.time() * 1000.0
    import email.utils

    import requests

    def now_ms() -> float:
        try:
            answer = requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=10)
        except requests.RequestException as error:
            raise PromotionError(f"MLflow server at {tracking_uri} is unreachable: {error}") from None
        date = answer.headers.get("Date")
        if not date:
            raise PromotionError(f"MLflow server at {tracking_uri} sends no Date header: "
                                 "the lock's age needs the server's clock")
        return email.utils.parsedate_to_datetime(date).timestamp() * 1000.0

    return now_ms


# ---------------------------------------------------------------- registry operations
def read_holder(client, lock: str) -> Holder | None:
    """The lock (or tombstone) as it is now; None when it does not exist."""
    model = get_or_none(lambda: client.get_registered_model(lock), f"read the promotion lock {lock!r}")
    return None if model is None else Holder(lock, model.tags.get(LOCK_OWNER, "unknown"), int(model.creation_timestamp))


def break_lock(client, holder: Holder) -> bool:
    """Remove this lock instance with one atomic rename; True for the one caller that did it."""
    broke = _rename_away(client, holder.lock, tombstone_name(holder), holder.same_instance,
                         f"break the promotion lock {holder.lock!r}",
                         lost_race=lambda: not holder.same_instance(read_holder(client, holder.lock)))
    if broke:
        log.warning("broke the stale promotion lock %s of owner %s", holder.lock, holder.owner)
    return broke


def _rename_away(client, lock: str, tombstone: str, is_expected, doing: str, lost_race) -> bool:
    """Rename `lock` to `tombstone` (atomic: one caller wins) and delete it if what was renamed
    `is_expected(holder)`; otherwise give it back. True when the expected lock was removed.

    A losing rename (the lock gone, the tombstone taken, PostgreSQL's 0 updated rows) is False when
    `lost_race()` confirms the registry's state; any other error is a RegistryError.
    """
    from mlflow.exceptions import MlflowException

    try:
        client.rename_registered_model(lock, tombstone)
    except MlflowException as error:
        if error.error_code not in LOST_RACE or not lost_race():
            raise RegistryError(doing, error) from error
        return False
    renamed = read_holder(client, tombstone)
    if not is_expected(renamed):
        # Between our read and our rename that lock was replaced (broken, or released, and taken
        # afresh): we renamed someone else's. Give it back; should a third promotion have taken the
        # free name meanwhile, the lock's holder stops at `check_held`.
        log.warning("renamed another promotion's lock (%s) by mistake; giving it back", renamed)
        try:
            client.rename_registered_model(tombstone, lock)
        except MlflowException as error:
            log.error("could not give back the promotion lock %s: %s", lock, error)
            _delete(client, tombstone, "delete a promotion lock's tombstone")
        return False
    _delete(client, tombstone, f"delete the tombstone of {lock!r}")
    return True


def check_held(client, held: HeldLock) -> None:
    """Fail, before any write, if this promotion's lock was broken under it."""
    now = read_holder(client, held.lock)
    if now is None or now.owner != held.token:
        raise PromotionError(f"this promotion no longer holds {held.lock!r} (now: {now.owner if now else 'no lock'}): "
                             f"it ran past the stale age of {held.policy.stale_s:g} s and another promotion broke "
                             "its lock; nothing was changed, run it again")


def release(client, held: HeldLock) -> None:
    """Remove the lock if it is still this promotion's, atomically (rename, check, delete); leave anyone
    else's alone."""
    tombstone = f"{held.lock}.released-{hashlib.sha1(held.token.encode()).hexdigest()[:8]}"

    def ours(holder: Holder | None) -> bool:
        return holder is not None and holder.owner == held.token

    def gone_or_not_ours() -> bool:
        return not ours(read_holder(client, held.lock))

    if not _rename_away(client, held.lock, tombstone, ours, f"release the promotion lock {held.lock!r}",
                        lost_race=gone_or_not_ours):
        log.warning("promotion lock %s is no longer ours (now: %s); leaving it", held.lock,
                    read_holder(client, held.lock))


def _delete(client, name: str, doing: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_registered_model(name)
    except MlflowException as error:
        if not is_missing(error):
            raise RegistryError(doing, error) from error


def acquire(client, name: str, policy: LockPolicy, tracking_uri: str,
            now_ms: Callable[[], float] | None = None) -> HeldLock:
    """Take `<name>.promotion-lock`, breaking a stale one; PromotionError after `policy.wait_s`."""
    from mlflow.exceptions import MlflowException

    lock, token = lock_name(name), new_token()
    now_ms = now_ms or server_clock(tracking_uri)
    started, broken = time.monotonic(), []
    while True:
        try:
            client.create_registered_model(lock, tags={LOCK_OWNER: token},
                                           description=f"Held while `isrn promote` of {name} runs; deleted after.")
            return HeldLock(lock, token, policy, time.monotonic() - started, tuple(broken))
        except MlflowException as error:
            # Not found: the holder released between our failed insert and the server's read of the
            # existing model that words its error (MLflow's SQL store); take it again.
            if not (already_exists(error) or is_missing(error)):
                raise RegistryError(f"create the promotion lock {lock!r}", error) from error
        holder = read_holder(client, lock)
        if holder is None:
            continue  # released between our create and our read
        if holder.owner == token:  # our create went through; the client's retry of it found it taken
            return HeldLock(lock, token, policy, time.monotonic() - started, tuple(broken))
        now = now_ms()
        if is_stale(holder, now, policy):
            if break_lock(client, holder):
                broken.append(holder)
            continue
        waited = time.monotonic() - started
        if waited > policy.wait_s:
            raise PromotionError(
                f"another promotion of {name!r} holds {lock!r}: {holder.describe(now)}. Gave up after waiting "
                f"{waited:.0f} s (--lock-wait-s); the lock is broken once older than {policy.stale_s:g} s "
                f"(--lock-stale-s). If that promotion is no longer running, clear the lock with:\n"
                f"  {break_command(tracking_uri, name)}")
        time.sleep(policy.poll_s * random.uniform(0.5, 1.5))


@contextlib.contextmanager
def promotion_lock(client, name: str, policy: LockPolicy, tracking_uri: str,
                   now_ms: Callable[[], float] | None = None) -> Iterator[HeldLock]:
    """Hold `<name>.promotion-lock` for the block; released (if still ours) however the block ends."""
    held = acquire(client, name, policy, tracking_uri, now_ms)
    try:
        yield held
    except BaseException:
        try:
            release(client, held)
        except PromotionError as error:  # the block's own error is the one to report
            log.error("%s; clear it with: %s", error, break_command(tracking_uri, name))
        raise
    release(client, held)


def clear_lock(client, name: str) -> Holder | None:
    """`isrn promote --break-lock`: break the lock whatever its age; returns what it was (None: no lock)."""
    holder = read_holder(client, lock_name(name))
    if holder is not None:
        break_lock(client, holder)  # False: someone else removed it first; gone either way
    return holder
