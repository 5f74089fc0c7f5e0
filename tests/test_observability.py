"""Logs and metrics: access lines, route-template labels, request ids, secrets kept out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import Message, Scope

from oms.logging import REDACTED, redact_secrets
from oms.metrics import MULTIPROC_DIR_ENV, UNMATCHED_ROUTE, multiprocess_directory
from oms.middleware import RequestMiddleware
from tests.conftest import ApiUser


def _requests(method: str, route: str, status: int) -> float:
    labels = {"method": method, "route": route, "status": str(status)}
    return REGISTRY.get_sample_value("oms_http_requests_total", labels) or 0.0


def _latency_count(method: str, route: str, status: int) -> float:
    labels = {"method": method, "route": route, "status": str(status)}
    return REGISTRY.get_sample_value("oms_http_request_duration_seconds_count", labels) or 0.0


async def test_requests_are_counted_by_route_template(
    client: httpx.AsyncClient, user: ApiUser
) -> None:
    order_route = "/orders/{order_id}/"
    before_found = _requests("GET", order_route, 404)
    before_latency = _latency_count("GET", order_route, 404)
    before_unmatched = _requests("GET", UNMATCHED_ROUTE, 404)

    for _ in range(3):
        response = await client.get(f"/orders/{uuid.uuid4()}/", headers=user.headers)
        assert response.status_code == 404
    unmatched_path = f"/no-such-page-{uuid.uuid4().hex}"
    assert (await client.get(unmatched_path)).status_code == 404

    assert _requests("GET", order_route, 404) == before_found + 3
    assert _latency_count("GET", order_route, 404) == before_latency + 3
    assert _requests("GET", UNMATCHED_ROUTE, 404) == before_unmatched + 1

    exposition = await client.get("/metrics")
    assert exposition.status_code == 200
    assert exposition.headers["content-type"].startswith("text/plain")
    assert unmatched_path not in exposition.text
    families = {family.name for family in text_string_to_metric_families(exposition.text)}
    assert {"oms_http_requests", "oms_http_request_duration_seconds"} <= families


async def test_rejected_bodies_and_docs_are_counted_too(client: httpx.AsyncClient) -> None:
    # An oversized body is refused before routing: no template is known for it yet.
    before_413 = _requests("POST", UNMATCHED_ROUTE, 413)
    before_docs = _requests("GET", "/docs", 200)

    too_big = await client.post(
        "/orders/", content=b"x" * (65 * 1024), headers={"Content-Type": "application/json"}
    )
    docs = await client.get("/docs")

    assert too_big.status_code == 413
    assert docs.status_code == 200
    assert _requests("POST", UNMATCHED_ROUTE, 413) == before_413 + 1
    assert _requests("GET", "/docs", 200) == before_docs + 1


async def test_hostile_request_ids_are_replaced() -> None:
    """Control characters or oversized ids are never echoed (nor logged: they are replaced)."""
    seen: list[str] = []

    async def app(scope: Scope, receive: object, send: object) -> None:
        import structlog

        seen.append(structlog.contextvars.get_contextvars()["request_id"])
        await send({"type": "http.response.start", "status": 204, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    middleware = RequestMiddleware(app)  # type: ignore[arg-type]
    echoed: list[str] = []
    for given in (b"abc\ninjected=1", b"x" * 10_000, b"ok\r\nSet-Cookie: a=b", b"good-id.1:2"):
        sent: list[Message] = []

        async def send(message: Message) -> None:
            sent.append(message)  # noqa: B023 - consumed within this iteration

        async def receive() -> Message:
            return {"type": "http.request", "body": b""}

        scope = {
            "type": "http",
            "method": "GET",
            "path": "/x",
            "headers": [(b"x-request-id", given)],
        }
        await middleware(scope, receive, send)
        headers = dict(sent[0]["headers"])
        echoed.append(headers[b"x-request-id"].decode())

    assert seen == echoed
    assert [len(value) for value in echoed[:3]] == [32, 32, 32]
    assert all(value.isalnum() for value in echoed[:3])
    assert echoed[3] == "good-id.1:2"


def test_secrets_are_redacted_at_any_depth() -> None:
    event = {
        "event": "connecting to amqp://guest:hunter2@rabbitmq:5672/",
        "password": "hunter2",
        "headers": {"Authorization": "Bearer sekrit", "Accept": "*/*"},
        "settings": [{"SECRET_KEY": "k3y"}, "redis://:pw123@redis:6379/0"],
        "access_token": "eyJ-jwt",
        "email": "user@example.com",
        "password_hint": None,
    }
    redacted = redact_secrets(None, "info", event)

    rendered = json.dumps(redacted)
    for secret in ("hunter2", "sekrit", "k3y", "pw123", "eyJ-jwt"):
        assert secret not in rendered
    assert redacted["event"] == f"connecting to amqp://guest:{REDACTED}@rabbitmq:5672/"
    assert redacted["headers"]["Accept"] == "*/*"
    assert redacted["email"] == "user@example.com"
    assert redacted["password_hint"] is None


_LOGGING_SCRIPT = """
import logging, sys, warnings
import structlog
from oms.config import Settings
from oms.logging import configure_logging

configure_logging(Settings(_env_file=None, log_format=sys.argv[1]))
logging.getLogger("uvicorn.error").info("Started %s", "server", extra={"color_message": "ANSI"})
logging.getLogger("sqlalchemy.engine.Engine").info("SELECT secret_statement")
logging.getLogger("sqlalchemy.pool").warning("pool exhausted")
logging.getLogger("aiormq.connection").error("lost amqp://guest:hunter2@rabbit:5672/")
logging.getLogger("celery.worker").info("celery ready")
log = structlog.get_logger("oms.test")
log.info("login\\nforged-line", password="hunter2", headers={"Authorization": "Bearer sekrit"})
try:
    raise RuntimeError("cannot reach redis://:hunter2@redis:6379/0")
except RuntimeError:
    log.exception("failed", token="t0k3n")
"""


def _run_logging_script(log_format: str) -> str:
    env = {key: value for key, value in os.environ.items() if not key.startswith("LOG_")}
    result = subprocess.run(
        [sys.executable, "-c", _LOGGING_SCRIPT, log_format],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=Path(__file__).parent,
        check=True,
    )
    assert result.stderr == ""
    return result.stdout


def test_every_logger_writes_json_lines_without_secrets() -> None:
    output = _run_logging_script("json")

    lines = [json.loads(line) for line in output.splitlines()]
    assert [(line["logger"], line["level"]) for line in lines] == [
        ("uvicorn.error", "info"),
        ("sqlalchemy.pool", "warning"),
        ("aiormq.connection", "error"),
        ("celery.worker", "info"),
        ("oms.test", "info"),
        ("oms.test", "error"),
    ]
    assert all("timestamp" in line for line in lines)
    assert "color_message" not in lines[0]
    assert lines[4]["event"] == "login\nforged-line"
    assert "RuntimeError" in lines[5]["exception"]
    for secret in ("hunter2", "sekrit", "t0k3n", "secret_statement"):
        assert secret not in output


def test_console_format_is_readable_and_redacted() -> None:
    output = _run_logging_script("console")

    assert "Started server" in output
    assert "celery ready" in output
    assert not output.lstrip().startswith("{")
    for secret in ("hunter2", "sekrit", "t0k3n"):
        assert secret not in output


def test_oms_api_provides_and_removes_a_multiprocess_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(MULTIPROC_DIR_ENV, raising=False)
    with multiprocess_directory() as directory:
        assert os.environ[MULTIPROC_DIR_ENV] == str(directory)
        assert directory.is_dir()
        (directory / "counter_123.db").write_bytes(b"")
    assert MULTIPROC_DIR_ENV not in os.environ
    assert not directory.exists()


def test_a_given_multiprocess_directory_is_emptied_of_stale_metrics(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "counter_999.db").write_bytes(b"stale")
    (tmp_path / "histogram_999.db").write_bytes(b"stale")
    (tmp_path / "keep.txt").write_text("not ours")
    monkeypatch.setenv(MULTIPROC_DIR_ENV, str(tmp_path))

    with multiprocess_directory() as directory:
        assert directory == tmp_path
        assert sorted(path.name for path in tmp_path.iterdir()) == ["keep.txt"]
    assert tmp_path.is_dir()
