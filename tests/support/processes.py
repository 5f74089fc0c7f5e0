"""Running `oms` commands as real processes, the way a user or a container runs them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

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


def json_records(lines: Iterable[str]) -> list[dict[str, Any]]:
    """The JSON objects among log lines (other lines are skipped)."""
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def free_port() -> int:
    """A TCP port nothing listens on right now (closed again before returning)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# Test processes share one PostgreSQL (max_connections 100) with the rest of the suite.
SMALL_DB_POOL = {"DB_POOL_SIZE": "3", "DB_MAX_OVERFLOW": "5"}


def oms_env(**settings: str) -> dict[str, str]:
    """The current environment without service settings, small database pools, plus the given
    settings (upper-cased)."""
    env = {key: value for key, value in os.environ.items() if key not in _SERVICE_VARIABLES}
    env.update(SMALL_DB_POOL)
    env.update({key.upper(): value for key, value in settings.items()})
    return env


class OmsProcess:
    """`python -m oms.cli <role>` with its stdout (JSON log lines) collected in the background."""

    def __init__(self, role: str, env: Mapping[str, str], cwd: Path, *args: str) -> None:
        self.role = role
        self._env = {"PATH": os.environ.get("PATH", ""), **env, "PYTHONUNBUFFERED": "1"}
        self._cwd = cwd
        self._args = args
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> OmsProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "oms.cli", self.role, *self._args],
            env=self._env,
            cwd=self._cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            with self._lock:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def records(self) -> list[dict[str, Any]]:
        """The JSON log records so far (non-JSON lines are skipped)."""
        with self._lock:
            lines = list(self.lines)
        return json_records(lines)

    def events(self, message: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("event") == message]

    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines[-200:])

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(10)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then wait; the return code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


async def eventually(
    condition: Callable[[], Any], within: float, message: str | Callable[[], str] = ""
) -> Any:
    """Poll `condition` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {within}s: {text}")
        await asyncio.sleep(0.2)
