"""Celery tasks. Each has an explicit name; the app lists this module in `include`."""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any

import structlog
from celery import Task
from sqlalchemy.exc import OperationalError

from oms.worker.celery_app import PROCESS_ORDER, app, configured_settings
from oms.worker.database import create_sync_engine
from oms.worker.processing import CacheWriter, NoCache, OrderProcessor, RedisCacheWriter

log = structlog.get_logger(__name__)

_lock = threading.Lock()
_processor: tuple[int, OrderProcessor] | None = None


def _get_processor() -> OrderProcessor:
    """One engine and Redis client per worker process (rebuilt after a prefork fork)."""
    global _processor
    with _lock:
        if _processor is None or _processor[0] != os.getpid():
            settings = configured_settings()
            cache: CacheWriter = RedisCacheWriter(settings) if settings.redis_url else NoCache()
            engine = create_sync_engine(settings, pool_size=settings.worker_concurrency)
            _processor = (os.getpid(), OrderProcessor(engine, cache))
        return _processor[1]


@app.task(
    name=PROCESS_ORDER,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    # The database down: try again later; past that the sweeper re-dispatches the order.
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_backoff_max=30,
    max_retries=5,
)
def process_order(self: Task[Any, Any], order_id: str, request_id: str | None = None) -> None:
    with structlog.contextvars.bound_contextvars(
        order_id=order_id, request_id=request_id, task_id=self.request.id
    ):
        try:
            parsed = uuid.UUID(order_id)
        except (TypeError, ValueError):
            log.error("Invalid order id; task dropped")
            return
        _get_processor().process(parsed)
