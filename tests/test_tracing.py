"""Tracing on and off in the API (the whole order's trace: tests/events/test_tracing.py)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from oms import tracing
from oms.events.models import OutboxEvent
from tests.conftest import PASSWORD, ApiUser, create_order, make_settings, unique_email
from tests.support.server import api_environment, running_api


@pytest.mark.parametrize(
    ("variables", "on"),
    [
        ({}, False),
        ({"otel_exporter_otlp_endpoint": "http://collector:4318"}, True),
        ({"otel_traces_exporter": "console"}, True),
        ({"otel_traces_exporter": "none", "otel_exporter_otlp_endpoint": "http://c:4318"}, False),
    ],
)
def test_tracing_is_on_only_when_configured(variables: dict[str, str], on: bool) -> None:
    assert tracing.enabled(make_settings("sqlite://", **variables)) is on


async def test_off_nothing_is_installed_and_the_outbox_row_has_no_trace_context(
    app: FastAPI, engine: AsyncEngine, client: httpx.AsyncClient, user: ApiUser
) -> None:
    middleware = [getattr(m.cls, "__name__", "") for m in app.user_middleware]
    assert "OpenTelemetryMiddleware" not in middleware
    order = await create_order(client, user)
    async with engine.connect() as connection:
        rows = (await connection.execute(select(OutboxEvent.payload, OutboxEvent.headers))).all()
    [headers] = [headers for payload, headers in rows if payload.get("order_id") == order["id"]]
    assert "traceparent" not in headers
    assert "request_id" in headers


def test_oms_api_under_uvicorn_serves_traced_requests(postgres_url: str, tmp_path: Path) -> None:
    """FastAPI's route tree and the instrumentation must agree (a mismatch answers 500)."""
    spans = tmp_path / "spans.jsonl"
    env = api_environment(postgres_url, otel_traces_exporter="console", traces_file=str(spans))
    with running_api(env) as api:
        email = unique_email()
        registered = httpx.post(f"{api.url}/register/", json={"email": email, "password": PASSWORD})
        assert registered.status_code == 201, api.log()
    names = {json.loads(line)["name"] for line in spans.read_text().splitlines()}
    assert "POST /register/" in names
    assert not any(name.startswith("GET /health") for name in names)
