"""No credential value in a manifest: credentials reach pods only through Secrets that the
overlays generate from gitignored files (k8s/overlays/*/secrets/*.env)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
# Values allowed where a credential would go: the examples' placeholder and empty values.
PLACEHOLDER = re.compile(r"(REPLACE_ME)?")
# Names of environment variables and keys that carry a credential.
SECRET_NAME = re.compile(r"(?i)(password|passwd|secret|token|access_key|api_key|credential)")

PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA|AGPA|AIDA|AROA)[A-Z0-9]{16}\b"),
    "AWS secret access key": re.compile(r"(?i)aws_secret_access_key\s*[=:]\s*['\"]?(?!REPLACE_ME\b)[A-Za-z0-9/+=]{16,}"),
    "password value": re.compile(r"(?i)\b\w*password\w*\s*[=:]\s*['\"]?(?!REPLACE_ME\b)(?![$%])[^\s'\"{}]{4,}"),
    "credentials in a URL": re.compile(r"[a-z+]+://[^/\s:@]+:[^/\s@$]+@"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
}


def shipped_files() -> list[Path]:
    """The files of k8s/ and platform/ that git would commit (tracked or not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "k8s", "platform", ".dockerignore"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()
    return [REPO / p for p in listed if (REPO / p).is_file()]


def test_there_are_files_to_scan() -> None:
    names = {p.name for p in shipped_files()}
    assert {"kustomization.yaml", "raycluster.yaml", "Dockerfile"} <= names


@pytest.mark.parametrize("label", sorted(PATTERNS))
def test_no_credential_pattern_in_shipped_files(label: str) -> None:
    hits = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in shipped_files()
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if PATTERNS[label].search(line)
    ]
    assert not hits, f"{label}:\n" + "\n".join(hits)


def test_no_secret_object_is_committed() -> None:
    for path in shipped_files():
        if path.suffix in {".yaml", ".yml"} and path.name != "kustomization.yaml":
            for doc in yaml.safe_load_all(path.read_text()):
                kinds = [d.get("kind") for d in (doc if isinstance(doc, list) else [doc]) if isinstance(d, dict)]
                assert "Secret" not in kinds, f"{path.relative_to(REPO)} holds a Secret"


def test_example_secret_files_hold_placeholders_only() -> None:
    examples = [p for p in shipped_files() if p.name.endswith(".env.example")]
    assert examples
    for path in examples:
        for line in path.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                key, _, value = line.partition("=")
                if SECRET_NAME.search(key) or key.startswith("AWS_"):
                    assert PLACEHOLDER.fullmatch(value), f"{path.relative_to(REPO)}: {key} has a value"


def test_real_secret_files_are_gitignored() -> None:
    for overlay in ("local", "prod"):
        for name in ("s3.env", "mlflow-db.env", "mlflow-auth.env"):
            path = f"k8s/overlays/{overlay}/secrets/{name}"
            ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO)
            assert ignored.returncode == 0, f"{path} would be committed"


def test_credentials_reach_containers_from_secrets_only(objects: list[dict]) -> None:
    """No env var named like a credential is given a literal value in any rendered container."""
    for obj in objects:
        for node in _walk(obj):
            if isinstance(node, dict) and "name" in node and "value" in node and SECRET_NAME.search(node["name"]):
                pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {node['name']} has a literal value")


def _walk(node):
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    for child in children:
        yield from _walk(child)
