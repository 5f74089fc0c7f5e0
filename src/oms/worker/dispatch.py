"""Handing an order to `process_order`: Celery (Redis broker) or, embedded, a worker thread.

The consumer and the sweeper only see `TaskDispatcher`; the transport is chosen by settings.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import structlog

from oms.config import Settings
from oms.worker.processing import OrderProcessor

log = structlog.get_logger(__name__)

# Bounded in the publishing thread too: `.delay()` retries forever by default when Redis is down.
CELERY_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0.2,
    "interval_step": 0.5,
    "interval_max": 1.0,
}


class DispatchError(Exception):
    """The task could not be handed off; nothing was queued, or it is unknown whether it was."""


class TaskDispatcher(Protocol):
    async def dispatch(self, order_id: uuid.UUID, request_id: str | None) -> None:
        """Return once the task is safely queued; raise `DispatchError` otherwise."""

    async def close(self) -> None: ...


class CeleryDispatcher:
    """`apply_async` in a bounded thread pool with a timeout: the event loop never blocks."""

    def __init__(self, settings: Settings, threads: int = 8) -> None:
        from oms.worker.celery_app import configure_celery

        configure_celery(settings)
        self._timeout = settings.celery_publish_timeout_seconds
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="celery-dispatch")

    @staticmethod
    def _send(order_id: uuid.UUID, request_id: str | None) -> None:
        from oms.worker.tasks import process_order

        process_order.apply_async(
            args=(str(order_id),),
            kwargs={"request_id": request_id},
            retry=True,
            retry_policy=CELERY_RETRY_POLICY,
        )

    async def dispatch(self, order_id: uuid.UUID, request_id: str | None) -> None:
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, self._send, order_id, request_id)
        try:
            await asyncio.wait_for(loop.run_in_executor(self._executor, call), self._timeout)
        except TimeoutError as error:
            raise DispatchError(
                f"Celery broker did not accept the task in {self._timeout}s"
            ) from error
        except Exception as error:
            raise DispatchError(f"{type(error).__name__}: {error}") from error

    async def close(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, True, cancel_futures=True)


class ThreadDispatcher:
    """Embedded mode (no CELERY_BROKER_URL): the task runs in a worker thread of this process.

    Queued work lives in memory; if the process dies, the sweeper re-dispatches from the database.
    """

    def __init__(self, processor: OrderProcessor, threads: int) -> None:
        self._processor = processor
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="order-task")

    def _run(self, order_id: uuid.UUID, request_id: str | None) -> None:
        with structlog.contextvars.bound_contextvars(order_id=str(order_id), request_id=request_id):
            try:
                self._processor.process(order_id)
            except Exception:
                log.exception("process_order failed; the sweeper will re-dispatch the order")

    async def dispatch(self, order_id: uuid.UUID, request_id: str | None) -> None:
        try:
            self._executor.submit(self._run, order_id, request_id)
        except RuntimeError as error:  # shut down
            raise DispatchError(str(error)) from error

    async def close(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, True)
