"""Promotion errors, and the one registry answer that is not an error: "does not exist".

The MLflow client already retries 429 and 5xx answers (MLFLOW_HTTP_REQUEST_MAX_RETRIES); what
reaches us after that is the server's final word. Only RESOURCE_DOES_NOT_EXIST (HTTP 404) means
"no such model / version"; a 5xx, a permission error or anything else stops the promotion with
the server's message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

Found = TypeVar("Found")

DOES_NOT_EXIST = "RESOURCE_DOES_NOT_EXIST"
ALREADY_EXISTS = ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")


class PromotionError(RuntimeError):
    """A promotion that cannot proceed; the message says what is missing and where."""


class RegistryError(PromotionError):
    """The tracking server answered an operation with an error (after the client's retries)."""

    def __init__(self, doing: str, error: Exception) -> None:
        self.code = str(getattr(error, "error_code", "") or type(error).__name__)
        status = getattr(error, "get_http_status_code", lambda: None)()
        message = getattr(error, "message", None) or str(error)
        super().__init__(f"the MLflow server failed to {doing} (HTTP {status}, {self.code}): {message}")


def is_missing(error: Exception) -> bool:
    """Whether an MlflowException says the resource does not exist (and nothing else went wrong)."""
    return getattr(error, "error_code", None) == DOES_NOT_EXIST


def already_exists(error: Exception) -> bool:
    return getattr(error, "error_code", None) in ALREADY_EXISTS


@contextlib.contextmanager
def registry_call(doing: str) -> Iterator[None]:
    """Turn an MlflowException of the block into a RegistryError that says what was being done."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as error:
        raise RegistryError(doing, error) from error


def get_or_none(get: Callable[[], Found], doing: str) -> Found | None:
    """`get()`, or None when the server says the resource does not exist; any other error raises."""
    from mlflow.exceptions import MlflowException

    try:
        return get()
    except MlflowException as error:
        if is_missing(error):
            return None
        raise RegistryError(doing, error) from error
