"""`oms api --workers 2` under a real uvicorn: shared metrics, access lines, request ids."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import OMS, free_port, oms_env
from tests.support.services import fresh_postgres_database

REQUESTS = 20


@dataclass
class RunningApi:
    base_url: str
    log: Path
    metrics_dir: Path
    process: subprocess.Popen[bytes]

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def access_lines(self, request_id: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The access lines of one request; the line is written just after the response."""
        deadline = time.monotonic() + timeout
        while True:
            found = [
                line
                for line in self.log_lines()
                if line.get("logger") == "oms.access" and line.get("request_id") == request_id
            ]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


def _wait_until_serving(api: RunningApi, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.process.poll() is not None:
            pytest.fail(f"oms api exited early:\n{api.log.read_text()}")
        try:
            if httpx.get(f"{api.base_url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"oms api did not start within {timeout} s:\n{api.log.read_text()}")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApi]:
    workdir = tmp_path_factory.mktemp("api")
    metrics_dir = workdir / "metrics"
    metrics_dir.mkdir()
    # A previous run's file: `oms api` must not add its counts to this run's.
    (metrics_dir / "counter_999999.db").write_bytes(b"\0" * 64)
    with fresh_postgres_database("oms_api_workers") as database_url:
        env = oms_env(
            database_url=database_url,
            app_env="test",
            secret_key=secrets.token_urlsafe(48),
            log_format="json",
            log_level="INFO",
            prometheus_multiproc_dir=str(metrics_dir),
        )
        subprocess.run([OMS, "migrate"], env=env, cwd=workdir, check=True, capture_output=True)
        port = free_port()
        log = workdir / "api.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [OMS, "api", "--workers", "2", "--host", "127.0.0.1", "--port", str(port)],
                env=env,
                cwd=workdir,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        running = RunningApi(f"http://127.0.0.1:{port}", log, metrics_dir, process)
        try:
            _wait_until_serving(running)
            yield running
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


async def _concurrent_fresh_connections(url: str, count: int) -> list[int]:
    """`count` requests at once, each on its own connection, so both workers accept some."""
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:
        responses = await asyncio.gather(*(client.get(url) for _ in range(count)))
    return [response.status_code for response in responses]


def _sample(exposition: str, name: str, labels: dict[str, str]) -> float:
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def test_metrics_aggregate_every_worker(api: RunningApi) -> None:
    statuses = asyncio.run(_concurrent_fresh_connections(f"{api.base_url}/health/ready", REQUESTS))
    assert statuses == [200] * REQUESTS
    unknown_order = httpx.get(f"{api.base_url}/orders/{uuid.uuid4()}/")
    raw_path = f"/not-a-route-{uuid.uuid4().hex}"
    unmatched = httpx.get(f"{api.base_url}{raw_path}")
    assert (unknown_order.status_code, unmatched.status_code) == (401, 404)

    exposition = httpx.get(f"{api.base_url}/metrics").text

    ready = {"method": "GET", "route": "/health/ready", "status": "200"}
    assert _sample(exposition, "oms_http_requests_total", ready) == REQUESTS
    assert _sample(exposition, "oms_http_request_duration_seconds_count", ready) == REQUESTS
    order = {"method": "GET", "route": "/orders/{order_id}/", "status": "401"}
    assert _sample(exposition, "oms_http_requests_total", order) == 1
    unmatched_labels = {"method": "GET", "route": "<unmatched>", "status": "404"}
    assert _sample(exposition, "oms_http_requests_total", unmatched_labels) == 1
    assert raw_path not in exposition
    assert not (api.metrics_dir / "counter_999999.db").exists()


def test_one_access_line_per_request_with_its_request_id(api: RunningApi) -> None:
    request_id = f"ops-test-{uuid.uuid4().hex}"
    response = httpx.get(
        f"{api.base_url}/orders/{uuid.uuid4()}/", headers={"X-Request-ID": request_id}
    )
    assert response.headers["X-Request-ID"] == request_id

    [line] = api.access_lines(request_id)
    assert line["method"] == "GET"
    assert line["route"] == "/orders/{order_id}/"
    assert line["status"] == 401
    assert isinstance(line["latency_ms"], float)
    assert line["level"] == "info"
    assert not any(entry.get("logger") == "uvicorn.access" for entry in api.log_lines())


def test_a_hostile_request_id_is_neither_echoed_nor_logged(api: RunningApi) -> None:
    hostile = "A" * 10_000
    response = httpx.get(f"{api.base_url}/health", headers={"X-Request-ID": hostile})

    generated = response.headers["X-Request-ID"]
    assert response.status_code == 200
    assert len(generated) == 32
    assert len(api.access_lines(generated)) == 1
    # Every line is still one JSON document, and the hostile value appears in none.
    assert hostile not in api.log.read_text()
    assert all(isinstance(line, dict) for line in api.log_lines())


def test_oms_probe_reports_the_api_state(api: RunningApi) -> None:
    ready = subprocess.run([OMS, "probe", f"{api.base_url}/health/ready"], capture_output=True)
    missing = subprocess.run([OMS, "probe", f"{api.base_url}/missing"], capture_output=True)

    assert ready.returncode == 0
    assert missing.returncode == 1


def test_sigterm_stops_every_worker_with_exit_code_zero(api: RunningApi) -> None:
    """Runs last in this module: it stops the shared server."""
    api.process.send_signal(signal.SIGTERM)

    assert api.process.wait(timeout=30) == 0
    events = [line["event"] for line in api.log_lines()]
    assert events.count("Application shutdown complete.") == 2
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{api.base_url}/health", timeout=1)
