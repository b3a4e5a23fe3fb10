"""The two kinds of error a job reports before it starts, and how the CLI tells them apart.

- :class:`ConfigError`: what the user wrote cannot run (a spec field, an override, the platform
  configuration, a manifest the spec names). The message names the file and the dotted field, and
  the fix. It is the configuration system's one error type (``isrn_model.section``).
- :class:`ServiceUnavailableError`: a service the job needs does not answer (S3, the MLflow server,
  the Ray cluster). Nothing is wrong with the spec; the message names the URL and how to start or
  point at the service.
"""

from __future__ import annotations

from isrn_model.section import ConfigError

__all__ = ["ConfigError", "ServiceUnavailableError"]


class ServiceUnavailableError(RuntimeError):
    """A service did not answer; the message names it, its URL and the fix."""
