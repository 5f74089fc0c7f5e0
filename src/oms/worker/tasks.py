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
from oms.worker.waiting import WaitingTasks

log = structlog.get_logger(__name__)

_lock = threading.Lock()
_state: tuple[int, OrderProcessor, WaitingTasks] | None = None


def _worker_state() -> tuple[OrderProcessor, WaitingTasks]:
    """One engine and Redis clients per worker process (rebuilt after a prefork fork)."""
    global _state
    with _lock:
        if _state is None or _state[0] != os.getpid():
            settings = configured_settings()
            cache: CacheWriter = RedisCacheWriter(settings) if settings.redis_url else NoCache()
            engine = create_sync_engine(settings, pool_size=settings.worker_concurrency)
            _state = (os.getpid(), OrderProcessor(engine, cache), WaitingTasks(settings))
        return _state[1], _state[2]


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
        processor, waiting = _worker_state()
        waiting.taken(parsed)
        try:
            processor.process(parsed)
        finally:
            waiting.done(parsed)
