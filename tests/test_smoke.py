"""`oms smoke BASE_URL`, run as a real process against real deployments.

The passing run against the whole pipeline is in tests/test_stack.py (`make stack`); here the
cases where it must fail, and say where.
"""

from __future__ import annotations

import subprocess
import sys

from tests.support.processes import free_port
from tests.support.server import api_environment, running_api


def smoke(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oms.cli", "smoke", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def rows(output: str) -> dict[str, str]:
    """STEP -> RESULT of the printed table (step names have single spaces, columns two)."""
    table = {}
    for line in output.splitlines()[1:-1]:
        step, result = [cell for cell in line.split("  ") if cell][:2]
        table[step.strip()] = result.strip()
    return table


def test_an_api_without_the_pipeline_fails_only_the_processing_step(postgres_url: str) -> None:
    """`oms api` alone: every HTTP answer is right, but nothing relays the order's event."""
    with running_api(api_environment(postgres_url)) as api:
        result = smoke(api.url, "--timeout", "10", "--wait", "1")
    assert result.returncode == 1, result.stdout + result.stderr
    table = rows(result.stdout)
    assert table.pop("processed_at set") == "FAILED"
    assert set(table.values()) == {"ok"}, result.stdout
    assert "still unprocessed after 1 s" in result.stdout
    assert result.stdout.splitlines()[-1] == "smoke: 9 of 10 steps passed"


def test_nothing_listening_fails_the_first_step_and_runs_no_other() -> None:
    result = smoke(f"http://127.0.0.1:{free_port()}", "--timeout", "2")
    assert result.returncode == 1
    table = rows(result.stdout)
    assert table.pop("ready") == "FAILED"
    assert set(table.values()) == {"not run"}
    assert "ConnectError" in result.stdout


def test_a_base_url_that_is_not_http_is_a_usage_error() -> None:
    result = smoke("127.0.0.1:8000")
    assert result.returncode == 2
    assert "BASE_URL must be http:// or https://" in result.stderr
