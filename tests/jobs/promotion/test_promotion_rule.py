"""The pure decision, table-driven: `should_promote`, which runs are candidates (`assess`, `rank`), the UI text."""

from __future__ import annotations

import math

import pytest

from jobs.promotion.decision import Candidate, ModelRecord, PromotionRule, assess, rank, should_promote
from jobs.promotion.notes import model_description, version_description
from jobs.tags import MODEL_URI

VAL = "val-aaaa"
RULE = PromotionRule(metric="val_ap_hard", margin=0.01)


def cand(run: str, ap: float | None, manifest: str | None = VAL, version: str | None = None) -> Candidate:
    return Candidate(run_id=run, metric=ap, val_manifest=manifest, version=version)


CASES = [
    # (candidate, champion, rule, promote, words in the reason)
    (cand("a", 0.30), None, RULE, True, "no champion yet"),
    (cand("a", 0.30), cand("b", 0.25, version="1"), RULE, True, "by 0.0500"),  # 0.30 - 0.25 = 0.05 >= 0.01
    (cand("a", 0.26), cand("b", 0.25, version="1"), RULE, True, "by 0.0100"),  # exactly the margin: 0.26 - 0.25
    (cand("a", 0.255), cand("b", 0.25, version="1"), RULE, False, "does not beat"),  # 0.005 < 0.01
    (cand("a", 0.20), cand("b", 0.25, version="1"), RULE, False, "does not beat champion v1"),
    (cand("a", 0.25), cand("b", 0.25, version="1"), PromotionRule(margin=0.0), False, "does not beat"),  # a tie never wins
    (cand("a", 0.2501), cand("b", 0.25, version="1"), PromotionRule(margin=0.0), True, "beats"),
    (cand("a", 0.90), cand("a", 0.90, version="3"), RULE, False, "already the champion v3"),
    (cand("a", 0.90), cand("b", 0.25, manifest="val-bbbb", version="1"), RULE, False, "not comparable"),
    (cand("a", None), None, RULE, False, "has no val_ap_hard"),
    (cand("a", math.nan), cand("b", 0.25), RULE, False, "has no val_ap_hard"),
    (cand("a", 0.30), cand("b", None, version="2"), RULE, True, "champion v2 has no recorded"),
    # lower is better (a loss): 0.8 vs champion 1.0 gains 0.2
    (cand("a", 0.8), cand("b", 1.0), PromotionRule(metric="loss", margin=0.1, higher_is_better=False), True, "by 0.2000"),
    (cand("a", 1.2), cand("b", 1.0), PromotionRule(metric="loss", margin=0.1, higher_is_better=False), False, "does not"),
]


@pytest.mark.parametrize("candidate, champion, rule, promote, reason", CASES)
def test_should_promote(candidate, champion, rule, promote, reason) -> None:
    decision = should_promote(candidate, champion, rule)
    assert decision.promote is promote
    assert reason in decision.reason


# ---------------------------------------------------------------- which runs are candidates
def record(run: str, metrics: dict[str, float] | None, *, manifest: str | None = VAL, uri: str | None = "models:/m-1",
           measured_on: dict[str, str] | None = None, end: int = 0) -> ModelRecord:
    return ModelRecord(run_id=run, val_manifest=manifest, model_uri=uri, model_metrics=metrics,
                       metric_manifests=measured_on or {}, end_time=end)


AP = {"val_ap_easy": 0.5, "val_ap_medium": 0.4, "val_ap_hard": 0.3}
REJECTIONS = [
    (record("r", AP, uri=None), f"no logged model (tag {MODEL_URI})"),
    (record("r", AP, uri="runs:/r/model"), "is not an MLflow 3 logged model"),
    (record("r", None), "logged model m-1 was not found"),
    # the run logged val_ap_hard, but the model carries only Easy: the run's number may be another checkpoint's
    (record("r", {"val_ap_easy": 0.5}), "has no val_ap_hard of its own (its metrics: val_ap_easy)"),
    (record("r", {"val_ap_hard": math.nan}), "val_ap_hard = NaN"),
    (record("r", AP, manifest=None), "no val manifest"),
    (record("r", AP, measured_on={"val_ap_hard": "val-old"}),
     "measured on val manifest val-old, but the run validated on val-aaaa"),
]


@pytest.mark.parametrize("rec, reason", REJECTIONS)
def test_a_run_is_not_a_candidate_without_its_models_own_numbers(rec, reason) -> None:
    outcome = assess(rec, RULE)
    assert isinstance(outcome, str) and reason in outcome


def test_a_candidate_carries_its_models_scores() -> None:
    outcome = assess(record("r", AP, measured_on={"val_ap_hard": VAL}), RULE)
    assert isinstance(outcome, Candidate)
    assert outcome.metric == 0.3 and outcome.scores == AP and outcome.val_manifest == VAL
    assert outcome.model_uri == "models:/m-1"


def test_rank_takes_the_best_model_and_lists_the_others() -> None:
    ranking = rank([record("a", {"val_ap_hard": 0.3}), record("b", None), record("c", {"val_ap_hard": 0.6}),
                    record("d", {"val_ap_hard": 0.6}, end=5)], RULE)  # c and d tie at 0.6: d finished later
    assert ranking.best is not None and ranking.best.run_id == "d"
    assert [c.run_id for c in ranking.candidates] == ["a", "c", "d"]
    assert [r for r, _ in ranking.rejected] == ["b"]
    lower = rank([record("a", {"loss": 0.3}), record("c", {"loss": 0.6})],
                 PromotionRule(metric="loss", higher_is_better=False))
    assert lower.best is not None and lower.best.run_id == "a"
    assert rank([record("b", None)], RULE).best is None


def test_rank_compares_only_models_evaluated_on_the_champions_val_set() -> None:
    """The best AP over every val manifest (0.9, on val-new) could not be compared with the champion's
    and would hide b, the best of those that can (0.6 on the champion's val-aaaa)."""
    records = [record("a", {"val_ap_hard": 0.9}, manifest="val-new", end=9), record("b", {"val_ap_hard": 0.6}),
               record("c", {"val_ap_hard": 0.4})]
    ranking = rank(records, RULE, champion_manifest=VAL)
    assert ranking.best is not None and ranking.best.run_id == "b"
    assert [c.run_id for c in ranking.candidates] == ["b", "c"]
    (run, why), = ranking.rejected
    assert run == "a" and "evaluated on val manifest val-new, not on the champion's val-aaaa" in why
    # No champion: the newest manifest (of the candidate that finished last) is the reference.
    newest = rank(records, RULE)
    assert newest.best is not None and newest.best.run_id == "a"
    assert sorted(r for r, _ in newest.rejected) == ["b", "c"]
    assert "not on the newest" in newest.rejected[0][1]


def test_rule_rejects_a_negative_margin() -> None:
    with pytest.raises(ValueError, match="margin"):
        PromotionRule(margin=-0.1)


# ---------------------------------------------------------------- what the MLflow UI shows
def test_descriptions_explain_the_model_and_the_decision() -> None:
    rule = PromotionRule(margin=0.01)
    champion = Candidate(run_id="old", metric=0.25, val_manifest=VAL, version="1", scores={"val_ap_hard": 0.25})
    new = Candidate(run_id="new", metric=0.3, val_manifest=VAL, version="2", model_uri="models:/m-9",
                    scores=AP, best_epoch=6, best_step=150)
    decision = should_promote(new, champion, rule)
    text = version_description(new, decision, champion, rule)
    assert text.startswith("**Promoted to `champion`**: candidate val_ap_hard=0.3000 beats champion v1's 0.2500")
    assert "| this version (epoch 6, step 150) | 0.5000 | 0.4000 | 0.3000 |" in text
    assert "| champion v1 at the time | – | – | 0.2500 |" in text  # only Hard was recorded on v1
    about = model_description("isrn-face", rule, new, decision.reason)
    assert "a column `image` of photos" in about and "x1, y1, x2, y2, score" in about and "`previous`" in about
    assert "## Champion: version 2" in about and "| v2 (epoch 6, step 150) | 0.5000 | 0.4000 | 0.3000 |" in about
    assert "None yet" in model_description("isrn-face", rule, None)


def test_the_version_description_shows_both_breakdowns_side_by_side():
    from jobs.promotion.decision import Candidate, Decision, PromotionRule
    from jobs.promotion.notes import version_description

    candidate = Candidate(run_id="new", metric=0.5, val_manifest="m", version="3", scores={
        "val_ap_hard": 0.5, "val_ap_hard_occlusion_heavy": 0.25, "val_ap_hard_size_small": 0.4})
    champion = Candidate(run_id="old", metric=0.45, val_manifest="m", version="2", scores={
        "val_ap_hard": 0.45, "val_ap_hard_occlusion_heavy": 0.3})
    text = version_description(candidate, Decision(True, "beats it"), champion, PromotionRule())
    lines = text.splitlines()
    assert "| Hard AP by face subset | this version | champion v2 at the time |" in lines
    assert "| occlusion=heavy | 0.2500 | 0.3000 |" in lines
    assert "| size=small | 0.4000 | – |" in lines  # the champion carries no value for it: never shown as 0
