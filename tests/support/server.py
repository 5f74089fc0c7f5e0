"""Running `oms` roles as real processes for end-to-end tests."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import TEST_SECRET
from tests.support.processes import free_port, oms_env


def api_environment(database_url: str, **settings: str) -> dict[str, str]:
    """`oms api` for a test: its own database, the test secret, JSON logs, no rate limits."""
    return oms_env(
        app_env="test",
        secret_key=TEST_SECRET,
        database_url=database_url,
        log_format="json",
        rate_limit_times="1000000",
        auth_rate_limit="1000000/minute",
        **settings,
    )


@dataclass(frozen=True)
class RunningApi:
    url: str
    log_path: Path
    pid: int

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def running_api(env: dict[str, str], workers: int = 1) -> Iterator[RunningApi]:
    """`oms api` on a free port, its output in a file; yields once /health answers."""
    port = free_port()
    log_path = Path(tempfile.mkstemp(prefix="oms-api-", suffix=".log")[1])
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "oms.cli", "api", "--host", "127.0.0.1", "--port", str(port),
         "--workers", str(workers)],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"oms api did not start:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield RunningApi(base_url, log_path, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log_file.close()
        log_path.unlink(missing_ok=True)
