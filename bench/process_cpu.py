"""Who used the machine's cores during a time window: CPU seconds of every process, by role.

    with ProcessCpu() as cpu:                   # a thread samples every process's CPU time each second
        ...run something...
    cores = cpu.cores_by_role(start, end)      # {"ranks": 1.21, "Ray node services": 0.05, ...}

On a machine whose ranks are CPU-bound, the cores the other processes take are the time the ranks
lose, so this is where a step's time goes that the ranks' own timers (`time_share_*`) cannot see:
Ray's node services and helper actors, the progress queue, the S3 and MLflow servers. A process is
counted from the first sample that sees it (with the CPU it used before, when it was born after the
window began) to the last, under the role its command line names at each sample; what a process
does after the last sample before it exits is missed, at most one interval. The sampler itself takes ~0.015 cores, the same for every mode.
"""

from __future__ import annotations

import bisect
import os
import threading
import time

import psutil

ROLES = (
    "ranks", "loader workers", "Ray Train actors", "Ray node services", "progress queue (Ray actor)",
    "S3 server", "MLflow server", "launcher (torchrun agent)", "bench driver", "other",
)


def role_of(pid: int, command: str, driver_pid: int) -> str:
    """The role of a process from its command line (Ray's workers name themselves `ray::Class.method`)."""
    if pid == driver_pid:
        return "bench driver"
    if "ray::RayTrainWorker" in command or ("torchrun_worker.py" in command and "torchrun " not in command):
        return "ranks"  # (torchrun's agent has "…/torchrun --standalone … torchrun_worker.py" in its command)
    if "torchrun" in command:
        return "launcher (torchrun agent)"
    if "multiprocessing.forkserver" in command or "multiprocessing.spawn" in command:
        return "loader workers"  # the fork server of a rank's DataLoader and the workers it forks
    if "ray::_QueueActor" in command:
        return "progress queue (Ray actor)"
    if any(name in command for name in ("raylet", "gcs_server", "dashboard", "Agent", "log_monitor", "ray/autoscaler",
                                        "ray.util.client.server", "runtime_env", "monitor.py")):
        return "Ray node services"  # (the dashboard and runtime-env agents name themselves ray::…Agent)
    if "ray::" in command or "default_worker.py" in command or "setup_worker.py" in command:
        return "Ray Train actors"  # controller, synchronisation, placement-group cleaner, ... and starting workers
    if "weed" in command:
        return "S3 server"
    if "mlflow" in command or "uvicorn" in command:
        return "MLflow server"
    return "other"


class ProcessCpu:
    """Samples the CPU time (user + system) of every process on the machine every `interval_s`."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.times: list[float] = []
        self.samples: list[dict[int, tuple[str, float]]] = []  # pid -> (role, CPU seconds so far)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="process-cpu")
        self._driver = os.getpid()

    def __enter__(self) -> "ProcessCpu":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            now, sample = time.time(), {}
            # The command line is read every time: a Ray worker starts as `default_worker.py`, waits
            # as `ray::IDLE` and only then becomes `ray::RayTrainWorker`.
            for process in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
                try:
                    role = role_of(process.info["pid"], " ".join(process.info["cmdline"] or ()), self._driver)
                    times = process.info["cpu_times"]
                    sample[process.info["pid"]] = (role, times.user + times.system)
                except (psutil.Error, TypeError):
                    continue
            self.times.append(now)
            self.samples.append(sample)
            self._stop.wait(self.interval_s)

    def cores_by_role(self, start: float, end: float) -> dict[str, float]:
        """Average cores each role used between the first sample at or after `start` and the last at
        or before `end` (empty when fewer than two samples fall in the window)."""
        first, last = bisect.bisect_left(self.times, start), bisect.bisect_right(self.times, end) - 1
        used = dict.fromkeys(ROLES, 0.0)
        if last <= first:
            return {}
        for before, after in zip(self.samples[first:last], self.samples[first + 1:last + 1]):
            for pid, (role, cpu) in after.items():
                previous = before.get(pid)  # absent: born in this interval, its CPU time counts from 0
                used[role] += cpu - previous[1] if previous else cpu
        return {role: seconds / (self.times[last] - self.times[first]) for role, seconds in used.items()}
