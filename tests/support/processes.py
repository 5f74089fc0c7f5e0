"""Running `oms` commands as real processes, the way a user or a container runs them."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

# The console script installed next to the interpreter running the tests.
OMS = str(Path(sys.executable).with_name("oms"))
# Settings a test process must not inherit from the developer's shell.
_SERVICE_VARIABLES = (
    "DATABASE_URL",
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "RABBITMQ_URL",
    "PROMETHEUS_MULTIPROC_DIR",
    "LOG_FORMAT",
    "LOG_LEVEL",
    "APP_ENV",
    "SECRET_KEY",
)


def free_port() -> int:
    """A TCP port nothing listens on right now (closed again before returning)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def oms_env(**settings: str) -> dict[str, str]:
    """The current environment without service settings, plus the given ones (upper-cased)."""
    env = {key: value for key, value in os.environ.items() if key not in _SERVICE_VARIABLES}
    env.update({key.upper(): value for key, value in settings.items()})
    return env
