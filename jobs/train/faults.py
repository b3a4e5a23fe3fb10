"""Deterministic fault injection: kill a training worker at a named point, for the platform's fault tests.

    ISRN_FAULT_PLAN='[{"point": "checkpoint_uploaded", "step": 4},
                      {"point": "step_end", "step": 10, "after_commit": true}]'  isrn train smoke

The driver reads `ISRN_FAULT_PLAN` from its environment and hands the plan to the workers with the
rest of the job; unset (always, outside tests) it is empty and nothing here runs. It stays in the
product path because the kills must land inside Ray Train's worker processes at exact points of
the real session (inside Ray's checkpoint upload callback), which a test-installed wrapper would
have to ship to every Ray worker. So that a plan set by accident cannot go unnoticed, an active
plan is logged at WARNING by the driver and by the worker that fires it, and tagged on the MLflow
run (`isrn.fault_plan`); an unknown point or field is an error, and the local platform's head does
not pass the variable on from the shell that started it (jobs/local_platform/services.py). Each fault fires
once per run: before killing, the worker writes `faults/fired-<index>` under the run's storage
folder, and a fault whose record exists is skipped, so a worker group that replays the same steps
after its restart does not die at the same point again.

Points:
- `checkpoint_uploaded`: rank 0, inside the checkpoint upload, after checkpoint `step` is complete in
  storage (its marker written) and before the report reaches Ray: the window in which Ray has not
  registered a checkpoint that is safe in storage.
- `step_end`: on rank `rank` (default 0), after training step `step` and before that step's own
  checkpoint report, if it has one. With `after_commit`, first wait until Ray has committed every
  checkpoint reported so far, so the kill lands after their registration.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

PLAN_VARIABLE = "ISRN_FAULT_PLAN"


POINTS = ("checkpoint_uploaded", "step_end")


@dataclasses.dataclass(frozen=True)
class Fault:
    point: str
    """One of `POINTS`."""
    step: int
    rank: int = 0
    after_commit: bool = False

    def __post_init__(self) -> None:
        if self.point not in POINTS:
            raise ValueError(f"unknown fault point {self.point!r}: the points are {', '.join(POINTS)}")
        for name, value, low in (("step", self.step, 1), ("rank", self.rank, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"fault {name} {value!r}: expected an integer >= {low}")
        if not isinstance(self.after_commit, bool):
            raise ValueError(f"fault after_commit {self.after_commit!r}: expected true or false")

    def describe(self) -> str:
        commit = ", after Ray's commit" if self.after_commit else ""
        return f"{self.point} step {self.step} rank {self.rank}{commit}"


def plan_from_env(environ: Mapping[str, str] | None = None) -> tuple[Fault, ...]:
    """The fault plan of `ISRN_FAULT_PLAN` (empty when unset); a malformed plan is an error, not ignored."""
    text = (os.environ if environ is None else environ).get(PLAN_VARIABLE, "").strip()
    if not text:
        return ()
    try:
        entries = json.loads(text)
        if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
            raise ValueError("not a list of objects")
        return tuple(Fault(**entry) for entry in entries)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{PLAN_VARIABLE}: expected a JSON list of {{point, step, rank?, after_commit?}} "
                         f"with point one of {', '.join(POINTS)}: {error}") from None


def plan_text(plan: tuple[Fault, ...]) -> str:
    """The plan as the JSON `ISRN_FAULT_PLAN` takes (what the run's tag records)."""
    return json.dumps([dataclasses.asdict(fault) for fault in plan])


def due(plan: tuple[Fault, ...], point: str, step: int, rank: int) -> list[int]:
    """Indices of the plan's faults at this point, step and rank."""
    return [i for i, f in enumerate(plan) if f.point == point and f.step == step and f.rank == rank]


def fire(index: int, fault: Fault, filesystem: Any, run_path: str) -> None:
    """Kill this worker process, unless fault `index` already fired in this run (recorded in storage)."""
    from pyarrow import fs

    record = f"{run_path.rstrip('/')}/faults/fired-{index}"
    if filesystem.get_file_info(record).type != fs.FileType.NotFound:
        return
    filesystem.create_dir(record.rsplit("/", 1)[0])
    with filesystem.open_output_stream(record) as out:
        out.write(json.dumps(dataclasses.asdict(fault)).encode())
    log.warning("fault injection: killing worker pid %d at %s step %d", os.getpid(), fault.point, fault.step)
    os.kill(os.getpid(), signal.SIGKILL)
