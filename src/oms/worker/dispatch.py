"""Handing an order to `process_order`: Celery (Redis broker) or, embedded, a worker thread.

The consumer and the sweeper only see `TaskDispatcher`; the transport is chosen by settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

import redis
import structlog

from oms.config import Settings
from oms.worker.processing import OrderProcessor
from oms.worker.waiting import MARK_HEADER, Pending, QueueStats, WaitingTasks

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Bounded in the publishing thread too: `.delay()` retries forever by default when Redis is down.
CELERY_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0.2,
    "interval_step": 0.5,
    "interval_max": 1.0,
}


class DispatchError(Exception):
    """The task could not be handed off; nothing was queued, or it is unknown whether it was."""


# What the consumer hands to `process_order`: the order and the request it came from.
Handoff = tuple[uuid.UUID, str | None]


class TaskDispatcher(Protocol):
    async def dispatch(self, order_id: uuid.UUID, request_id: str | None) -> None:
        """Return once the task is safely queued; raise `DispatchError` otherwise."""

    async def dispatch_many(
        self,
        orders: Sequence[Handoff],
        trace_headers: Sequence[Mapping[str, str]] | None = None,
    ) -> list[DispatchError | None]:
        """Queue a task for each (order id, request id); one entry per order: None once its
        task is safely queued, else why not. Never raises for a broker failure.
        `trace_headers`, one per order, go into the task messages (W3C trace context)."""

    async def pending(self, order_ids: Sequence[uuid.UUID]) -> Pending:
        """Of these orders, those whose task still waits in the queue or runs in a worker, and
        those to ask about again; raise `DispatchError` when that cannot be known."""

    async def record_redispatches(self, count: int) -> None:
        """Count re-dispatches by the sweeper; never raises."""

    async def stats(self) -> QueueStats:
        """The queue's depth and counts; raise `DispatchError` when they cannot be read."""

    async def close(self) -> None: ...


async def dispatch_each(
    dispatcher: TaskDispatcher, orders: Sequence[Handoff]
) -> list[DispatchError | None]:
    """`dispatch_many` for a transport without batches: one hand-off after the other."""
    results: list[DispatchError | None] = []
    for order_id, request_id in orders:
        try:
            await dispatcher.dispatch(order_id, request_id)
            results.append(None)
        except DispatchError as error:
            results.append(error)
    return results


class CeleryDispatcher:
    """`apply_async` in a bounded thread pool with a timeout: the event loop never blocks."""

    def __init__(self, settings: Settings, threads: int = 8) -> None:
        from oms.worker.celery_app import configure_celery

        configure_celery(settings)
        self._timeout = settings.celery_publish_timeout_seconds
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="celery-dispatch")
        self._waiting = WaitingTasks(settings)

    def _send_many(
        self,
        orders: Sequence[Handoff],
        trace_headers: Sequence[Mapping[str, str]] | None,
        sent: list[uuid.UUID],
        give_up: threading.Event,
    ) -> None:
        """Mark the orders waiting (one round trip, BEFORE the publish: see `WaitingTasks.add`),
        publish the tasks, each carrying its mark's time, over one pooled producer in one Redis
        round trip (kombu's `Producer.batch()`: a pipeline of LPUSHes flushed when the block
        exits), then add every order to `sent`.
        Any error, or the caller's timeout giving up first, discards the unflushed batch and
        the marks: nothing of it is queued. The flush itself is not retried (kombu will not
        replay a pipeline that may have run in part): a failed batch takes the consumer's
        per-message retry path instead."""
        from oms.worker.celery_app import app
        from oms.worker.tasks import process_order

        order_ids = [order_id for order_id, _ in orders]
        marked_at = time.time()
        try:
            self._waiting.add(order_ids, marked_at)
        except redis.RedisError as error:
            log.warning("Tasks not marked waiting; publishing them all the same", error=str(error))
        try:
            with (
                app.producer_or_acquire() as producer,
                producer.batch(max_size=len(orders) or 1),
            ):
                for index, (order_id, request_id) in enumerate(orders):
                    headers = {**trace_headers[index]} if trace_headers else {}
                    headers[MARK_HEADER] = repr(marked_at)
                    process_order.apply_async(
                        args=(str(order_id),),
                        kwargs={"request_id": request_id},
                        headers=headers,
                        producer=producer,
                        retry=True,
                        retry_policy=CELERY_RETRY_POLICY,
                    )
                if give_up.is_set():
                    raise DispatchError("gave up before publishing")
        except BaseException:
            self._waiting.discard(order_ids)
            raise
        sent.extend(order_ids)

    async def _in_thread(self, function: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, function, *args)
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._executor, call), self._timeout)
        except TimeoutError as error:
            raise DispatchError(f"Celery's Redis did not answer in {self._timeout}s") from error
        except Exception as error:
            raise DispatchError(f"{type(error).__name__}: {error}") from error

    async def dispatch(self, order_id: uuid.UUID, request_id: str | None) -> None:
        (error,) = await self.dispatch_many([(order_id, request_id)])
        if error is not None:
            raise error

    async def dispatch_many(
        self,
        orders: Sequence[Handoff],
        trace_headers: Sequence[Mapping[str, str]] | None = None,
    ) -> list[DispatchError | None]:
        sent: list[uuid.UUID] = []
        give_up = threading.Event()
        failure: DispatchError | None = None
        try:
            await self._in_thread(self._send_many, orders, trace_headers, sent, give_up)
        except DispatchError as error:
            # A batch flushed while the timeout expired, or whose pipeline broke half way, may
            # be queued in part and still reported failed: its retry is a second task for
            # those orders, which the task recognises and skips (at least once, effect once).
            give_up.set()
            failure = error
        done = set(sent)
        return [None if order_id in done else failure for order_id, _ in orders]

    async def pending(self, order_ids: Sequence[uuid.UUID]) -> Pending:
        return await self._in_thread(self._waiting.pending, order_ids)

    async def record_redispatches(self, count: int) -> None:
        with contextlib.suppress(DispatchError):
            await self._in_thread(self._waiting.record_redispatches, count)

    async def stats(self) -> QueueStats:
        return await self._in_thread(self._waiting.stats)

    async def close(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, True, cancel_futures=True)
        self._waiting.close()


class ThreadDispatcher:
    """Embedded mode (no CELERY_BROKER_URL): the task runs in a worker thread of this process.

    Queued work lives in memory; if the process dies, the sweeper re-dispatches from the database.
    """

    def __init__(self, processor: OrderProcessor, threads: int) -> None:
        self._processor = processor
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="order-task")
        self._queued: set[uuid.UUID] = set()
        self._running: set[uuid.UUID] = set()
        self._queued_lock = threading.Lock()
        self._redispatched = 0

    def _run(self, order_id: uuid.UUID, request_id: str | None) -> None:
        with self._queued_lock:
            self._running.add(order_id)
        with structlog.contextvars.bound_contextvars(order_id=str(order_id), request_id=request_id):
            try:
                self._processor.process(order_id)
            except Exception:
                log.exception("process_order failed; the sweeper will re-dispatch the order")
            finally:
                with self._queued_lock:
                    self._queued.discard(order_id)
                    self._running.discard(order_id)

    async def dispatch(self, order_id: uuid.UUID, request_id: str | None) -> None:
        with self._queued_lock:
            self._queued.add(order_id)
        try:
            self._executor.submit(self._run, order_id, request_id)
        except RuntimeError as error:  # shut down
            with self._queued_lock:
                self._queued.discard(order_id)
            raise DispatchError(str(error)) from error

    async def dispatch_many(
        self,
        orders: Sequence[Handoff],
        trace_headers: Sequence[Mapping[str, str]] | None = None,
    ) -> list[DispatchError | None]:
        # Embedded: the task runs in this process, outside the trace (no message to carry it).
        return await dispatch_each(self, orders)

    async def pending(self, order_ids: Sequence[uuid.UUID]) -> Pending:
        with self._queued_lock:
            return Pending(frozenset(self._queued.intersection(order_ids)), frozenset())

    async def record_redispatches(self, count: int) -> None:
        self._redispatched += count

    async def stats(self) -> QueueStats:
        with self._queued_lock:
            running = len(self._running)
            return QueueStats(len(self._queued) - running, running, self._redispatched)

    async def close(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, True)
