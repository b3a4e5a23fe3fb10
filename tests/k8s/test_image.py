"""platform/Dockerfile and its entrypoint, checked without Docker (no engine runs here)."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "platform" / "Dockerfile"
ENTRYPOINT = REPO / "platform" / "docker-entrypoint.sh"


def _ray_pin() -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray,) = [d for d in deps if d.startswith("ray[")]
    return ray.split("==")[1]


def test_base_images_are_official_ray_images_of_the_pinned_version() -> None:
    text = DOCKERFILE.read_text()
    version = re.search(r"^ARG RAY_VERSION=(\S+)$", text, re.M).group(1)
    assert version == _ray_pin() == "2.60.0"
    bases = re.findall(r"^FROM (\S+) AS (\S+)$", text, re.M)
    assert ("rayproject/ray:${RAY_VERSION}-py311", "base-cpu") in bases
    assert ("rayproject/ray:${RAY_VERSION}-py311-gpu", "base-cuda") in bases
    assert ("base-${VARIANT}", "final") in bases


def test_raycluster_runs_the_ray_version_of_the_image() -> None:
    cluster = yaml.safe_load((REPO / "k8s" / "base" / "raycluster.yaml").read_text())
    assert cluster["spec"]["rayVersion"] == _ray_pin()


def test_copied_paths_are_in_the_build_context() -> None:
    """Everything the Dockerfile copies exists and is not excluded by .dockerignore."""
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY "):
            sources = [w for w in line.split()[1:-1] if not w.startswith("--")]
            for source in sources:
                assert (REPO / source).exists() or source == "README.md", source
                assert f"!{source}" in ignore, f".dockerignore excludes {source}"


def test_entrypoint_is_isrn() -> None:
    text = DOCKERFILE.read_text()
    assert 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' in text
    assert 'CMD ["--help"]' in text
    assert os.access(ENTRYPOINT, os.X_OK)


@pytest.fixture
def fake_path(tmp_path: Path) -> dict[str, str]:
    """A PATH whose `isrn` prints its arguments, beside the system's programs."""
    isrn = tmp_path / "isrn"
    isrn.write_text('#!/bin/sh\necho "isrn $*"\n')
    isrn.chmod(0o755)
    return {**os.environ, "PATH": f"{tmp_path}:/usr/bin:/bin"}


@pytest.mark.parametrize(
    ("args", "runs"),
    [
        ([], "isrn"),  # Docker passes CMD (--help) when a run gives no arguments
        (["--help"], "isrn --help"),
        (["train", "jobs/specs/smoke.yaml"], "isrn train jobs/specs/smoke.yaml"),
        (["submit", "jobs/specs/smoke.yaml", "--address", "http://127.0.0.1:8265"],
         "isrn submit jobs/specs/smoke.yaml --address http://127.0.0.1:8265"),
        (["jobs", "list"], "isrn jobs list"),  # `jobs` and `eval` are shell builtins, not programs
        (["evaluate", "--model", "models:/isrn-face@champion"], "isrn evaluate --model models:/isrn-face@champion"),
        (["echo", "ray", "start"], "ray start"),  # a program runs as itself (KubeRay, mlflow)
    ],
)
def test_entrypoint_runs_isrn_arguments_and_programs(fake_path, args: list[str], runs: str) -> None:
    done = subprocess.run([str(ENTRYPOINT), *args], env=fake_path, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == runs
