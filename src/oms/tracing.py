"""OpenTelemetry tracing: one trace per order across the API, relay, consumer and worker.

Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_TRACES_EXPORTER` is set (and not `none`).
Off, nothing is installed: no middleware, no patched client, no span; the helpers below return
at once on a module flag, so the hot paths pay one boolean test.

The trace crosses processes as W3C trace context (`traceparent`/`tracestate`): the API stores it
in the outbox row's `headers` (beside `request_id`), the relay starts a span per event from it
and sends its own context in the AMQP headers, the consumer starts a span per event from those
and hands its context to the `process_order` task in the Celery message headers, where Celery's
instrumentation continues it. The aio-pika instrumentation is not used: the relay publishes a
whole batch at once and the consumer hands off in batches, so a per-call span would have the
wrong parent; the spans here are per event instead.

Standard OpenTelemetry variables configure the rest (`OTEL_EXPORTER_OTLP_HEADERS`,
`OTEL_RESOURCE_ATTRIBUTES`, sampling, ...). `OTEL_TRACES_EXPORTER=console` with `TRACES_FILE`
appends the spans as JSON lines to that file (for tests and debugging).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from oms.events.bus import OutgoingEvent

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider
    from sqlalchemy.engine import Engine

    from oms.config import Settings

TRACE_HEADERS = ("traceparent", "tracestate")
EXCLUDED_URLS = "health,metrics,docs,openapi.json"

_lock = threading.Lock()
_provider: TracerProvider | None = None
_provider_pid: int | None = None
_active = False  # True once a provider serves this process (the hot-path test)


def enabled(settings: Settings) -> bool:
    exporter = (settings.otel_traces_exporter or "").strip().lower()
    if exporter == "none":
        return False
    return bool(exporter or settings.otel_exporter_otlp_endpoint)


def active() -> bool:
    return _active


def setup(settings: Settings, service: str) -> TracerProvider | None:
    """The process's tracer provider for `service` (`oms-api`, `oms-relay`, ...), installed as
    the global one with the Redis instrumentation; None, and nothing done, when tracing is off.
    Idempotent within a process (the API's factory runs once per uvicorn worker)."""
    global _provider, _provider_pid
    if not enabled(settings):
        return None
    with _lock:
        if _provider is not None and _provider_pid == os.getpid():
            return _provider
        from opentelemetry.instrumentation.redis import RedisInstrumentor
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider

        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
        provider.add_span_processor(_processor(settings))
        trace.set_tracer_provider(provider)
        RedisInstrumentor().instrument(tracer_provider=provider)
        _provider, _provider_pid = provider, os.getpid()
        activate()
        return provider


def activate() -> None:
    """Mark tracing on in this process (done by `setup`; a test with its own provider too)."""
    global _active
    _active = True


def _processor(settings: Settings) -> Any:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    exporter = (settings.otel_traces_exporter or "otlp").strip().lower()
    if exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        out: IO[str] = (
            open(settings.traces_file, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
            if settings.traces_file
            else sys.stderr  # stdout carries the JSON log lines
        )
        # Synchronous: a worker child or a killed process loses no span (debugging only).
        return SimpleSpanProcessor(
            ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n")
        )
    if exporter != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER={exporter!r}: use otlp, console or none")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # Endpoint, headers and timeout from the standard OTEL_EXPORTER_OTLP_* variables.
    return BatchSpanProcessor(OTLPSpanExporter())


def instrument_app(app: FastAPI, provider: TracerProvider | None) -> None:
    """Server spans for every request but health, metrics and docs; nothing when off."""
    if provider is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    activate()
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, excluded_urls=EXCLUDED_URLS)


def instrument_engine(engine: Engine) -> None:
    """A span per SQL statement on this engine, when tracing is on."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    SQLAlchemyInstrumentor().instrument(engine=engine, tracer_provider=_provider)


def instrument_celery_worker() -> None:
    """The `process_order` run continues the context in its message headers."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    CeleryInstrumentor().instrument(tracer_provider=_provider)  # type: ignore[no-untyped-call]


def inject_into(headers: MutableMapping[str, Any]) -> None:
    """Add the current trace context (the request's span) to an outbox row's headers."""
    if _active:
        propagate.inject(headers)


def _tracer() -> trace.Tracer:
    return trace.get_tracer("oms")


@contextmanager
def publish_spans(
    events: Sequence[OutgoingEvent],
) -> Iterator[tuple[list[OutgoingEvent], list[Span]]]:
    """A PRODUCER span per event, child of the context stored with it; yields the events with
    that span's context in their headers (so the consumer continues it) and the spans, which
    end when the block exits."""
    if not _active:
        yield list(events), []
        return
    tracer = _tracer()
    spans: list[Span] = []
    rewritten: list[OutgoingEvent] = []
    for event in events:
        headers = dict(event.headers)
        parent = propagate.extract(headers)
        span = tracer.start_span(
            f"{event.event_type} publish",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "send",
                "messaging.message.id": str(event.event_id),
            },
        )
        for key in TRACE_HEADERS:
            headers.pop(key, None)
        propagate.inject(headers, context=trace.set_span_in_context(span))
        spans.append(span)
        rewritten.append(dataclasses.replace(event, headers=headers))
    try:
        yield rewritten, spans
    finally:
        for span in spans:
            span.end()


def fail(span: Span | None, error: BaseException | str) -> None:
    if span is not None:
        span.set_status(Status(StatusCode.ERROR, str(error)))


def outcome(span: Span | None, outcome: str, error: BaseException | None) -> None:
    if span is not None:
        span.set_attribute("oms.outcome", outcome)
        if error is not None:
            fail(span, error)


def start_consumer_span(headers: Mapping[str, Any], message_id: str | None) -> Span | None:
    """A CONSUMER span for one event's hand-off, child of the relay's publish span."""
    if not _active:
        return None
    carrier = {
        key: value.decode() if isinstance(value, bytes) else str(value)
        for key in TRACE_HEADERS
        if (value := headers.get(key)) is not None
    }
    return _tracer().start_span(
        "new_order hand-off",
        context=propagate.extract(carrier),
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "process",
            "messaging.message.id": message_id or "",
        },
    )


def headers_for(span: Span | None) -> dict[str, str]:
    """The trace context of `span` as message headers (empty without a span)."""
    carrier: dict[str, str] = {}
    if span is not None:
        propagate.inject(carrier, context=trace.set_span_in_context(span))
    return carrier
