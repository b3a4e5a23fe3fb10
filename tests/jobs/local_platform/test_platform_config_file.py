"""platform/local.yaml documents every field of the local platform's configuration, with its default."""

from __future__ import annotations

from pathlib import Path

import yaml

from jobs.local_platform.config import PlatformConfig, load_platform_config

TEMPLATE = Path(__file__).resolve().parents[3] / "platform" / "local.yaml"
FIELD_LINES = ("# state_dir", "# host", "# s3", "# mlflow", "# ray", "#   ")


def test_the_override_template_names_every_field_with_its_default(tmp_path):
    # The template is commented out: its field lines, uncommented, are YAML.
    raw = yaml.safe_load("\n".join(line[2:] for line in TEMPLATE.read_text().splitlines()
                                   if line.startswith(FIELD_LINES)))
    raw.pop("state_dir")  # its default depends on the user's home
    assert raw == {k: v for k, v in PlatformConfig().to_dict().items() if k != "state_dir"}


def test_a_file_overrides_the_defaults_and_variables_override_the_file(tmp_path):
    override = tmp_path / "local.yaml"
    override.write_text("mlflow:\n  port: 5055\n")
    assert load_platform_config(override, environ={}).mlflow.port == 5055
    assert load_platform_config(override, environ={"ISRN_MLFLOW_PORT": "5066"}).mlflow.port == 5066
    assert load_platform_config(environ={"ISRN_PLATFORM_CONFIG": str(override)}).mlflow.port == 5055
    assert load_platform_config(environ={}).mlflow.port == 5000  # no file needed
