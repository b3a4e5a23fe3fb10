"""The image's entrypoint, run here without Docker as the same command line, starts a job against
the local platform; `isrn jobs logs` then shows its output.

`docker run IMAGE submit jobs/specs/smoke.yaml --address URL` runs
`/usr/local/bin/docker-entrypoint.sh submit ...` (ENTRYPOINT + arguments) in ISRN_HOME, which
becomes `isrn submit ...`. Here the same script runs from platform/, in the repository root (the
image's working directory holds the same jobs/specs), with the venv's `isrn` on PATH.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "platform" / "Dockerfile"
JOB_ID = re.compile(r"submitted job (raysubmit_\w+)")

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def image_command_line(args: list[str]) -> list[str]:
    """What `docker run IMAGE *args` executes: ENTRYPOINT + (args or CMD), with the entrypoint's
    in-image path mapped to its source in platform/."""
    text = DOCKERFILE.read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    assert entrypoint == ["/usr/local/bin/docker-entrypoint.sh"]
    return [str(REPO / "platform" / "docker-entrypoint.sh"), *(args or cmd)]


def test_image_entrypoint_submits_the_smoke_job(platform_env, tmp_path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    argv = image_command_line([
        "submit", "jobs/specs/smoke.yaml", "--address", platform_env.config.ray_dashboard_url,
        "--set", "train.epochs=1", "--set", f"data.synth.root={tmp_path / 'smoke-data'}",
        "--set", "data.shards=s3://isrn-shards/test-smoke",
    ])
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    job_id = JOB_ID.search(done.stdout)
    assert job_id, done.stdout[-2000:]
    assert f"job {job_id.group(1)} SUCCEEDED" in done.stdout

    from jobs.cli import main

    logs = CliRunner().invoke(main, ["jobs", "logs", job_id.group(1)])
    assert logs.exit_code == 0 and "finished: val_ap_easy=" in logs.output, logs.output[-2000:]
    listed = CliRunner().invoke(main, ["jobs", "list"])
    assert job_id.group(1) in listed.output
