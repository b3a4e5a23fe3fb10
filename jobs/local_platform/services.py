"""Start, check and stop the three local services as child process sessions we own.

Each service runs in a new process session (`start_new_session=True`) whose id is the pid written
to `<state>/run/<service>.pid`. `down` signals exactly the processes of those sessions, so a Ray
or MLflow started by someone else on the machine is never touched, and the helper processes the
services fork (raylet, gcs_server, uvicorn workers, ...) are not left behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import psutil

from jobs.local_platform.config import PlatformConfig, setting_variables

log = logging.getLogger(__name__)

SERVICE_ORDER = ("s3", "mlflow", "ray")
START_STAGES = (("s3",), ("mlflow", "ray"))
"""How `up` starts the services: MLflow proxies its artifacts to S3, so S3 is healthy first; Ray needs
neither, so it starts beside MLflow (both spend their start importing Python, ~5 and ~3.5 s here)."""
PLATFORM_LABEL = "isrn.io/local-platform"


def is_local_platform(node_labels: Iterable[Mapping[str, str] | None], platform_id: str | None = None) -> bool:
    """Whether a cluster is a local platform, from the labels of its live nodes: one carries
    `PLATFORM_LABEL` (`isrn platform up` labels its head). With `platform_id`, only this machine's own
    platform counts (`isrn submit` sends this shell's settings to nothing else)."""
    values = [(labels or {}).get(PLATFORM_LABEL) for labels in node_labels]
    return any(values) if platform_id is None else platform_id in values
"""A node label of the local head, valued with the state directory's platform id: how a client
recognises this machine's platform by asking the cluster, whatever address reaches it."""


RUNTIME_VARIABLES = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR",
                     "LD_LIBRARY_PATH", "VIRTUAL_ENV", "XDG_STATE_HOME", "ISRN_STATE_DIR", "ISRN_PLATFORM_CONFIG")
"""What a service's process needs from the shell to run (and to find this platform's state again)."""


def service_environment(own: Mapping[str, str], passed: Iterable[str], environ: Mapping[str, str]) -> dict[str, str]:
    """The explicit environment a service starts with: `RUNTIME_VARIABLES` and the locale (LC_*), the
    platform's own `ISRN_<SECTION>_<FIELD>` settings and the variables named in `passed`, as this
    shell has them, then the service's `own` variables. Nothing else of the shell."""
    wanted = set(RUNTIME_VARIABLES) | set(setting_variables()) | set(passed)
    inherited = {name: value for name, value in environ.items() if name in wanted or name.startswith("LC_")}
    return {**inherited, **own}


class PlatformError(RuntimeError):
    """A service of the local platform could not be started, checked or stopped."""


@dataclasses.dataclass(frozen=True)
class ServiceStatus:
    name: str
    url: str
    running: bool
    healthy: bool
    pid: int | None
    log_path: Path
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class _Service:
    name: str
    url: str
    ports: dict[str, int]
    command: list[str]
    env: dict[str, str]
    health: Callable[[], str | None]  # None when healthy, else what is wrong
    start_timeout_s: float
    pass_env: tuple[str, ...] = ()
    """Variables of the starting shell the service also gets (`ray.pass_env` for the head)."""


def _venv_bin(name: str) -> str:
    """An executable of the interpreter's environment (weed, mlflow, ray), not whatever PATH has."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise PlatformError(f"'{name}' not found beside {sys.executable} nor on PATH; run `make setup`")
    return found


def _http_ok(url: str, timeout_s: float = 2.0, headers: dict[str, str] | None = None) -> str | None:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout_s) as response:
            return None if response.status == 200 else f"HTTP {response.status} from {url}"
    except (urllib.error.URLError, OSError) as error:
        return f"{url}: {getattr(error, 'reason', error)}"


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _port_owner(port: int) -> str:
    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                process = psutil.Process(conn.pid)
                return f"pid {conn.pid} ({' '.join(process.cmdline()[:3])})"
    except (psutil.Error, OSError):
        pass
    return "another process"


def _session_processes(sid: int) -> list[psutil.Process]:
    members = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == sid:
                members.append(process)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


class Platform:
    """The local S3, MLflow and Ray services described by one `PlatformConfig`."""

    def __init__(self, config: PlatformConfig) -> None:
        self.config = config
        self.state = config.state_path
        self.run_dir = self.state / "run"
        self.log_dir = self.state / "logs"

    # ---- service definitions -------------------------------------------------------------
    def _s3_service(self) -> _Service:
        c, s3 = self.config, self.config.s3
        ports = {
            "s3": s3.port, "master": s3.master_port, "master grpc": s3.master_port + 10000,
            "volume": s3.volume_port, "volume grpc": s3.volume_port + 10000,
            "filer": s3.filer_port, "filer grpc": s3.filer_port + 10000,
            "webdav": s3.webdav_port, "admin": s3.admin_port, "admin grpc": s3.admin_port + 10000,
            "s3 grpc": s3.port + 10000,
        }
        command = [
            _venv_bin("weed"), "mini", f"-dir={self.state / 's3'}", f"-ip={c.host}", f"-ip.bind={c.host}",
            "-master.telemetry=false", f"-s3.port={s3.port}", f"-s3.port.grpc={s3.port + 10000}",
            f"-master.port={s3.master_port}", f"-master.port.grpc={s3.master_port + 10000}",
            f"-volume.port={s3.volume_port}", f"-volume.port.grpc={s3.volume_port + 10000}",
            f"-filer.port={s3.filer_port}", f"-filer.port.grpc={s3.filer_port + 10000}",
            f"-webdav.port={s3.webdav_port}", f"-admin.port={s3.admin_port}",
            f"-admin.port.grpc={s3.admin_port + 10000}",
            # A busy 8181/9101 would kill the server (docs/platform-notes.md); we use neither.
            "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]
        env = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
        return _Service("s3", c.s3_endpoint, ports, command, env, self._s3_health, 60.0)

    def _s3_client(self):
        import boto3
        from botocore.config import Config

        s3 = self.config.s3
        return boto3.client(
            "s3", endpoint_url=self.config.s3_endpoint, aws_access_key_id=s3.access_key,
            aws_secret_access_key=s3.secret_key, region_name=s3.region,
            config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}),
        )

    def _s3_health(self) -> str | None:
        try:
            self._s3_client().list_buckets()
        except Exception as error:  # noqa: BLE001 - any failure means "not healthy yet"
            return f"{self.config.s3_endpoint}: {error}"
        return None

    def _mlflow_service(self) -> _Service:
        c = self.config
        db = self.state / "mlflow" / "mlflow.db"
        command = [
            _venv_bin("mlflow"), "server", "--host", c.host, "--port", str(c.mlflow.port),
            "--backend-store-uri", f"sqlite:///{db}",
            # Proxied artifacts: clients talk to the server only and need no S3 credentials.
            "--serve-artifacts", "--artifacts-destination", f"s3://{c.s3.bucket_mlflow}/artifacts",
            "--workers", str(c.mlflow.workers),
        ]
        env = {
            "MLFLOW_S3_ENDPOINT_URL": c.s3_endpoint, "AWS_ACCESS_KEY_ID": c.s3.access_key,
            "AWS_SECRET_ACCESS_KEY": c.s3.secret_key, "AWS_DEFAULT_REGION": c.s3.region,
            # MLflow 3's server jobs (GenAI scorers, trace roll-ups; the platform uses none) start a
            # job runner and four Huey consumers: measured here, 10 processes, 2.3 GiB and ~34 CPU
            # seconds in the server's first minute, against 2 processes, 0.5 GiB and ~8 s without,
            # taken from the two cores the first training run needs.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        health = lambda: _http_ok(f"{c.tracking_uri}/health")  # noqa: E731
        return _Service("mlflow", c.tracking_uri, {"mlflow": c.mlflow.port}, command, env, health, 120.0)

    @property
    def ray_temp_dir(self) -> Path:
        # Ray's unix sockets live under its temp dir and their paths must stay under 107 bytes,
        # so the session goes to a short /tmp path derived from the state directory.
        digest = hashlib.sha1(str(self.state).encode()).hexdigest()[:8]
        return Path("/tmp") / f"isrn-ray-{digest}"

    def _ray_service(self) -> _Service:
        c, r = self.config, self.config.ray
        ports = {
            "ray gcs": r.port, "ray dashboard": r.dashboard_port, "ray client": r.client_server_port,
            "ray dashboard agent": r.dashboard_agent_port, "ray agent grpc": r.dashboard_agent_grpc_port,
            "ray metrics": r.metrics_export_port, "ray runtime env agent": r.runtime_env_agent_port,
        }
        command = [
            _venv_bin("ray"), "start", "--head", "--block", f"--node-ip-address={c.host}",
            f"--port={r.port}", "--include-dashboard=true", f"--dashboard-host={c.host}",
            f"--dashboard-port={r.dashboard_port}", f"--ray-client-server-port={r.client_server_port}",
            f"--dashboard-agent-listen-port={r.dashboard_agent_port}",
            f"--dashboard-agent-grpc-port={r.dashboard_agent_grpc_port}",
            f"--metrics-export-port={r.metrics_export_port}",
            f"--runtime-env-agent-port={r.runtime_env_agent_port}",
            f"--temp-dir={self.ray_temp_dir}", "--disable-usage-stats",
        ]
        if r.num_cpus is not None:
            command.append(f"--num-cpus={r.num_cpus}")
        command.append(f"--labels={PLATFORM_LABEL}={self.platform_id}")
        env = {"RAY_AUTH_MODE": r.auth_mode, "RAY_USAGE_STATS_ENABLED": "0", **c.service_env()}
        if r.auth_mode == "token":
            env["RAY_AUTH_TOKEN_PATH"] = str(c.ray_token_path)
        health = lambda: _http_ok(f"{c.ray_dashboard_url}/api/version", headers=self._ray_auth_header())  # noqa: E731
        return _Service("ray", c.ray_dashboard_url, ports, command, env, health, 120.0, pass_env=r.pass_env)

    def _services(self) -> dict[str, _Service]:
        return {"s3": self._s3_service(), "mlflow": self._mlflow_service(), "ray": self._ray_service()}

    @property
    def platform_id(self) -> str | None:
        """A random id made by the first `up`, kept in the state directory (None before)."""
        try:
            return (self.state / "platform-id").read_text().strip() or None
        except FileNotFoundError:
            return None

    def _ray_auth_header(self) -> dict[str, str]:
        try:
            return {"Authorization": f"Bearer {self.config.ray_token_path.read_text().strip()}"}
        except FileNotFoundError:
            return {}

    def _ensure_ray_token(self) -> None:
        """A random token, readable by the owner only, made once per state directory."""
        path = self.config.ray_token_path
        if self.config.ray.auth_mode != "token" or path.is_file():
            return
        import secrets

        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))

    def _ensure_platform_id(self) -> None:
        if self.platform_id is None:
            import uuid

            (self.state / "platform-id").write_text(uuid.uuid4().hex[:16] + "\n")

    def is_running(self, name: str = "ray") -> bool:
        """Whether `up` started `name` and its process lives (no network call)."""
        return self._running_pid(name) is not None

    # ---- process bookkeeping ---------------------------------------------------------------
    def _pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def _running_pid(self, name: str) -> int | None:
        """The pid recorded for the service if that process (our session leader) still lives."""
        pid_file = self._pid_file(name)
        try:
            pid = int(pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            process = psutil.Process(pid)
            if process.status() == psutil.STATUS_ZOMBIE or os.getsid(pid) != pid:
                return None
        except (psutil.Error, ProcessLookupError):
            return None
        return pid

    # ---- public operations -----------------------------------------------------------------
    def up(self, only: tuple[str, ...] = SERVICE_ORDER) -> list[ServiceStatus]:
        """Start every service (of `only`) that is not running and wait for its health check.

        Idempotent: a healthy running service is left alone.
        """
        unknown = set(only) - set(SERVICE_ORDER)
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)}; choose from {SERVICE_ORDER}")
        for directory in (self.run_dir, self.log_dir, self.state / "s3", self.state / "mlflow"):
            directory.mkdir(parents=True, exist_ok=True)
        self._ensure_platform_id()
        self._ensure_ray_token()
        services = self._services()
        for stage in START_STAGES:
            to_start = []
            for name in (n for n in stage if n in only):
                service = services[name]
                if self._running_pid(name) is not None:
                    problem = service.health()
                    if problem is None:
                        log.info("%s already running at %s", name, service.url)
                        if name == "s3":
                            self._ensure_buckets()
                        continue
                    raise PlatformError(
                        f"{name} was started (pid {self._running_pid(name)}) but is not healthy: {problem}; "
                        f"see {self.log_path(name)}, or run `isrn platform down` and `up` again"
                    )
                self._check_ports(service)
                to_start.append(service)
            launched = [(service, self._launch(service)) for service in to_start]  # side by side
            for service, process in launched:
                self._await_health(service, process)
                if service.name == "s3":
                    self._ensure_buckets()
        return self.status()

    def _check_ports(self, service: _Service) -> None:
        for purpose, port in service.ports.items():
            if not port_is_free(self.config.host, port):
                section = "RAY" if service.name == "ray" else service.name.upper()
                raise PlatformError(
                    f"port {port} ({purpose}) on {self.config.host} is taken by {_port_owner(port)}; "
                    f"stop it or choose another port in platform/local.yaml or with ISRN_{section}_* "
                    f"environment variables"
                )

    def _launch(self, service: _Service) -> subprocess.Popen:
        log_path = self.log_path(service.name)
        log.info("starting %s (log: %s)", service.name, log_path)
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                service.command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=service_environment(service.env, service.pass_env, os.environ), start_new_session=True,
                cwd=self.state,
            )
        self._pid_file(service.name).write_text(f"{process.pid}\n")
        return process

    def _await_health(self, service: _Service, process: subprocess.Popen) -> None:
        """Wait for a launched service's health check; stop it and say why if it exits or times out."""
        log_path = self.log_path(service.name)
        deadline = time.monotonic() + service.start_timeout_s
        problem = service.health()
        while problem is not None:
            if process.poll() is not None:
                self._stop(service.name)
                raise PlatformError(
                    f"{service.name} exited with code {process.returncode} during start; "
                    f"last lines of {log_path}:\n{_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                self._stop(service.name)
                raise PlatformError(
                    f"{service.name} did not pass its health check within {service.start_timeout_s:.0f} s "
                    f"({problem}); see {log_path}"
                )
            time.sleep(0.5)
            problem = service.health()
        log.info("%s is up at %s", service.name, service.url)

    def _ensure_buckets(self) -> None:
        client = self._s3_client()
        existing = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
        for bucket in self.config.s3.buckets:
            if bucket not in existing:
                client.create_bucket(Bucket=bucket)
                log.info("created bucket s3://%s", bucket)

    def status(self) -> list[ServiceStatus]:
        services = self._services()
        rows = []
        for name in SERVICE_ORDER:
            pid = self._running_pid(name)
            problem = services[name].health() if pid is not None else "not running"
            rows.append(ServiceStatus(
                name=name, url=services[name].url, running=pid is not None, healthy=problem is None,
                pid=pid, log_path=self.log_path(name), detail=problem or "",
            ))
        return rows

    def down(self, purge: bool = False, only: tuple[str, ...] = SERVICE_ORDER) -> None:
        """Stop the processes `up` started, in reverse order; keep the data unless `purge`."""
        for name in reversed(SERVICE_ORDER):
            if name in only:
                self._stop(name)
        if purge:
            shutil.rmtree(self.state, ignore_errors=True)
            shutil.rmtree(self.ray_temp_dir, ignore_errors=True)
            log.info("deleted %s", self.state)

    def _stop(self, name: str, timeout_s: float = 10.0) -> None:
        pid_file = self._pid_file(name)
        pid = self._running_pid(name)
        if pid is not None:
            members = _session_processes(pid)
            log.info("stopping %s (%d processes of session %d)", name, len(members), pid)
            for process in members:
                _signal(process, signal.SIGTERM)
            _, alive = psutil.wait_procs(members, timeout=timeout_s)
            # Whatever the leader's shutdown left behind in its session goes too.
            stragglers = set(alive) | set(_session_processes(pid))
            for process in stragglers:
                _signal(process, signal.SIGKILL)
            psutil.wait_procs(list(stragglers), timeout=10)
        pid_file.unlink(missing_ok=True)


def _signal(process: psutil.Process, sig: int) -> None:
    try:
        process.send_signal(sig)
    except psutil.Error:
        pass


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
