"""The fault-injection plan of the platform's own tests: validated, never silently half-read."""

from __future__ import annotations

import json

import pytest

from jobs.train import faults

PLAN = [{"point": "checkpoint_uploaded", "step": 4}, {"point": "step_end", "step": 10, "rank": 1, "after_commit": True}]


def test_a_plan_reads_back_as_it_was_written():
    plan = faults.plan_from_env({faults.PLAN_VARIABLE: json.dumps(PLAN)})
    assert [f.describe() for f in plan] == ["checkpoint_uploaded step 4 rank 0",
                                            "step_end step 10 rank 1, after Ray's commit"]
    assert faults.plan_from_env({faults.PLAN_VARIABLE: faults.plan_text(plan)}) == plan
    assert faults.plan_from_env({}) == ()


@pytest.mark.parametrize("entry, message", [
    ({"point": "step_ends", "step": 3}, "unknown fault point 'step_ends'"),    # a typo used to be ignored
    ({"point": "step_end", "step": 0}, "fault step 0: expected an integer >= 1"),
    ({"point": "step_end", "step": "3"}, "fault step '3'"),
    ({"point": "step_end", "step": 3, "rank": -1}, "fault rank -1"),
    ({"point": "step_end", "step": 3, "after_commit": "yes"}, "fault after_commit 'yes'"),
    ({"point": "step_end", "step": 3, "when": "now"}, "unexpected keyword argument 'when'"),
])
def test_a_bad_plan_is_an_error_naming_what_is_wrong(entry, message):
    with pytest.raises(ValueError, match=rf"{faults.PLAN_VARIABLE}: .*{message}"):
        faults.plan_from_env({faults.PLAN_VARIABLE: json.dumps([entry])})
    with pytest.raises(ValueError, match="not a list of objects"):
        faults.plan_from_env({faults.PLAN_VARIABLE: json.dumps(entry)})
