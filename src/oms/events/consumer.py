"""`oms consumer`: `new_order` events → the `process_order` task.

For each message: validate the body (malformed → DLQ at once), drop it if its event id is in
the inbox, hand the order to the task queue, commit the inbox row and the order's hand-off time,
then ack. A failed hand-off is retried with backoff by re-queueing a copy
with its attempt count raised, never spinning; after `CONSUMER_MAX_ATTEMPTS` it goes to the DLQ
(the sweeper still processes the order from the database).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from pydantic import ValidationError
from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from oms.config import Settings
from oms.db import utcnow
from oms.events.bus import REQUEST_ID_HEADER, Delivery, attempt_of
from oms.events.metrics import EVENTS_CONSUMED, EVENTS_DEAD_LETTERED
from oms.events.models import InboxEvent
from oms.events.schemas import NEW_ORDER, NewOrderEvent
from oms.orders.models import Order
from oms.worker.dispatch import TaskDispatcher

log = structlog.get_logger(__name__)


def retry_delay(settings: Settings, attempt: int) -> float:
    """Exponential backoff for the n-th failed attempt (1-based), capped."""
    return float(
        min(
            settings.consumer_retry_max_seconds,
            settings.consumer_retry_base_seconds * 2 ** (attempt - 1),
        )
    )


class NewOrderHandler:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        dispatcher: TaskDispatcher,
    ) -> None:
        self._settings = settings
        self._sessionmaker = sessionmaker
        self._dispatcher = dispatcher

    async def handle(self, delivery: Delivery) -> None:
        request_id = _text(delivery.headers.get(REQUEST_ID_HEADER))
        with structlog.contextvars.bound_contextvars(
            request_id=request_id, event_id=delivery.message_id
        ):
            try:
                event = NewOrderEvent.model_validate_json(delivery.body)
            except ValidationError as error:
                log.warning(
                    "Malformed event; moved to the dead-letter queue",
                    errors=error.errors(include_url=False, include_input=False)[:5],
                )
                await delivery.dead_letter("malformed")
                EVENTS_DEAD_LETTERED.labels("malformed").inc()
                return
            with structlog.contextvars.bound_contextvars(
                event_id=str(event.event_id), order_id=str(event.order_id)
            ):
                await self._hand_off(delivery, event, request_id)

    async def _hand_off(
        self, delivery: Delivery, event: NewOrderEvent, request_id: str | None
    ) -> None:
        attempt = attempt_of(delivery)
        handed_off = False
        try:
            # The inbox row is inserted first but only committed after the hand-off, so it
            # exists exactly when the task was queued; a concurrent copy of the same event
            # waits on the uncommitted row and then finds it.
            async with self._sessionmaker.begin() as session:
                if not await self._insert_inbox_row(session, event):
                    duplicate = True
                else:
                    duplicate = False
                    await self._dispatcher.dispatch(event.order_id, request_id)
                    handed_off = True
                    await session.execute(
                        update(Order)
                        .where(Order.id == event.order_id)
                        .values(dispatched_at=utcnow())
                    )
        except Exception as error:
            if not handed_off:
                await self._failed(delivery, attempt, error)
                return
            # The task is queued, which is what matters; a redelivery would only queue a
            # second run, which the task recognises and skips.
            log.warning("Could not record the hand-off", error=f"{type(error).__name__}: {error}")
            duplicate = False
        if duplicate:
            log.info("Duplicate event dropped")
            await delivery.ack()
            EVENTS_CONSUMED.labels("duplicate").inc()
            return
        log.info("Event handed off to process_order", attempt=attempt)
        await delivery.ack()
        EVENTS_CONSUMED.labels("handed_off").inc()

    async def _failed(self, delivery: Delivery, attempt: int, error: Exception) -> None:
        reason = f"{type(error).__name__}: {error}"
        if attempt >= self._settings.consumer_max_attempts:
            log.error(
                "Hand-off failed for the last time; moved to the dead-letter queue",
                attempt=attempt,
                error=reason,
            )
            await delivery.dead_letter("hand-off failed")
            EVENTS_DEAD_LETTERED.labels("attempts_exhausted").inc()
            return
        delay = retry_delay(self._settings, attempt)
        log.warning("Hand-off failed; will retry", attempt=attempt, retry_in=delay, error=reason)
        # Holding the message while waiting bounds the retry rate by the prefetch window.
        await asyncio.sleep(delay)
        await delivery.retry()
        EVENTS_CONSUMED.labels("retried").inc()

    @staticmethod
    async def _insert_inbox_row(session: AsyncSession, event: NewOrderEvent) -> bool:
        """Add the event to the inbox; False if it is there already (a duplicate)."""
        dialect = session.get_bind().dialect.name
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        inserted = await session.scalar(
            insert(InboxEvent)
            .values(event_id=event.event_id, event_type=NEW_ORDER, received_at=utcnow())
            .on_conflict_do_nothing()
            .returning(InboxEvent.event_id)
        )
        return inserted is not None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


async def run_consumer(settings: Settings) -> int:
    """The `oms consumer` process: 0 after SIGTERM/SIGINT, 1 if RabbitMQ cannot be resumed."""
    from oms.db import create_engine, create_sessionmaker
    from oms.events.metrics import serve_metrics
    from oms.events.process import build_dispatcher, stop_on_signals
    from oms.events.rabbitmq import RabbitBus

    serve_metrics(settings)
    stop = stop_on_signals()
    engine = create_engine(settings)
    dispatcher = build_dispatcher(settings)
    bus = RabbitBus(settings)
    handler = NewOrderHandler(settings, create_sessionmaker(engine), dispatcher)
    exit_code = 0
    try:
        try:
            await _start_with_retries(bus, handler, settings, stop)
        except _GaveUp:
            return 1
        if stop.is_set():
            return 0
        log.info("Consumer started", queue=settings.new_order_queue)
        stopped = asyncio.create_task(stop.wait())
        lost = asyncio.create_task(bus.wait_unrecoverable())
        done, pending = await asyncio.wait({stopped, lost}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if lost in done:
            log.error("RabbitMQ connection could not be resumed; exiting for a restart")
            exit_code = 1
        else:
            log.info("Stopping: finishing the messages in progress")
        return exit_code
    finally:
        await bus.close()
        await dispatcher.close()
        await engine.dispose()
        log.info("Consumer stopped", exit_code=exit_code)


class _GaveUp(Exception):
    pass


async def _start_with_retries(
    bus: Any, handler: NewOrderHandler, settings: Settings, stop: asyncio.Event
) -> None:
    """RabbitMQ may still be starting: keep trying for the resume timeout, then give up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.rabbitmq_resume_timeout_seconds
    delay = settings.rabbitmq_reconnect_interval_seconds
    while not stop.is_set():
        try:
            await bus.start_consuming(handler.handle)
            return
        except Exception as error:
            if loop.time() >= deadline:
                log.error("Cannot reach RabbitMQ; giving up", error=str(error))
                raise _GaveUp from error
            log.warning("Cannot reach RabbitMQ yet; retrying", error=str(error), retry_in=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
