"""Every command that talks to MLflow fails within seconds, naming the URL, when the server does not answer.

The "server" accepts connections and never answers (a listening socket nobody reads), which is
what a hung or firewalled tracking server looks like; MLflow's own client retries such a server
for minutes. `isrn jobs` and `isrn submit` talk to the Ray Jobs API only.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from jobs.cli import main

LIMIT_S = 15.0  # the health check's 5 s, plus the command's own start on a busy 2-core machine


@pytest.fixture(scope="module")
def silent_server():
    """http://127.0.0.1:PORT of a server that takes connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    import cv2

    path = tmp_path_factory.mktemp("images") / "face.jpg"
    cv2.imwrite(str(path), np.zeros((32, 32, 3), np.uint8))
    return path


COMMANDS = {
    "detect": lambda image: ["detect", str(image), "--model", "models:/isrn-face@champion"],
    "evaluate --model": lambda image: ["evaluate", "--model", "models:/isrn-face@champion", "--shards",
                                       str(image.parent)],
    "promote": lambda image: ["promote", "--experiment", "isrn-smoke"],
    "train": lambda image: ["train", "smoke"],
    "train --resume": lambda image: ["train", "smoke", "--resume", "smoke-20261129-101500-3fa9c1"],
    "tune": lambda image: ["tune", "tune-smoke"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_silent_tracking_server_fails_the_command_in_seconds(command, silent_server, image, monkeypatch):
    # What each command imports is loaded before the clock starts: the check is what is timed.
    import jobs.commands.detect  # noqa: F401
    import jobs.train.driver  # noqa: F401
    import jobs.tune.study  # noqa: F401

    monkeypatch.setenv("MLFLOW_TRACKING_URI", silent_server)
    started = time.monotonic()
    result = CliRunner().invoke(main, COMMANDS[command](image))
    elapsed = time.monotonic() - started
    assert result.exit_code != 0, result.output
    assert f"the MLflow server at {silent_server}" in result.output and "does not answer" in result.output, \
        result.output
    assert elapsed < LIMIT_S, f"isrn {command}: {elapsed:.1f} s"
