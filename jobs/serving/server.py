"""MLflow's scoring server for a model URI as a child process: started, answering, stopped.

    with scoring_server("models:/isrn-face@champion", port=8080, log_path=Path("server.log")) as url:
        requests.post(f"{url}/invocations", json={"dataframe_split": ...})

It runs exactly the command a deployment runs, `mlflow models serve -m URI --env-manager local`
(this interpreter's environment: the package is installed here), on 127.0.0.1. The server's own
`MLFLOW_TRACKING_URI` resolves `models:/` URIs. For tests and benches; a deployment runs the command.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def scoring_server(model_uri: str, port: int, log_path: Path, *, timeout_s: float = 600) -> Iterator[str]:
    """Serve `model_uri` on 127.0.0.1:`port` (output to `log_path`); yields its URL once `/ping` answers.

    Raises RuntimeError with the end of the log if the server exits or does not answer in `timeout_s`.
    """
    import requests

    # `mlflow models serve` execs `uvicorn`, which lives beside this interpreter.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
               "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"mlflow models serve exited ({server.returncode}): {log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow models serve did not answer {url}/ping in {timeout_s:.0f} s: "
                                   f"{log_path.read_text()[-3000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/ping", timeout=5).status_code == 200:
                    break
            time.sleep(1)
        yield url
    finally:
        # The whole group: the mlflow CLI and the uvicorn it started.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
