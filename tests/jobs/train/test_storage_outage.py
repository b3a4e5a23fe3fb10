"""The driver fits again, under the same run name, when the checkpoint storage went away under Ray's controller."""

from __future__ import annotations

import pytest
from ray.train import ControllerError

from jobs.spec import load_spec
from jobs.train import run


class _Trainer:
    def __init__(self, outcomes: list):
        self.outcomes = outcomes

    def fit(self):
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def _fit(outcomes: list, answers: bool = True, max_failures: int = 2):
    spec = load_spec("smoke", [f"scaling.max_failures={max_failures}", "scaling.storage_outage_timeout_s=1"])
    waited = []

    def storage_answers(spec, env, timeout_s):
        waited.append(timeout_s)
        return answers

    made = []

    def make_trainer():
        made.append(1)
        return _Trainer(outcomes)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run, "storage_answers", storage_answers)
        result = run.fit_through_storage_outages(make_trainer, spec, env=None, run_name="smoke-1")
    return result, len(made), waited


def test_a_storage_outage_fits_again_once_the_storage_answers():
    outage = ControllerError(OSError("AWS Error NETWORK_CONNECTION during CreateMultipartUpload"))
    result, trainers, waited = _fit([outage, outage, "result"])
    assert (result, trainers, waited) == ("result", 3, [1.0, 1.0])


def test_outages_count_against_max_failures():
    outage = ControllerError(OSError("down"))
    with pytest.raises(ControllerError):
        _fit([outage, outage, "result"], max_failures=1)


def test_other_controller_errors_and_a_storage_that_stays_down_end_the_run():
    with pytest.raises(ControllerError):
        _fit([ControllerError(ValueError("a bug")), "result"])
    with pytest.raises(OSError, match=r"did not answer for 1 s.*isrn train smoke --resume smoke-1"):
        _fit([ControllerError(OSError("down")), "result"], answers=False)
