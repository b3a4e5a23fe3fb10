"""`isrn promote` against the real local MLflow: candidates, champion, descriptions, errors, a crashed holder.

The 8-way race is in test_promotion_race.py. Registry faults come from a small HTTP proxy in front of
the real server that answers chosen requests with an error instead of forwarding them.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from jobs import tags as T
from jobs.commands.promote import promote as promote_cmd
from jobs.promotion import CHAMPION, PREVIOUS, LockPolicy, PromotionError, PromotionRule, lock_name, promote
from jobs.spec import SPECS_DIR

pytestmark = pytest.mark.integration


def _model() -> str:
    return f"face-{uuid.uuid4().hex[:6]}"


def _state(client, model: str) -> dict:
    """What a failed promotion must leave untouched: versions, aliases, locks and tombstones."""
    versions = client.search_model_versions(f"name = '{model}'")
    return {"versions": sorted((v.version, v.tags.get(T.RUN_ID)) for v in versions),
            "aliases": dict(client.get_registered_model(model).aliases),
            "locks": [m.name for m in client.search_registered_models(f"name LIKE '{lock_name(model)}%'")]}


def test_promotes_best_then_refuses_worse_and_dry_run_changes_nothing(mlflow_env, new_experiment, training_run) -> None:
    uri, client = mlflow_env
    experiment, model = new_experiment(client), _model()
    first = training_run(client, experiment, 0.30, last_ap_hard=0.01)
    training_run(client, experiment, 0.10, last_ap_hard=0.99)  # its *last* evaluation is no model's number

    result = promote(uri, experiment=experiment, name=model)  # best model of the two: 0.30
    assert result.decision.promote and result.candidate.run_id == first
    champion = client.get_model_version_by_alias(model, CHAMPION)
    assert champion.version == result.version and champion.run_id == first
    tags = champion.tags
    assert tags[T.RUN_ID] == first and tags[T.VAL_MANIFEST] == "val-1111"
    assert tags[T.SPEC_FINGERPRINT] == "f" * 16 and tags[T.GIT_COMMIT] == "abc123"
    assert float(tags[T.metric_tag("val_ap_hard")]) == 0.30  # the model's own, not the run's last 0.01
    assert float(tags[T.metric_tag("val_ap_easy")]) == pytest.approx(0.40)
    assert (tags[T.BEST_EPOCH], tags[T.BEST_STEP]) == ("3", "30")
    assert champion.description.startswith("**Promoted to `champion`**: no champion yet; candidate val_ap_hard=0.3000")
    about = client.get_registered_model(model).description
    assert "**Detects** faces" in about and "a column `image` of photos" in about
    assert "## Champion: version 1" in about and "| v1 (epoch 3, step 30) | 0.4000 | 0.3500 | 0.3000 |" in about

    better = training_run(client, experiment, 0.50)
    before = _state(client, model)
    cli = CliRunner().invoke(promote_cmd, ["--experiment", experiment, "--model-name", model, "--dry-run"])
    assert cli.exit_code == 0, cli.output
    assert "[dry run] would move" in cli.output and better in cli.output
    assert _state(client, model) == before  # no version registered, no alias moved

    worse = training_run(client, experiment, 0.29)
    refused = promote(uri, experiment=experiment, name=model, run_id=worse)
    assert not refused.decision.promote and "does not beat champion v1" in refused.decision.reason
    assert client.get_model_version_by_alias(model, CHAMPION).version == result.version
    version = client.get_model_version(model, refused.version)
    assert version.tags[T.PROMOTION] == refused.decision.reason
    assert version.description.startswith(f"**Not promoted**: {refused.decision.reason}")
    assert "| champion v1 at the time | 0.4000 | 0.3500 | 0.3000 |" in version.description

    cli = CliRunner().invoke(promote_cmd, ["--experiment", experiment, "--model-name", model, "--margin", "0.1"])
    assert cli.exit_code == 0 and "moved" in cli.output, cli.output
    assert client.get_model_version_by_alias(model, CHAMPION).run_id == better
    assert client.get_model_version_by_alias(model, PREVIOUS).version == result.version
    assert "## Champion: version 3" in client.get_registered_model(model).description


def test_refuses_a_champion_validated_on_another_manifest(mlflow_env, new_experiment, training_run) -> None:
    uri, client = mlflow_env
    experiment, model = new_experiment(client), _model()
    promote(uri, experiment=experiment, name=model, run_id=training_run(client, experiment, 0.2))
    other = training_run(client, experiment, 0.9, val_manifest="val-2222")
    result = promote(uri, experiment=experiment, name=model, run_id=other)
    assert not result.decision.promote and "not comparable" in result.decision.reason


def test_the_best_run_on_the_champions_val_set_is_promoted(mlflow_env, new_experiment, training_run) -> None:
    """Candidates on two val manifests: the best AP overall (0.9, val-2222) is not comparable with the
    champion (0.2, val-1111); the best comparable one (0.5, val-1111) is promoted, and the dry run and
    the JSON say why the other is not a candidate."""
    uri, client = mlflow_env
    experiment, model = new_experiment(client), _model()
    promote(uri, experiment=experiment, name=model, run_id=training_run(client, experiment, 0.2))
    elsewhere = training_run(client, experiment, 0.9, val_manifest="val-2222")
    comparable = training_run(client, experiment, 0.5)
    dry = CliRunner().invoke(promote_cmd, ["--experiment", experiment, "--model-name", model, "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    outcome = json.loads(dry.output.strip().splitlines()[-1])
    assert outcome["promote"] and outcome["run_id"] == comparable
    reasons = {row["run_id"]: row["reason"] for row in outcome["not_candidates"]}
    assert "evaluated on val manifest val-2222, not on the champion's val-1111" in reasons[elsewhere]
    text = CliRunner().invoke(promote_cmd, ["--experiment", experiment, "--model-name", model, "--dry-run"])
    assert f"run {elsewhere}: evaluated on val manifest val-2222" in text.output, text.output
    result = promote(uri, experiment=experiment, name=model)
    assert result.decision.promote and result.candidate.run_id == comparable
    assert client.get_model_version_by_alias(model, CHAMPION).run_id == comparable


def test_a_run_whose_model_lacks_its_own_numbers_is_not_a_candidate(mlflow_env, new_experiment, training_run) -> None:
    uri, client = mlflow_env
    experiment, model = new_experiment(client), _model()
    good = training_run(client, experiment, 0.2)
    bare = training_run(client, experiment, None, last_ap_hard=0.9)  # a model without metrics; the run says 0.9
    no_model = training_run(client, experiment, None, model=False, last_ap_hard=0.95)

    cli = CliRunner().invoke(promote_cmd, ["--experiment", experiment, "--model-name", model, "--dry-run"])
    assert cli.exit_code == 0, cli.output
    assert f"[dry run] would move {model}@champion to a new version (run {good})" in cli.output
    assert f"run {bare}: its logged model m-" in cli.output and "has no val_ap_hard of its own" in cli.output
    assert f"run {no_model}: no logged model (tag {T.MODEL_URI})" in cli.output

    with pytest.raises(PromotionError, match=f"run {bare} is not a candidate: its logged model m-.* no val_ap_hard"):
        promote(uri, experiment=experiment, name=model, run_id=bare)
    lone = new_experiment(client)
    training_run(client, lone, None)
    with pytest.raises(PromotionError, match="no finished run of experiment .* is a candidate .*\n  run .*: its"):
        promote(uri, experiment=lone, name=model)


def test_spec_argument_and_the_latest_training_run(mlflow_env, new_experiment, training_run, tmp_path: Path) -> None:
    uri, client = mlflow_env
    experiment, model = new_experiment(client), _model()
    spec = yaml.safe_load((SPECS_DIR / "smoke.yaml").read_text())
    spec["tracking"].update(experiment=experiment, registered_model=model)
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(spec))
    run_id = training_run(client, experiment, 0.4)

    # `isrn promote SPEC`: the spec's experiment and registered model
    cli = CliRunner().invoke(promote_cmd, [str(tmp_path / "mine.yaml"), "--json"])
    assert cli.exit_code == 0, cli.output
    outcome = json.loads(cli.stdout)  # MLflow logs to stderr
    assert (outcome["model"], outcome["experiment"], outcome["run_id"]) == (model, experiment, run_id)
    assert outcome["metrics"]["val_ap_hard"] == 0.4 and outcome["experiment_from"] == "named"

    # no argument: the experiment of the most recently finished training run (this one), said in the output
    latest = training_run(client, experiment, 0.3)
    cli = CliRunner().invoke(promote_cmd, ["--model-name", model, "--dry-run"])
    assert cli.exit_code == 0, cli.output
    assert cli.output.startswith(f"experiment {experiment!r}: that of the most recently finished training run")
    assert "spec smoke" in cli.output and f"run {latest}" not in cli.output  # the best run, not the latest
    assert f"would keep {model}@champion at v1" in cli.output

    cli = CliRunner().invoke(promote_cmd, ["--experiment", f"nope-{uuid.uuid4().hex[:4]}"])
    assert cli.exit_code == 1
    assert "no MLflow experiment named 'nope-" in cli.output and f"{experiment}" in cli.output
    assert "`isrn promote SPEC`" in cli.output and "--experiment NAME" in cli.output
    cli = CliRunner().invoke(promote_cmd, ["--lock-stale-s", "300", "--lock-wait-s", "200"])
    assert cli.exit_code == 2 and "must exceed the stale age" in cli.output


def test_clear_errors(mlflow_env, new_experiment, training_run, monkeypatch) -> None:
    uri, client = mlflow_env
    empty = new_experiment(client)
    with pytest.raises(PromotionError, match="has no finished run"):
        promote(uri, experiment=empty, name="never")
    training_run(client, empty, 0.2)
    with pytest.raises(PromotionError, match="its logged model m-.* has no val_ap_medium_x of its own"):
        promote(uri, experiment=empty, name="never", rule=PromotionRule(metric="val_ap_medium_x"))

    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    cli = CliRunner().invoke(promote_cmd, ["--experiment", empty])
    assert cli.exit_code == 1 and f"the MLflow server at {dead} (MLFLOW_TRACKING_URI) does not answer" in cli.output


# ---------------------------------------------------------------- registry faults
class FaultProxy(http.server.ThreadingHTTPServer):
    """Forwards every request to the real server, except those a fault claims: those get its error."""

    def __init__(self, upstream: str) -> None:
        import requests

        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream, self.session = upstream.rstrip("/"), requests.Session()
        self.faults: list[dict] = []
        self.answered: list[tuple[str, str, int]] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def fail(self, method: str, endpoint: str, name: str, status: int, code: str, message: str, times: int = 1) -> None:
        """Answer the next `times` requests `method endpoint` about registered model `name` with an error."""
        self.faults.append(dict(method=method, endpoint=endpoint, name=name, status=status,
                                body={"error_code": code, "message": message}, times=times))


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: FaultProxy

    def log_message(self, *args) -> None:
        pass

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urllib.parse.urlsplit(self.path)
        params = dict(urllib.parse.parse_qsl(url.query))
        if body and self.headers.get("Content-Type", "").startswith("application/json"):
            params.update(json.loads(body))
        for fault in self.server.faults:
            about = params.get("name") == fault["name"] or f"'{fault['name']}'" in params.get("filter", "")
            if fault["times"] and self.command == fault["method"] and url.path.endswith(fault["endpoint"]) and about:
                fault["times"] -= 1
                return self._answer(fault["status"], json.dumps(fault["body"]).encode(), {})
        upstream = self.server.session.request(self.command, self.server.upstream + self.path, data=body,
                                               headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
        headers = {k: v for k, v in upstream.headers.items()
                   if k.lower() not in ("content-length", "content-encoding", "transfer-encoding", "connection")}
        self._answer(upstream.status_code, upstream.content, headers)

    def _answer(self, status: int, content: bytes, headers: dict) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        if "Content-Type" not in headers and "content-type" not in headers:
            self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(content)
        self.server.answered.append((self.command, self.path, status))

    do_GET = do_POST = do_PATCH = do_DELETE = _handle


@pytest.fixture
def fault_proxy(mlflow_env):
    proxy = FaultProxy(mlflow_env[0])
    yield proxy
    proxy.shutdown()
    proxy.server_close()


def test_a_registry_error_stops_the_promotion_and_changes_nothing(mlflow_env, new_experiment, training_run,
                                                                  fault_proxy, monkeypatch) -> None:
    uri, client = mlflow_env
    experiment, model = new_experiment(client), _model()
    champion = promote(uri, experiment=experiment, name=model, run_id=training_run(client, experiment, 0.2))
    better = training_run(client, experiment, 0.6)
    before = _state(client, model)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # this 500 is the client's final answer

    # Reading the champion answers 500: the old adapter read "no champion" and moved the alias.
    fault_proxy.fail("GET", "/registered-models/get", model, 500, "INTERNAL_ERROR", "database is down")
    with pytest.raises(PromotionError, match=f"read registered model '{model}' .*500.*Nothing was changed"):
        promote(fault_proxy.url, experiment=experiment, name=model, run_id=better)
    assert _state(client, model) == before

    # A permission error on looking for the run's existing version: the server's message, nothing changed.
    fault_proxy.fail("GET", "/model-versions/search", model, 403, "PERMISSION_DENIED", "user bob may not read it")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", fault_proxy.url)
    cli = CliRunner().invoke(promote_cmd, ["--run", better, "--model-name", model])
    assert cli.exit_code == 1, cli.output
    assert "HTTP 403, PERMISSION_DENIED): PERMISSION_DENIED: user bob may not read it" in cli.output
    assert "Nothing was changed" in cli.output
    assert _state(client, model) == before

    # With the client's retries on, one 500 is retried and the promotion completes.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    fault_proxy.fail("GET", "/registered-models/get", model, 500, "INTERNAL_ERROR", "a blip")
    result = promote(fault_proxy.url, experiment=experiment, name=model, run_id=better)
    assert result.decision.promote and result.champion_before.version == champion.version
    assert ("GET", f"/api/2.0/mlflow/registered-models/get?name={model}", 500) in fault_proxy.answered
    assert client.get_model_version_by_alias(model, CHAMPION).run_id == better


def test_a_crashed_holders_lock_is_broken_after_the_stale_age(mlflow_env, new_experiment, training_run) -> None:
    uri, client = mlflow_env
    experiment, model = new_experiment(client), _model()
    run_id = training_run(client, experiment, 0.3)
    # What a promotion killed while holding the lock leaves behind.
    created = time.monotonic()
    client.create_registered_model(lock_name(model), tags={T.LOCK_OWNER: "crashed-host:4242:deadbeef"})

    result = promote(uri, experiment=experiment, name=model, run_id=run_id,
                     lock=LockPolicy(stale_s=2.0, wait_s=30.0, poll_s=0.2))
    since_crash = time.monotonic() - created
    assert result.decision.promote and result.locks_broken == 1
    # broken once 2 s old by the server's clock, whose Date header has a resolution of 1 s
    assert 1.0 <= since_crash < 30.0 and 0.0 < result.lock_wait_s <= since_crash
    assert not client.search_registered_models(f"name LIKE '{lock_name(model)}%'")  # no lock, no tombstone
    print(f"\ncrashed holder: the next promotion waited {result.lock_wait_s:.1f} s (stale age 2 s)")

    client.create_registered_model(lock_name(model), tags={T.LOCK_OWNER: "crashed-host:4242:deadbeef"})
    cli = CliRunner().invoke(promote_cmd, ["--model-name", model, "--break-lock"])
    assert cli.exit_code == 0 and "owner crashed-host:4242:deadbeef" in cli.output, cli.output
    assert not client.search_registered_models(f"name LIKE '{lock_name(model)}%'")
