"""`should_promote`: the pure decision, table-driven."""

from __future__ import annotations

import math

import pytest

from jobs.promotion import Candidate, PromotionRule, should_promote

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
