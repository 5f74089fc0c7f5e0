"""One order, one trace: API → outbox → relay → RabbitMQ → consumer → Celery task.

The API runs in the test process with an in-memory exporter; the relay, the consumer and the
worker are real processes (`OTEL_TRACES_EXPORTER=console`, spans as JSON lines in a file each).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from oms import tracing
from oms.main import create_app
from tests.conftest import make_settings, register_and_login
from tests.events.conftest import Pipeline
from tests.support.processes import eventually


def _spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _hex(number: int, width: int) -> str:
    return f"0x{number:0{width}x}"


def _one(spans: list[dict[str, Any]], kind: str, name_end: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["kind"] == f"SpanKind.{kind}" and s["name"].endswith(name_end)]


async def test_an_order_is_one_trace_across_every_role(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The test process's tracing state is restored afterwards (other tests run untraced).
    monkeypatch.setattr(tracing, "_active", False)
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: "oms-api"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    files = {role: tmp_path / f"spans-{role}.jsonl" for role in ("relay", "consumer", "worker")}
    for role, path in files.items():
        pipeline.start(role, OTEL_TRACES_EXPORTER="console", TRACES_FILE=str(path))

    app = create_app(make_settings(pipeline.database_url), tracer_provider=provider)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        user = await register_and_login(client)
        exporter.clear()
        response = await client.post(
            "/orders/",
            json={"items": [{"product_id": "SKU-1", "quantity": 1, "price": 1.5}]},
            headers=user.headers,
        )
        assert response.status_code == 201, response.text
        order_id = response.json()["id"]
        await pipeline.wait_processed([order_id], 30)

    posts: list[ReadableSpan] = [
        span
        for span in exporter.get_finished_spans()
        if span.kind == SpanKind.SERVER and span.name == "POST /orders/"
    ]
    assert len(posts) == 1, [span.name for span in exporter.get_finished_spans()]
    post = posts[0]
    assert post.context is not None
    trace_id = _hex(post.context.trace_id, 32)

    # The outbox row carries the request's context beside its request id.
    [(headers,)] = pipeline.query("SELECT headers FROM outbox")
    assert headers["traceparent"].split("-")[1] == trace_id[2:], headers
    assert headers["request_id"]

    worker_spans = await eventually(
        lambda: _one(_spans(files["worker"]), "CONSUMER", "oms.process_order"),
        30,
        lambda: pipeline.logs() + "".join(str(_spans(p)) for p in files.values()),
    )
    [publish] = _one(_spans(files["relay"]), "PRODUCER", " publish")
    [hand_off] = _one(_spans(files["consumer"]), "CONSUMER", " hand-off")
    [task] = worker_spans

    chain = [publish, hand_off, task]
    assert [span["context"]["trace_id"] for span in chain] == [trace_id] * 3
    assert [span["resource"]["attributes"]["service.name"] for span in chain] == [
        "oms-relay",
        "oms-consumer",
        "oms-worker",
    ]
    # Each step is the child of the one before it.
    assert publish["parent_id"] == _hex(post.context.span_id, 16)
    assert hand_off["parent_id"] == publish["context"]["span_id"]
    assert task["parent_id"] == hand_off["context"]["span_id"]
    assert hand_off["attributes"]["oms.outcome"] == "handed_off"
    assert task["status"]["status_code"] == "UNSET"
    # The task's SQL statements (SQLAlchemy's instrumentation) are its children.
    worker_children = [
        s for s in _spans(files["worker"]) if s["parent_id"] == task["context"]["span_id"]
    ]
    assert worker_children, _spans(files["worker"])
