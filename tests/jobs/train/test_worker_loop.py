"""The training loop's contract, fast on one CPU: reports, checkpoints, resume, non-finite losses."""

from __future__ import annotations

import json

import pytest

from jobs.metrics import CHECKPOINT_SCORE
from jobs.train.checkpoint_store import UNEVALUATED, is_evaluated
from jobs.train.trainer import NonFiniteLossError
from tests.jobs.train.conftest import run_local


def test_reports_per_checkpoint_and_epoch_with_their_own_scores(local_shards, tmp_path, monkeypatch):
    # 3 steps per epoch, 2 epochs, a checkpoint every 2 steps, evaluation after epoch 2 only.
    session, tracker, state = run_local(local_shards, tmp_path, monkeypatch, "loader.batches_per_epoch=3",
                                        "train.epochs=2", "checkpoint.every_steps=2", "eval.every_epochs=2",
                                        "train.log_every_steps=1")
    assert (state.step, state.epoch) == (6, 2)
    # Reports: step 2 (mid-epoch), 3 (epoch 1 end), 4 (mid-epoch), 6 (epoch 2 end; 6 is an epoch end, not twice).
    assert [(r["step"], r["epoch"]) for r in session.reports] == [(2, 0), (3, 1), (4, 1), (6, 2)]
    scores = [r[CHECKPOINT_SCORE] for r in session.reports]
    # Only the evaluated checkpoint (epoch 2) has a score of its own; the others cannot compete.
    assert scores[:3] == [UNEVALUATED] * 3 and is_evaluated(scores[3]) and scores[3] == session.reports[3]["val_ap_hard"]
    # Ray stores its checkpoint bookkeeping as strict JSON (no inf or nan), and restores from it.
    for report in session.reports:
        json.dumps(report, allow_nan=False)
    assert [r["evaluated_epoch"] for r in session.reports] == [0, 0, 0, 2]
    # Every step's losses once, every epoch's time accounted for.
    assert [s for s, _ in tracker.history("loss")] == [1, 2, 3, 4, 5, 6]
    for step, metrics in tracker.metrics:
        shares = {k: v for k, v in metrics.items() if k.startswith("time_share_")}
        if shares:
            assert abs(sum(shares.values()) - 1) < 1e-9 and "time_share_forward" in shares, (step, shares)
            assert "time_share_other" in shares  # the epoch's wall time, not only what the timers cover
    assert [s for s, _ in tracker.history("val_ap_hard")] == [6]
    # Four complete checkpoints, each with its marker; the evaluated one carries its breakdown by face subset.
    assert [c.rsplit("/", 1)[-1] for c in session.store.folders()] == [
        "step_00000002", "step_00000003", "step_00000004", "step_00000006"]
    from pathlib import Path

    from jobs.train.run import breakdown_of_checkpoint

    with_breakdown = [Path(c).name for c in session.store.folders() if breakdown_of_checkpoint(Path(c))]
    assert with_breakdown == ["step_00000006"]
    assert all(not k.startswith("val_ap_hard_") for r in session.reports for k in r)  # Tune's tables stay short


def test_a_new_session_resumes_from_the_newest_complete_checkpoint(local_shards, tmp_path, monkeypatch):
    run_local(local_shards, tmp_path, monkeypatch, "loader.batches_per_epoch=2", "train.epochs=1")
    half = tmp_path / "step_00000009"  # a folder a dead worker left without its marker: never used
    half.mkdir()
    (half / "training_state.pt").write_bytes(b"partial")
    session, tracker, state = run_local(local_shards, tmp_path, monkeypatch, "loader.batches_per_epoch=2",
                                        "train.epochs=2", "train.log_every_steps=1")
    assert tracker.history("resumed_from_step") == [(2, 2)]
    assert [s for s, _ in tracker.history("loss")] == [3, 4]  # epoch 2 only
    assert (state.step, state.epoch) == (4, 2) and session.reports[-1]["step"] == 4


def test_a_non_finite_loss_stops_the_run_naming_the_step(local_shards, tmp_path, monkeypatch):
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step \d+: \{.*'loss_cls_1'"):
        run_local(local_shards, tmp_path, monkeypatch, "loader.batches_per_epoch=4", "optim.lr=1e30",
                  "optim.warmup_steps=0", "train.grad_clip_norm=null", "optim.schedule=constant")


def test_a_run_killed_mid_epoch_ends_with_the_weights_of_an_unkilled_one(local_shards, tmp_path, monkeypatch):
    import torch

    from jobs.train import worker
    from jobs.train.checkpoints import load_checkpoint

    overrides = ("loader.batches_per_epoch=3", "train.epochs=2", "checkpoint.every_steps=2", "eval.every_epochs=9",
                 "train.log_every_steps=1")
    unkilled, _, _ = run_local(local_shards, tmp_path / "a", monkeypatch, *overrides)

    class Killed(RuntimeError):
        pass

    def die_after_step_5(self, step: int) -> None:
        if step == 5:  # the step-4 checkpoint is complete; step 5 is lost with the worker
            raise Killed()

    monkeypatch.setattr(worker.LocalSession, "step_done", die_after_step_5)
    with pytest.raises(Killed):
        run_local(local_shards, tmp_path / "b", monkeypatch, *overrides)
    monkeypatch.undo()
    resumed, tracker, state = run_local(local_shards, tmp_path / "b", monkeypatch, *overrides)
    assert tracker.history("resumed_from_step") == [(4, 4)] and state.step == 6
    # The resumed run skipped the epoch's first batch (trained before the kill) and saw the same data:
    # its weights equal those of the run that was never killed.
    a = load_checkpoint(unkilled.store.latest().path)[1]["model"]
    b = load_checkpoint(resumed.store.latest().path)[1]["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_logged_metric_is_a_named_one(local_shards, tmp_path, monkeypatch):
    """A metric's name is a contract (Tune schedules on it, promotion compares it, users filter on it):
    each one the loop logs is spelt once, in jobs/metrics.py."""
    from jobs import metrics

    _, tracker, _ = run_local(local_shards, tmp_path, monkeypatch, "loader.batches_per_epoch=2",
                              "train.log_every_steps=1")
    from isrn_model.wider_eval import SUBSETS

    named = {value for value in vars(metrics).values() if isinstance(value, str)}
    named |= set(metrics.AP_METRICS) | set(metrics.EVENT_METRICS)
    named |= {metrics.BREAKDOWN_PREFIX + subset.replace("=", "_") for subset in SUBSETS if subset != "all"}
    logged = {key for _, logged in tracker.metrics for key in logged}
    unnamed = {key for key in logged if key not in named and not key.startswith((metrics.TIME_SHARE_PREFIX, "loss_"))}
    assert not unnamed, f"metrics logged without a name in jobs/metrics.py: {sorted(unnamed)}"
    # Every evaluation logs the Hard AP of each face subset that has faces, and the pictures of where it fails.
    assert "val_ap_hard_occlusion_none" in logged and "val_ap_hard_size_small" in logged
    assert {(name.split("_epoch_")[0], folder) for name, folder in tracker.artifacts} >= {
        ("pr", "pr_curves"), ("breakdown", "breakdown"), ("ap_by_subset", "breakdown"), ("failures", "breakdown")}
