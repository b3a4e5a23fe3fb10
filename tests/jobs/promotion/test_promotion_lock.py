"""The promotion lock's logic against an in-memory registry with the real one's atomic operations.

The fake holds registered models by name; create, rename and delete are atomic (one mutex) and fail
with the error codes the MLflow server sends. Time is the fake server's clock, which the tests move:
the client's clock never decides staleness.
"""

from __future__ import annotations

import threading
import types

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST

from jobs.promotion.errors import PromotionError, RegistryError
from jobs.promotion.lock import (
    Holder,
    LockPolicy,
    acquire,
    break_lock,
    clear_lock,
    is_stale,
    promotion_lock,
    read_holder,
    release,
    tombstone_name,
)
from jobs.tags import LOCK_OWNER

NAME, LOCK = "face", "face.promotion-lock"
URI = "http://registry:5000"
FAST = LockPolicy(stale_s=10.0, wait_s=12.0, poll_s=0.001)


class FakeRegistry:
    """Registered models by name, with the server's clock in `now_ms`."""

    def __init__(self) -> None:
        self.models: dict[str, types.SimpleNamespace] = {}
        self.now_ms = 1_000_000.0
        self.mutex = threading.Lock()
        self.before_rename = lambda name, new_name: None
        self.before_delete = lambda name: None

    def create_registered_model(self, name, tags=None, description=None):
        with self.mutex:
            if name in self.models:
                raise MlflowException(f"Registered Model (name={name}) already exists.", RESOURCE_ALREADY_EXISTS)
            self.models[name] = types.SimpleNamespace(name=name, tags=dict(tags or {}),
                                                      creation_timestamp=int(self.now_ms))

    def get_registered_model(self, name):
        with self.mutex:
            if name not in self.models:
                raise MlflowException(f"Registered Model with name={name} not found", RESOURCE_DOES_NOT_EXIST)
            return self.models[name]

    def rename_registered_model(self, name, new_name):
        self.before_rename(name, new_name)
        with self.mutex:
            if name not in self.models:
                raise MlflowException(f"Registered Model with name={name} not found", RESOURCE_DOES_NOT_EXIST)
            if new_name in self.models:
                raise MlflowException(f"Registered Model (name={new_name}) already exists.", RESOURCE_ALREADY_EXISTS)
            self.models[new_name] = self.models.pop(name)

    def delete_registered_model(self, name):
        self.before_delete(name)
        with self.mutex:
            if self.models.pop(name, None) is None:
                raise MlflowException(f"Registered Model with name={name} not found", RESOURCE_DOES_NOT_EXIST)

    def take(self, owner: str) -> Holder:
        """A lock held by `owner` (a promotion that then crashes, say), created now."""
        self.create_registered_model(LOCK, tags={LOCK_OWNER: owner})
        return read_holder(self, LOCK)


def test_policy_wait_must_outlive_the_stale_age() -> None:
    assert LockPolicy().wait_s > LockPolicy().stale_s
    with pytest.raises(ValueError, match="must exceed the stale age"):
        LockPolicy(stale_s=60, wait_s=60)


def test_staleness_is_the_servers_age_of_the_lock() -> None:
    holder = Holder(LOCK, "a", created_ms=50_000)
    assert not is_stale(holder, 60_000, FAST)  # 10.0 s old: not older than 10 s
    assert is_stale(holder, 60_001, FAST)


def test_acquire_release_and_only_the_owner_releases() -> None:
    registry = FakeRegistry()
    with promotion_lock(registry, NAME, FAST, URI, lambda: registry.now_ms) as held:
        assert read_holder(registry, LOCK).owner == held.token and held.broken == ()
    assert LOCK not in registry.models
    held = acquire(registry, NAME, FAST, URI, lambda: registry.now_ms)
    registry.delete_registered_model(LOCK)  # broken under it, and someone else takes it
    registry.take("other")
    release(registry, held)
    assert read_holder(registry, LOCK).owner == "other"


def test_release_never_deletes_a_lock_taken_while_it_releases() -> None:
    """Our lock is broken and another promotion takes the name just before our release acts: a read of
    the owner followed by a delete by name would delete the other's lock. Release renames first,
    checks what it renamed, and gives back what is not ours."""
    registry = FakeRegistry()
    held = acquire(registry, NAME, FAST, URI, lambda: registry.now_ms)

    def broken_and_retaken(*_: str) -> None:
        if LOCK in registry.models and read_holder(registry, LOCK).owner == held.token:
            registry.models.pop(LOCK)
            registry.take("other")

    registry.before_rename = broken_and_retaken  # the release's first mutation, whichever it is
    registry.before_delete = broken_and_retaken
    release(registry, held)
    assert read_holder(registry, LOCK).owner == "other"
    assert set(registry.models) == {LOCK}  # no tombstone left either
    # Released normally, the lock and its tombstone are gone.
    registry.models.clear()
    registry.before_rename = registry.before_delete = lambda *_: None
    held = acquire(registry, NAME, FAST, URI, lambda: registry.now_ms)
    release(registry, held)
    assert registry.models == {}


def test_a_crashed_holders_lock_is_broken_after_the_stale_age_by_the_servers_clock() -> None:
    registry = FakeRegistry()
    registry.take("crashed:1:dead")
    ticks = iter([registry.now_ms + 5_000, registry.now_ms + 10_500])  # 5 s old, then 10.5 s old

    def server_now() -> float:
        registry.now_ms = next(ticks)
        return registry.now_ms

    held = acquire(registry, NAME, FAST, URI, server_now)
    assert [h.owner for h in held.broken] == ["crashed:1:dead"]
    assert set(registry.models) == {LOCK}  # the tombstone is deleted
    assert read_holder(registry, LOCK).owner == held.token


def test_two_waiters_break_the_same_stale_lock_once() -> None:
    registry = FakeRegistry()
    stale = registry.take("crashed")
    assert [break_lock(registry, stale), break_lock(registry, stale)] == [True, False]
    assert registry.models == {}


def test_a_slow_breaker_does_not_break_the_fresh_lock_that_replaced_the_stale_one() -> None:
    registry = FakeRegistry()
    stale = registry.take("crashed")
    # Waiter B judged `stale` stale; before its rename lands, waiter A breaks it and takes a fresh lock.
    assert break_lock(registry, stale)
    registry.now_ms += 1
    fresh = registry.take("A")
    assert not break_lock(registry, stale)  # B renames A's lock, sees it is not the stale one, gives it back
    assert read_holder(registry, LOCK) == fresh and set(registry.models) == {LOCK}


def test_a_waiter_gives_up_naming_the_holder_and_the_command_that_clears_the_lock() -> None:
    registry = FakeRegistry()
    registry.take("host-7:4242:abcd")  # the server clock stands still: never stale
    with pytest.raises(PromotionError) as error:
        acquire(registry, NAME, LockPolicy(stale_s=0.05, wait_s=0.06, poll_s=0.001), URI, lambda: registry.now_ms)
    message = str(error.value)
    assert "holds 'face.promotion-lock': owner host-7:4242:abcd" in message and "--lock-wait-s" in message
    assert f"MLFLOW_TRACKING_URI={URI} isrn promote --model-name face --break-lock" in message
    assert clear_lock(registry, NAME).owner == "host-7:4242:abcd" and registry.models == {}
    assert clear_lock(registry, NAME) is None


def test_our_own_create_retried_by_the_client_counts_as_acquired() -> None:
    registry = FakeRegistry()
    create = registry.create_registered_model

    def create_then_lose_the_answer(name, tags=None, description=None):
        create(name, tags, description)  # the server did it; the client's retry then hears "already exists"
        raise MlflowException("already exists", RESOURCE_ALREADY_EXISTS)

    registry.create_registered_model = create_then_lose_the_answer
    held = acquire(registry, NAME, FAST, URI, lambda: registry.now_ms)
    assert read_holder(registry, LOCK).owner == held.token and held.waited_s < 1


def test_registry_errors_are_not_read_as_a_free_lock() -> None:
    registry = FakeRegistry()
    stale = registry.take("crashed")

    def fail(name, new_name):
        raise MlflowException("database unavailable", INTERNAL_ERROR)

    registry.before_rename = fail
    with pytest.raises(RegistryError, match="break the promotion lock .* INTERNAL_ERROR.*database unavailable"):
        break_lock(registry, stale)
    assert read_holder(registry, LOCK) == stale and tombstone_name(stale) not in registry.models


def test_a_lock_released_while_the_server_answers_our_create_is_tried_again() -> None:
    registry = FakeRegistry()
    registry.take("holder")
    create = registry.create_registered_model

    def create_racing_the_release(name, tags=None, description=None):
        registry.create_registered_model = create
        registry.delete_registered_model(name)  # the holder releases after our insert failed
        raise MlflowException(f"Registered Model with name={name} not found", RESOURCE_DOES_NOT_EXIST)

    registry.create_registered_model = create_racing_the_release
    held = acquire(registry, NAME, FAST, URI, lambda: registry.now_ms)
    assert read_holder(registry, LOCK).owner == held.token
