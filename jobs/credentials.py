"""Which environment variables hold credentials: the one definition for everything that refuses them.

    is_credential("AWS_SECRET_ACCESS_KEY")     # True: never sent with a job, never expanded into a spec

A credential is named like one: a secret, password, token, API key, private key or credential
(AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_TOKEN,
RAY_AUTH_TOKEN, HF_TOKEN, WANDB_API_KEY, GOOGLE_APPLICATION_CREDENTIALS, ...), plus AWS's access key id,
which names the key whose secret it pairs with. Used by `isrn submit --env` and `--runtime-env`
(jobs/submission.py) and by a spec's `${VAR}` expansion (jobs/spec.py): what either writes is shown
to others (the Ray dashboard shows a job's runtime environment; a spec becomes MLflow params, an
MLflow artifact and the job's working_dir).
"""

from __future__ import annotations

import re

CREDENTIAL = re.compile(r"(SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|PRIVATE_KEY|API_?KEY|^AWS_ACCESS_KEY_ID$)",
                        re.IGNORECASE)


def is_credential(name: str) -> bool:
    """Whether the environment variable `name` is named like a credential (see the module docstring)."""
    return CREDENTIAL.search(name) is not None
