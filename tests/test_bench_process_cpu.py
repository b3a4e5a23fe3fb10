"""bench/process_cpu.py: which role a process plays, and the cores each role used in a window."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from process_cpu import ProcessCpu, role_of  # noqa: E402

VENV = "/venv/bin/python"


@pytest.mark.parametrize(("command", "role"), [
    ("ray::RayTrainWorker.run_train_fn", "ranks"),
    (f"{VENV} -u /repo/bench/torchrun_worker.py run.json result.json", "ranks"),
    (f"{VENV} /venv/bin/torchrun --standalone --nproc-per-node=2 /repo/bench/torchrun_worker.py a b",
     "launcher (torchrun agent)"),
    (f"{VENV} -c from multiprocessing.forkserver import main; main(9, 10, ['data_shards.loader'])", "loader workers"),
    ("ray::_QueueActor.get", "progress queue (Ray actor)"),
    ("ray::TrainController.run", "Ray Train actors"),
    ("ray::IDLE", "Ray Train actors"),
    (f"{VENV} /venv/lib/python3.11/site-packages/ray/_private/workers/default_worker.py --node-ip-address=x",
     "Ray Train actors"),
    ("ray::DashboardAgent", "Ray node services"),
    ("/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --raylet_socket_name=x", "Ray node services"),
    ("/venv/lib/python3.11/site-packages/ray/core/src/ray/gcs/gcs_server --gcs_server_port=1", "Ray node services"),
    ("/venv/bin/weed mini -dir=/tmp/s3", "S3 server"),
    (f"{VENV} -m uvicorn --log-config x mlflow.server.fastapi_app:app", "MLflow server"),
    ("/usr/sbin/sshd -D", "other"),
])
def test_role_of_a_command_line(command: str, role: str) -> None:
    assert role_of(123, command, driver_pid=1) == role


def test_the_driver_is_known_by_its_pid() -> None:
    assert role_of(1, "ray::RayTrainWorker", driver_pid=1) == "bench driver"


def test_cores_by_role_counts_deltas_newborns_and_renamed_processes() -> None:
    cpu = ProcessCpu()
    cpu.times = [0.0, 1.0, 2.0, 3.0]
    cpu.samples = [
        {10: ("ranks", 5.0), 11: ("Ray Train actors", 1.0)},
        {10: ("ranks", 5.9), 11: ("Ray Train actors", 1.5)},           # window starts here
        {10: ("ranks", 6.7), 11: ("ranks", 2.3), 12: ("S3 server", 0.2)},  # 11 renamed itself; 12 born
        {10: ("ranks", 7.7), 11: ("ranks", 3.3), 12: ("S3 server", 0.3)},
    ]
    cores = cpu.cores_by_role(0.5, 3.0)  # samples 1..3: 2 s
    assert cores["ranks"] == pytest.approx((7.7 - 5.9 + 3.3 - 1.5) / 2)
    assert cores["S3 server"] == pytest.approx(0.3 / 2)
    assert cores["Ray Train actors"] == 0.0
    assert cpu.cores_by_role(2.5, 3.0) == {}  # one sample in the window: nothing to say
