"""Ray token authentication for this process's clients (`ray.init`, the Jobs API, the State API).

The local platform's head runs with `RAY_AUTH_MODE=token` (its GCS, raylets and Ray Client server
listen beyond loopback: without a token, anyone who reaches the machine could run code on it).
Its token lives in the state directory, readable by its owner only; the head and every worker it
starts read it from `RAY_AUTH_TOKEN_PATH`. A client needs the same two variables:
`eval "$(isrn platform env)"` sets them in a shell, and the `isrn` commands set them for themselves
when they talk to the running local platform. A cluster elsewhere has its own token
(`RAY_AUTH_TOKEN` / `RAY_AUTH_TOKEN_PATH`, k8s/README.md), which the user sets.

Ray reads the mode once per process and caches it: `use_token_auth` refreshes that cache, as Ray's
own `ray.init` does when it turns token auth on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

MODE = "RAY_AUTH_MODE"
TOKEN = "RAY_AUTH_TOKEN"
TOKEN_PATH = "RAY_AUTH_TOKEN_PATH"


def auth_env_for(local_token: Path | None, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables a client needs: the user's own when set, else the local platform's token."""
    if environ.get(MODE) or environ.get(TOKEN) or environ.get(TOKEN_PATH):
        return {k: environ[k] for k in (MODE, TOKEN, TOKEN_PATH) if environ.get(k)}
    if local_token is not None and local_token.is_file():
        return {MODE: "token", TOKEN_PATH: str(local_token)}
    return {}


def use_token_auth(variables: Mapping[str, str]) -> None:
    """Set `variables` in this process's environment and make Ray's clients in it use them."""
    os.environ.update(variables)
    try:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")  # Ray caches the mode per process (ray._private.authentication)
        AuthenticationTokenLoader.instance().reset_cache()
    except ImportError:  # a Ray without the token loader: nothing cached
        pass
    log.debug("Ray authentication mode: %s", os.environ.get(MODE, "(Ray's default)"))
