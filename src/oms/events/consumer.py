"""`oms consumer`: `new_order` events → the `process_order` task, in batches.

Each message is validated on arrival (malformed → DLQ at once) and joins the next batch. A batch
(up to `CONSUMER_BATCH_SIZE` messages, or what arrived within `CONSUMER_BATCH_WAIT_SECONDS`) is
one transaction: insert every inbox row (`ON CONFLICT DO NOTHING RETURNING` finds the event ids
seen before), hand the new orders to the task queue over one broker connection, delete the inbox
rows of those that failed, stamp the orders' hand-off time in one statement, commit; then each
message is acked. A failed hand-off is retried with backoff by re-queueing a copy with its
attempt count raised, never spinning; after `CONSUMER_MAX_ATTEMPTS` it goes to the DLQ (the
sweeper still processes the order from the database).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from opentelemetry.trace import Span
from pydantic import ValidationError
from sqlalchemy import delete, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from oms import tracing
from oms.config import Settings
from oms.db import utcnow
from oms.events.bus import REQUEST_ID_HEADER, Delivery, attempt_of
from oms.events.metrics import EVENTS_CONSUMED, EVENTS_DEAD_LETTERED
from oms.events.models import InboxEvent
from oms.events.schemas import NEW_ORDER, NewOrderEvent
from oms.orders.models import Order
from oms.worker.dispatch import TaskDispatcher

log = structlog.get_logger(__name__)

Outcome = Literal["handed_off", "duplicate", "failed"]


def retry_delay(settings: Settings, attempt: int) -> float:
    """Exponential backoff for the n-th failed attempt (1-based), capped."""
    return float(
        min(
            settings.consumer_retry_max_seconds,
            settings.consumer_retry_base_seconds * 2 ** (attempt - 1),
        )
    )


@dataclass(slots=True)
class _Pending:
    """A valid event waiting for its batch; the batch settles `outcome`."""

    event: NewOrderEvent
    request_id: str | None
    span: Span | None  # this event's hand-off span, when tracing is on
    outcome: asyncio.Future[tuple[Outcome, Exception | None]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def settle(self, outcome: Outcome, error: Exception | None = None) -> None:
        if not self.outcome.done():
            self.outcome.set_result((outcome, error))


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
        self._batch_size = settings.consumer_batch_size
        self._batch_wait = settings.consumer_batch_wait_seconds
        self._queued: list[_Pending] = []
        self._full = asyncio.Event()
        # One batch at a time, so one database connection per consumer; started by the first
        # message to arrive and ended once nothing waits (no task outlives the traffic).
        self._batches: asyncio.Task[None] | None = None

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
                span = tracing.start_consumer_span(delivery.headers, delivery.message_id)
                pending = _Pending(event, request_id, span)
                self._enqueue(pending)
                try:
                    outcome, failure = await asyncio.shield(pending.outcome)
                    tracing.outcome(span, outcome, failure)
                    await self._settle(delivery, outcome, failure)
                finally:
                    if span is not None:
                        span.end()

    def _enqueue(self, pending: _Pending) -> None:
        self._queued.append(pending)
        if len(self._queued) >= self._batch_size:
            self._full.set()
        if self._batches is None:
            # A context of its own: the batch serves many events, so it must not log with the
            # request id of the one that happened to start it.
            self._batches = asyncio.create_task(
                self._run_batches(), name="consumer-batches", context=contextvars.Context()
            )

    async def _run_batches(self) -> None:
        try:
            while self._queued:
                if len(self._queued) < self._batch_size and self._batch_wait > 0:
                    # A moment for the rest of a burst to arrive: fewer, fuller transactions.
                    self._full.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), self._batch_wait)
                batch = self._queued[: self._batch_size]
                del self._queued[: self._batch_size]
                await self._hand_off(batch)
        except BaseException as error:
            for pending in self._queued:
                pending.settle("failed", RuntimeError(f"batch aborted: {error!r}"))
            self._queued.clear()
            raise
        finally:
            self._batches = None

    async def _hand_off(self, batch: Sequence[_Pending]) -> None:
        """Settle every message of the batch; never raises."""
        firsts: dict[uuid.UUID, _Pending] = {}
        for pending in batch:
            if pending.event.event_id in firsts:
                # A second copy within the batch: the first one stands for both (if its
                # hand-off fails, its retry carries the event).
                pending.settle("duplicate")
            else:
                firsts[pending.event.event_id] = pending
        handed_off: list[_Pending] = []
        failed: list[_Pending] = []
        duplicates = len(batch) - len(firsts)
        dispatched = False
        try:
            # The inbox rows are inserted first but only committed after the hand-off, so a
            # row exists exactly when its task was queued; a concurrent copy of the same event
            # in another consumer waits on the uncommitted row and then finds it.
            async with self._sessionmaker.begin() as session:
                new = await self._insert_inbox_rows(session, list(firsts))
                for event_id, pending in firsts.items():
                    if event_id not in new:
                        pending.settle("duplicate")
                        duplicates += 1
                fresh = [firsts[event_id] for event_id in firsts if event_id in new]
                orders = [(p.event.order_id, p.request_id) for p in fresh]
                # With tracing on, each task continues its own event's trace.
                headers = [tracing.headers_for(p.span) for p in fresh] if tracing.active() else None
                results = await self._dispatcher.dispatch_many(orders, trace_headers=headers)
                dispatched = True
                for pending, error in zip(fresh, results, strict=True):
                    (handed_off if error is None else failed).append(pending)
                    if error is not None:
                        pending.settle("failed", error)
                if failed:
                    await session.execute(
                        delete(InboxEvent).where(
                            InboxEvent.event_id.in_([p.event.event_id for p in failed])
                        )
                    )
                if handed_off:
                    await session.execute(
                        update(Order)
                        .where(Order.id.in_([p.event.order_id for p in handed_off]))
                        .values(dispatched_at=utcnow())
                    )
        except Exception as error:
            if not dispatched:
                for pending in firsts.values():
                    pending.settle("failed", error)
                log.warning(
                    "Hand-off batch failed before publishing",
                    events=len(batch),
                    error=f"{type(error).__name__}: {error}",
                )
                return
            # The tasks are queued, which is what matters; a redelivery would only queue a
            # second run, which the task recognises and skips.
            log.warning(
                "Could not record the hand-off",
                events=len(handed_off),
                error=f"{type(error).__name__}: {error}",
            )
        for pending in handed_off:
            pending.settle("handed_off")
        log.info(
            "Batch handed off to process_order",
            events=len(batch),
            handed_off=len(handed_off),
            duplicates=duplicates,
            failed=len(failed),
        )

    async def _settle(self, delivery: Delivery, outcome: Outcome, error: Exception | None) -> None:
        attempt = attempt_of(delivery)
        if outcome == "duplicate":
            log.info("Duplicate event dropped")
            await delivery.ack()
            EVENTS_CONSUMED.labels("duplicate").inc()
        elif outcome == "handed_off":
            log.info("Event handed off to process_order", attempt=attempt)
            await delivery.ack()
            EVENTS_CONSUMED.labels("handed_off").inc()
        else:
            await self._failed(delivery, attempt, error or RuntimeError("hand-off failed"))

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
    async def _insert_inbox_rows(
        session: AsyncSession, event_ids: list[uuid.UUID]
    ) -> set[uuid.UUID]:
        """Add the events to the inbox; returns those that were not there already."""
        if not event_ids:
            return set()
        dialect = session.get_bind().dialect.name
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        now = utcnow()
        # Sorted: two consumers inserting overlapping batches lock the rows in the same order,
        # so they wait for each other instead of deadlocking.
        rows = [
            {"event_id": event_id, "event_type": NEW_ORDER, "received_at": now}
            for event_id in sorted(event_ids)
        ]
        # Parameters as an "executemany": SQLAlchemy compiles the statement once (cached) and
        # sends the rows as one multi-row INSERT; a `.values(rows)` would be compiled anew for
        # every batch, a tenth of the consumer's CPU.
        inserted = await session.scalars(
            insert(InboxEvent).on_conflict_do_nothing().returning(InboxEvent.event_id), rows
        )
        return set(inserted.all())


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
    tracing.setup(settings, "oms-consumer")
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
