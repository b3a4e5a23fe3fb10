"""A Ray Train callback that counts a fit's worker-group failures, for the run's failure budget.

    counter = WorkerFailureCounter()              # in a driver connected to Ray
    TorchTrainer(..., run_config=RunConfig(callbacks=[counter])).fit()
    counter.drain()                               # worker-group failures of that fit

Ray Train restarts a failed worker group up to `FailureConfig.max_failures` times within one fit,
but a fit the driver starts again after a storage outage (jobs/train/run.py) starts counting from
zero: the driver needs the count to give the next fit only what the run has left, and to tell the
failures a storage outage caused (a worker's checkpoint upload or restore that found S3 gone) from
the others. The callback runs
in Ray Train's controller (`UserCallback.after_exception`, once per failed worker-group poll, which
the controller answers with one restart or the end of the fit); the count comes back through a
Ray queue.
"""

from __future__ import annotations

from typing import Any

from ray.train.v2.api.callback import UserCallback

from jobs.train.outages import outage_cause


class WorkerFailureCounter(UserCallback):
    def __init__(self) -> None:
        from jobs.train.driver_queue import driver_queue

        self.queue = driver_queue()

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        causes = [outage_cause(error) for error in worker_exceptions.values()]
        self.queue.put(next((cause for cause in causes if cause), ""))

    def drain(self) -> list[str]:
        """One entry per worker-group failure since the counter was made: the storage outage that caused
        it ("" for another cause). The queue is gone afterwards."""
        failures = []
        while not self.queue.empty():
            failures.append(self.queue.get_nowait())
        self.queue.shutdown()
        return failures
