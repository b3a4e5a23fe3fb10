"""Checkpoint folders with completion markers, on the local pyarrow filesystem (S3 in the Ray tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.train import faults
from jobs.train.checkpoint_store import COMPLETE_MARKER, CheckpointStore, checkpoint_dir_name, step_of


def _checkpoint(tmp_path: Path, name: str, payload: bytes = b"weights") -> Path:
    directory = tmp_path / name
    directory.mkdir()
    (directory / "training_state.pt").write_bytes(payload)
    (directory / "nested").mkdir()
    (directory / "nested" / "extra.txt").write_text("x")
    return directory


def test_step_names_sort_by_step_and_parse_back():
    assert checkpoint_dir_name(12) == "step_00000012"
    assert step_of("bucket/runs/r/step_00000012") == 12 and step_of("bucket/runs/r/step_00000012/") == 12
    assert step_of("bucket/runs/r/checkpoint_2026-11-29_07-08-15.123") is None
    assert sorted([checkpoint_dir_name(100), checkpoint_dir_name(9)]) == ["step_00000009", "step_00000100"]


def test_upload_writes_the_marker_last_and_latest_skips_incomplete_folders(tmp_path):
    store = CheckpointStore.local(tmp_path / "run")
    first = store.upload(_checkpoint(tmp_path, "a"), step=4, epoch=0, metrics={"loss": 1.5})
    marker = json.loads((Path(first) / COMPLETE_MARKER).read_text())
    assert marker == {"step": 4, "epoch": 0, "files": {"nested/extra.txt": 1, "training_state.pt": 7},
                      "metrics": {"loss": 1.5}}
    # A later upload that died before its marker: files there, no marker. Never used.
    half = Path(store.path_of(8))
    half.mkdir()
    (half / "training_state.pt").write_bytes(b"half")
    assert store.latest().step == 4 and store.latest().path == first
    assert store.read(str(half)) is None

    assert store.prune_incomplete() == [str(half)] and not half.exists()
    second = store.upload(_checkpoint(tmp_path, "b", b"newer"), step=6, epoch=1)
    assert store.latest().step == 6
    restored = store.download(second, tmp_path / "restored")
    assert (restored / "training_state.pt").read_bytes() == b"newer"
    assert (restored / "nested" / "extra.txt").read_text() == "x"


def test_prune_except_keeps_the_given_folders_and_anything_complete_and_newer(tmp_path):
    store = CheckpointStore.local(tmp_path / "run")
    paths = [store.upload(_checkpoint(tmp_path, f"c{step}"), step=step, epoch=0) for step in (4, 6, 8, 12)]
    half = Path(store.path_of(14))
    half.mkdir()  # a half upload: no marker
    (tmp_path / "run" / "faults").mkdir()  # not a checkpoint folder: left alone
    # Kept by Ray: 6 and 8, named with another prefix (matched by step). 4 is older and unkept: pruned;
    # 12 is complete and newer than anything kept: never deleted; 14 is incomplete: pruned.
    assert store.prune_except({"s3://elsewhere/step_00000006/", "x/step_00000008"}) == [paths[0], str(half)]
    assert store.folders() == paths[1:] and (tmp_path / "run" / "faults").is_dir()
    assert store.prune_except(set()) == [] and store.folders() == paths[1:]  # nothing kept: complete ones stay


def test_an_empty_or_missing_run_has_no_checkpoint(tmp_path):
    assert CheckpointStore.local(tmp_path / "nothing").latest() is None


def test_fault_plan_parses_and_fires_once(tmp_path, monkeypatch):
    assert faults.plan_from_env({}) == ()
    plan = faults.plan_from_env({"ISRN_FAULT_PLAN": '[{"point": "step_end", "step": 3, "rank": 1}]'})
    assert plan == (faults.Fault(point="step_end", step=3, rank=1),)
    assert faults.due(plan, "step_end", 3, 1) == [0] and faults.due(plan, "step_end", 3, 0) == []
    with pytest.raises(ValueError, match="ISRN_FAULT_PLAN: expected a JSON list"):
        faults.plan_from_env({"ISRN_FAULT_PLAN": '[{"point": "step_end"}]'})

    killed = []
    monkeypatch.setattr(faults.os, "kill", lambda pid, sig: killed.append(pid))
    store = CheckpointStore.local(tmp_path / "run")
    faults.fire(0, plan[0], store.filesystem, store.run_path)
    faults.fire(0, plan[0], store.filesystem, store.run_path)  # recorded in storage: not again
    assert len(killed) == 1 and (tmp_path / "run" / "faults" / "fired-0").is_file()


def _session_over(store: CheckpointStore, registered: str | None, monkeypatch):
    """A rank-0 `RaySession` over `store` whose Ray registered checkpoint is the folder `registered`."""
    import types

    import ray.train
    import torch

    from jobs.train.session import RaySession

    session = object.__new__(RaySession)
    session.rank, session.world_size, session.store = 0, 1, store
    session.faults, session.lease, session._restore_copy = (), None, None
    session.device = lambda: torch.device("cpu")  # one rank: the broadcast is the value itself
    checkpoint = None if registered is None else types.SimpleNamespace(path=registered)
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: checkpoint)
    return session


def test_a_registered_checkpoint_without_its_marker_is_never_loaded(tmp_path, monkeypatch):
    """Ray registered step 12, but its folder has no marker (never read back): resume from the newest
    complete folder (step 8), and the unmarked folder is pruned, not loaded after its deletion."""
    store = CheckpointStore.local(tmp_path / "run")
    store.upload(_checkpoint(tmp_path, "a", b"step-8"), step=8, epoch=1)
    unmarked = Path(store.path_of(12))
    unmarked.mkdir()
    (unmarked / "training_state.pt").write_bytes(b"half of step 12")
    session = _session_over(store, str(unmarked), monkeypatch)
    restored = session.restore_dir()
    assert (restored / "training_state.pt").read_bytes() == b"step-8"
    assert not unmarked.exists()


def test_the_registered_checkpoint_is_used_once_its_marker_is_read_back(tmp_path, monkeypatch):
    store = CheckpointStore.local(tmp_path / "run")
    store.upload(_checkpoint(tmp_path, "a", b"step-8"), step=8, epoch=1)
    registered = store.upload(_checkpoint(tmp_path, "b", b"step-12"), step=12, epoch=2)
    session = _session_over(store, registered, monkeypatch)
    assert (session.restore_dir() / "training_state.pt").read_bytes() == b"step-12"
    # The newest complete folder wins over an older registration (a report Ray never collected).
    newer = store.upload(_checkpoint(tmp_path, "c", b"step-16"), step=16, epoch=2)
    session = _session_over(store, registered, monkeypatch)
    assert (session.restore_dir() / "training_state.pt").read_bytes() == b"step-16" and newer
