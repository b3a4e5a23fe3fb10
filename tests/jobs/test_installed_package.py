"""The package as the container image installs it: a wheel, installed outside the checkout, run from
another folder, through `platform/docker-entrypoint.sh` (the image's ENTRYPOINT) too.

What works only from the checkout does not work for users: this test builds the wheel, installs it
into a folder of its own (pip --target), puts that folder first on PYTHONPATH and PATH and runs
every command from an empty folder elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "platform" / "Dockerfile"

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("installed")
    dist, site, away = base / "dist", base / "site", base / "away"
    away.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(REPO)], check=True,
                   capture_output=True, timeout=300)
    (wheel,) = dist.glob("isrn_platform-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True,
                   capture_output=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "RAY_", "ISRN_"))}
    env.update(PYTHONPATH=str(site), PATH=f"{site / 'bin'}{os.pathsep}{os.environ['PATH']}",
               ISRN_STATE_DIR=str(base / "state"))
    return {"site": site, "away": away, "env": env}


def run(installed: dict, *argv: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(list(argv), cwd=installed["away"], env={**installed["env"], **(env or {})},
                          capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def image_command_line(args: list[str]) -> list[str]:
    """What `docker run IMAGE *args` executes: ENTRYPOINT + (args or CMD), with the entrypoint's
    in-image path mapped to its source in platform/."""
    text = DOCKERFILE.read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    assert entrypoint == ["/usr/local/bin/docker-entrypoint.sh"]
    return [str(REPO / "platform" / "docker-entrypoint.sh"), *(args or cmd)]


def test_the_installed_package_is_what_runs(installed):
    out = run(installed, sys.executable, "-c",
              "import jobs, isrn_model, data_shards; print(jobs.__file__, isrn_model.__file__, data_shards.__file__)")
    assert all(path.startswith(str(installed["site"])) for path in out.stdout.split()), out.stdout


def test_every_command_runs_from_any_folder(installed):
    assert "Commands:" in run(installed, "isrn", "--help").stdout
    for command in (["train", "smoke"], ["train", "widerface-r50"], ["train", "pretrain-coco-r50"],
                    ["tune", "tune-smoke"], ["tune", "widerface-r50-tune"]):
        out = run(installed, "isrn", *command, "--dry-run")
        assert out.stdout.startswith(f"name: {command[1]}"), out.stdout[:200]
    # The job environment resolves from the standard variables alone (no platform/local.yaml anywhere).
    out = run(installed, sys.executable, "-c", "from jobs.environment import JobEnvironment; "
              "e = JobEnvironment.resolve(); print(e.tracking_uri, e.ray_address, e.s3.endpoint_url)",
              env={"AWS_ENDPOINT_URL": "http://s3.example:9000", "AWS_ACCESS_KEY_ID": "a",
                   "AWS_SECRET_ACCESS_KEY": "b", "MLFLOW_TRACKING_URI": "http://mlflow.example:5000",
                   "RAY_ADDRESS": "head.example:6379"})
    assert out.stdout.split() == ["http://mlflow.example:5000", "head.example:6379", "http://s3.example:9000"]
    # Nothing running, nothing configured: the status says so (exit 1), it does not crash.
    status = run(installed, "isrn", "platform", "status", check=False)
    assert status.returncode == 1 and "stopped" in status.stdout, status.stdout + status.stderr


def test_the_image_entrypoint_runs_isrn_with_the_install(installed, local_platform, smoke_shards):
    assert "Commands:" in run(installed, *image_command_line([])).stdout  # CMD: --help
    out = run(installed, *image_command_line(["train", "smoke", "--dry-run"]))
    assert out.stdout.startswith("name: smoke")
    # Against a running platform, as a pod talks to its cluster's services.
    env = {**local_platform.config.client_env(), "ISRN_STATE_DIR": str(local_platform.state)}
    listed = run(installed, *image_command_line(["jobs", "list", "--json"]), env=env)
    assert isinstance(json.loads(listed.stdout), list)
    shards = run(installed, *image_command_line(["shards", "inspect", "s3://isrn-shards/test-smoke", "--json"]),
                 env=env)
    assert json.loads(shards.stdout)["splits"]["train"]["images"] == 48
