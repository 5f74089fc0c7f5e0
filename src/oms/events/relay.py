"""`oms relay`: the outbox → the event bus.

Each round claims the oldest unpublished rows with `FOR UPDATE SKIP LOCKED` (several relays
split the work, none publishes a row another holds), publishes them as one batch, awaits the
confirms together and marks the confirmed rows published in the same transaction. A failed row
keeps `published_at` empty and gets `attempts` and `last_error`; the relay then backs off
(doubling, capped at `RELAY_MAX_BACKOFF_SECONDS`) and the first successful round resets it, so a
backlog drains within seconds of the broker's return.

It wakes on PostgreSQL NOTIFY (a dedicated asyncpg connection, not a pooled session) and polls
as a fallback; SQLite only polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import structlog
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from oms import tracing
from oms.config import Settings
from oms.db import count_and_oldest, utcnow
from oms.events.bus import EventPublisher, OutgoingEvent
from oms.events.metrics import (
    EVENTS_PUBLISHED,
    OUTBOX_BACKLOG,
    OUTBOX_OLDEST_AGE,
    PUBLISH_FAILURES,
)
from oms.events.models import OutboxEvent
from oms.events.outbox import OUTBOX_CHANNEL

log = structlog.get_logger(__name__)

MIN_BACKOFF_SECONDS = 0.1
MAX_ERROR_LENGTH = 1000


@dataclass(frozen=True, slots=True)
class RoundResult:
    published: int
    failed: int
    error: str | None = None


def to_outgoing(row: OutboxEvent) -> OutgoingEvent:
    return OutgoingEvent(
        event_id=row.event_id,
        event_type=row.event_type,
        body=json.dumps(row.payload, separators=(",", ":")).encode(),
        headers={key: str(value) for key, value in (row.headers or {}).items()},
    )


class Relay:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        publisher: EventPublisher,
    ) -> None:
        self._settings = settings
        self._sessionmaker = sessionmaker
        self._publisher = publisher
        self.wakeup = asyncio.Event()

    async def publish_round(self) -> RoundResult:
        """Claim, publish and mark one batch; the row locks last until the marks commit."""
        async with self._sessionmaker.begin() as session:
            rows = list(
                (
                    await session.scalars(
                        select(OutboxEvent)
                        .where(OutboxEvent.published_at.is_(None))
                        .order_by(OutboxEvent.id)
                        .limit(self._settings.relay_batch_size)
                        .with_for_update(skip_locked=True)
                    )
                ).all()
            )
            if not rows:
                return RoundResult(0, 0)
            with tracing.publish_spans([to_outgoing(row) for row in rows]) as (events, spans):
                results = await self._publisher.publish_batch(events)
                for span, error in zip(spans, results, strict=False):
                    if error is not None:
                        tracing.fail(span, error)
            now = utcnow()
            first_error: str | None = None
            for row, error in zip(rows, results, strict=True):
                row.attempts += 1
                if error is None:
                    row.published_at = now
                    row.last_error = None
                    EVENTS_PUBLISHED.labels(row.event_type).inc()
                else:
                    row.last_error = (f"{type(error).__name__}: {error}")[:MAX_ERROR_LENGTH]
                    first_error = first_error or row.last_error
            failed = sum(error is not None for error in results)
            PUBLISH_FAILURES.inc(failed)
            return RoundResult(len(rows) - failed, failed, first_error)

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until `stop` is set; the round in progress always completes."""
        backoff = 0.0
        failing = False
        while not stop.is_set():
            self.wakeup.clear()
            try:
                result = await self.publish_round()
            except Exception as error:
                result = RoundResult(0, 1, f"{type(error).__name__}: {error}")
            if result.failed:
                backoff = min(
                    max(backoff * 2, MIN_BACKOFF_SECONDS), self._settings.relay_max_backoff_seconds
                )
                if not failing:  # once per outage, not once per round
                    log.warning("Publishing failed; backing off", error=result.error)
                failing = True
                await wait_any(stop, None, backoff)
                continue
            if failing:
                log.info("Publishing works again")
            failing, backoff = False, 0.0
            if result.published >= self._settings.relay_batch_size:
                continue  # a backlog: go straight on with the next batch
            await wait_any(stop, self.wakeup, self._settings.relay_poll_interval_seconds)


async def wait_any(
    stop: asyncio.Event, wakeup: asyncio.Event | None, seconds: float | None
) -> None:
    """Sleep until `stop` or `wakeup` is set, or `seconds` (None = no limit) pass."""
    waiters = [asyncio.ensure_future(stop.wait())]
    if wakeup is not None:
        waiters.append(asyncio.ensure_future(wakeup.wait()))
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _set_event(event: asyncio.Event, *_args: object) -> None:
    event.set()


def asyncpg_dsn(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql").render_as_string(False)


async def listen_for_outbox(settings: Settings, wakeup: asyncio.Event, stop: asyncio.Event) -> None:
    """Set `wakeup` on every NOTIFY from the outbox trigger; reconnects if the link drops."""
    dsn = asyncpg_dsn(settings.database_url)
    while not stop.is_set():
        connection: asyncpg.Connection[Any] | None = None
        try:
            connection = await asyncpg.connect(dsn, timeout=settings.db_connect_timeout_seconds)
            closed = asyncio.Event()
            connection.add_termination_listener(functools.partial(_set_event, closed))
            await connection.add_listener(OUTBOX_CHANNEL, functools.partial(_set_event, wakeup))
            log.info("Listening for outbox notifications", channel=OUTBOX_CHANNEL)
            wakeup.set()  # rows committed while not listening
            await wait_any(stop, closed, None)
            if not stop.is_set():
                log.warning("Outbox listener disconnected; polling until it reconnects")
        except (OSError, asyncpg.PostgresError, TimeoutError) as error:
            log.warning("Outbox listener cannot connect; polling meanwhile", error=str(error))
            await wait_any(stop, None, settings.relay_poll_interval_seconds * 5)
        finally:
            if connection is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(connection.close(), 2)


async def outbox_backlog(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> tuple[int, datetime | None]:
    return await count_and_oldest(
        sessionmaker, OutboxEvent.created_at, OutboxEvent.published_at.is_(None)
    )


def age_seconds(moment: datetime | None) -> float:
    """Seconds since `moment`, 0 for none."""
    return 0.0 if moment is None else max(0.0, (utcnow() - moment).total_seconds())


async def update_backlog_metrics(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    count, oldest = await outbox_backlog(sessionmaker)
    OUTBOX_BACKLOG.set(count)
    OUTBOX_OLDEST_AGE.set(age_seconds(oldest))


async def run_relay(settings: Settings) -> int:
    """The `oms relay` process: relay, NOTIFY listener and sweeper until SIGTERM/SIGINT."""
    from oms.db import create_engine, create_sessionmaker
    from oms.events.metrics import serve_metrics
    from oms.events.process import build_dispatcher, stop_on_signals
    from oms.events.rabbitmq import RabbitBus
    from oms.events.sweeper import Sweeper

    serve_metrics(settings)
    tracing.setup(settings, "oms-relay")
    stop = stop_on_signals()
    engine = create_engine(settings)
    sessionmaker = create_sessionmaker(engine)
    bus = RabbitBus(settings)
    dispatcher = build_dispatcher(settings)
    relay = Relay(settings, sessionmaker, bus)
    tasks = [
        asyncio.create_task(relay.run(stop), name="relay"),
        asyncio.create_task(Sweeper(settings, sessionmaker, dispatcher).run(stop), name="sweeper"),
    ]
    if not settings.is_sqlite:
        tasks.append(asyncio.create_task(listen_for_outbox(settings, relay.wakeup, stop)))
    log.info("Relay started", exchange=settings.rabbitmq_exchange)
    try:  # declare the topology now; if RabbitMQ is down, each round tries again
        await asyncio.wait_for(bus.connect(), settings.rabbitmq_connect_timeout_seconds)
    except Exception as error:
        log.warning("RabbitMQ not reachable yet; events wait in the outbox", error=str(error))
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await bus.close()
        await dispatcher.close()
        await engine.dispose()
        log.info("Relay stopped")
    return 0
