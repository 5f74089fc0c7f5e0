"""The sweeper: the database, not the task queue, decides that an order still needs processing.

It runs in the relay process (every relay; `FOR UPDATE SKIP LOCKED` splits the work between
replicas) rather than in Celery beat: the relay is already the long-lived process that owns the
outbox, and beat would be one more single-instance process to run and supervise.

An order whose `processed_at` is still empty `PROCESSING_TIMEOUT_SECONDS` after its last hand-off
(or after its creation, if it was never handed off: a dead-lettered event, an outbox row that
waited out a long RabbitMQ outage) is dispatched again, unless its task still waits in the Celery
queue, is held by a worker or runs (`oms.worker.waiting`): a backlog is not a loss, and re-queueing
work that is only waiting would multiply the backlog. A task that has left the queue without a
worker showing it yet is looked at again at the next sweep: held by then, or lost. An order seen
pending counts as handed off at that moment, so the scan moves on to older ones and a task lost
later (a Redis restart) is re-dispatched at most `PROCESSING_TIMEOUT_SECONDS` plus one sweep after
the loss. The task's own check makes a second run harmless, so a re-dispatch of an order that was
merely slow costs one idle task, never a second processing.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from oms.config import Settings
from oms.db import count_and_oldest, utcnow
from oms.events.metrics import (
    CELERY_QUEUE_DEPTH,
    OLDEST_UNPROCESSED_AGE,
    ORDERS_REDISPATCHED,
    ORDERS_SEEN_PENDING,
    ORDERS_UNPROCESSED,
    TASKS_RUNNING,
)
from oms.events.relay import age_seconds, update_backlog_metrics, wait_any
from oms.orders.models import Order
from oms.worker.dispatch import DispatchError, TaskDispatcher

log = structlog.get_logger(__name__)


async def unprocessed_orders(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> tuple[int, datetime | None]:
    """How many orders await processing and when the oldest of them was created."""
    return await count_and_oldest(sessionmaker, Order.created_at, Order.processed_at.is_(None))


class Sweeper:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        dispatcher: TaskDispatcher,
    ) -> None:
        self._settings = settings
        self._sessionmaker = sessionmaker
        self._dispatcher = dispatcher

    async def sweep_once(self) -> int:
        """Re-dispatch overdue orders whose task is lost; returns how many were handed off."""
        now = utcnow()
        cutoff = now - timedelta(seconds=self._settings.processing_timeout_seconds)
        last_hand_off = func.coalesce(Order.dispatched_at, Order.created_at)
        async with self._sessionmaker.begin() as session:
            overdue = (
                await session.scalars(
                    select(Order.id)
                    .where(Order.processed_at.is_(None), last_hand_off < cutoff)
                    .order_by(Order.created_at)
                    .limit(self._settings.sweeper_batch_size)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not overdue:
                return 0
            try:
                pending = await self._dispatcher.pending(overdue)
            except DispatchError as error:
                log.warning("Sweeper cannot see the task queue; will try again", error=str(error))
                return 0
            # An order in `pending.unsure` is neither: it stays overdue for the next sweep.
            lost = [o for o in overdue if o not in pending.live and o not in pending.unsure]
            # One publish batch for the sweep, as the consumer hands off.
            results = (
                await self._dispatcher.dispatch_many([(o, None) for o in lost]) if lost else []
            )
            dispatched = [o for o, error in zip(lost, results, strict=True) if error is None]
            failure = next((error for error in results if error is not None), None)
            if failure is not None:
                log.warning("Sweeper cannot dispatch; will try again", error=str(failure))
            seen = [*pending.live, *dispatched]
            if seen:
                await session.execute(
                    update(Order).where(Order.id.in_(seen)).values(dispatched_at=now)
                )
        if pending.live:
            ORDERS_SEEN_PENDING.inc(len(pending.live))
        if dispatched:
            ORDERS_REDISPATCHED.inc(len(dispatched))
            await self._dispatcher.record_redispatches(len(dispatched))
            log.warning(
                "Re-dispatched orders still unprocessed after the timeout",
                count=len(dispatched),
                timeout_seconds=self._settings.processing_timeout_seconds,
            )
        return len(dispatched)

    async def _update_processing_metrics(self) -> None:
        count, oldest = await unprocessed_orders(self._sessionmaker)
        ORDERS_UNPROCESSED.set(count)
        OLDEST_UNPROCESSED_AGE.set(age_seconds(oldest))
        try:
            stats = await self._dispatcher.stats()
        except DispatchError:
            return  # the broker is down: the sweep itself has logged it
        CELERY_QUEUE_DEPTH.set(stats.queued)
        TASKS_RUNNING.set(stats.running)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.sweep_once()
                await update_backlog_metrics(self._sessionmaker)
                await self._update_processing_metrics()
            except Exception as error:
                log.warning("Sweep failed", error=f"{type(error).__name__}: {error}")
            await wait_any(stop, None, self._settings.sweeper_interval_seconds)
