"""The local platform: SeaweedFS (S3), an MLflow tracking server and a Ray head on 127.0.0.1."""

from jobs.local_platform.config import PlatformConfig, load_platform_config
from jobs.local_platform.services import Platform, PlatformError, ServiceStatus

__all__ = ["Platform", "PlatformConfig", "PlatformError", "ServiceStatus", "load_platform_config"]
