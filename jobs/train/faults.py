"""Deterministic fault injection: kill a training worker at a named point, for the platform's fault tests.

    ISRN_FAULT_PLAN='[{"point": "checkpoint_uploaded", "step": 4},
                      {"point": "step_end", "step": 10, "after_commit": true}]'  isrn train smoke

The driver reads `ISRN_FAULT_PLAN` from its environment and hands the plan to the workers with the
rest of the job; unset (always, outside tests) it is empty and nothing here runs. Each fault fires
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
from typing import Any, Literal

log = logging.getLogger(__name__)

PLAN_VARIABLE = "ISRN_FAULT_PLAN"


@dataclasses.dataclass(frozen=True)
class Fault:
    point: Literal["checkpoint_uploaded", "step_end"]
    step: int
    rank: int = 0
    after_commit: bool = False


def plan_from_env(environ: Mapping[str, str] | None = None) -> tuple[Fault, ...]:
    """The fault plan of `ISRN_FAULT_PLAN` (empty when unset); a malformed plan is an error, not ignored."""
    text = (os.environ if environ is None else environ).get(PLAN_VARIABLE, "").strip()
    if not text:
        return ()
    try:
        return tuple(Fault(**entry) for entry in json.loads(text))
    except (ValueError, TypeError) as error:
        raise ValueError(f"{PLAN_VARIABLE}: expected a JSON list of {{point, step, rank?, after_commit?}}: {error}") from None


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
