"""What `process_order` does, independent of how it was dispatched (Celery or a thread).

Exactly once in effect: the order row is locked and re-checked after the sleep, so of any number
of concurrent or repeated runs exactly one sees `processed_at` still empty, logs the line and
sets it. Nothing is claimed before the sleep, so a worker killed while sleeping leaves no state
behind and the redelivered task (or the sweeper's re-dispatch) simply does the work.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from enum import StrEnum
from typing import Protocol

import redis
import structlog
from prometheus_client import Counter
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

import oms.models  # noqa: F401 - every table, so the mapper resolves foreign keys
from oms.cache import PUT_IF_NEWER_LUA, OrderCache, cache_key, version_key
from oms.config import Settings
from oms.db import utcnow
from oms.orders.models import Order
from oms.orders.schemas import order_json

# SPEC 5: the processing itself is a 2 second sleep. Not a setting on purpose.
PROCESSING_SECONDS = 2.0

log = structlog.get_logger(__name__)

TASKS_PROCESSED = Counter("oms_tasks_processed_total", "process_order runs by outcome", ["outcome"])


class Outcome(StrEnum):
    PROCESSED = "processed"
    ALREADY_PROCESSED = "already_processed"
    NOT_FOUND = "not_found"


class CacheWriter(Protocol):
    def write(self, order_id: uuid.UUID, body: bytes, version: int) -> None:
        """Store the order JSON unless a newer version is cached; never raise."""


class NoCache:
    def write(self, order_id: uuid.UUID, body: bytes, version: int) -> None:
        return None


class RedisCacheWriter:
    """The shared Redis layout of `oms.cache`, written with a short timeout."""

    def __init__(self, settings: Settings) -> None:
        if not settings.redis_url:
            raise ValueError("REDIS_URL is not set")
        self._client = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_timeout_seconds,
            socket_connect_timeout=settings.redis_timeout_seconds,
        )
        self._put_if_newer = self._client.register_script(PUT_IF_NEWER_LUA)
        self._ttl = settings.cache_ttl_seconds
        self._failing = False

    def write(self, order_id: uuid.UUID, body: bytes, version: int) -> None:
        try:
            self._put_if_newer(
                keys=[cache_key(order_id), version_key(order_id)], args=[body, version, self._ttl]
            )
        except redis.RedisError as error:
            # The database holds the truth; a stale entry expires with its TTL. Once per burst.
            if not self._failing:
                log.warning("Cache refresh failed; Redis unavailable", error=str(error))
            self._failing = True
        else:
            if self._failing:
                log.info("Cache refresh works again")
            self._failing = False

    def close(self) -> None:
        self._client.close()


class LoopCacheWriter:
    """Embedded mode: write to the API's own cache, which lives on the event loop."""

    def __init__(self, cache: OrderCache, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._cache = cache
        self._loop = loop
        self._timeout = timeout

    def write(self, order_id: uuid.UUID, body: bytes, version: int) -> None:
        future = asyncio.run_coroutine_threadsafe(
            self._cache.put(order_id, body, version), self._loop
        )
        try:
            future.result(self._timeout)
        except Exception as error:
            log.warning("Cache refresh failed", error=str(error))


class OrderProcessor:
    def __init__(self, engine: Engine, cache: CacheWriter) -> None:
        self._engine = engine
        self._cache = cache

    def process(self, order_id: uuid.UUID) -> Outcome:
        with Session(self._engine) as session:
            order = session.get(Order, order_id)
            if order is None:
                log.warning("Order not found; nothing to process")
                return self._count(Outcome.NOT_FOUND)
            if order.processed_at is not None:
                log.info("Order already processed; nothing to do")
                return self._count(Outcome.ALREADY_PROCESSED)

        log.info("Processing order")
        time.sleep(PROCESSING_SECONDS)

        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            # The row lock makes concurrent runs of the same order queue up here; the first
            # marks it, the others then find `processed_at` set.
            order = session.scalar(
                select(Order)
                .where(Order.id == order_id, Order.processed_at.is_(None))
                .with_for_update()
            )
            if order is None:
                log.info("Order already processed; nothing to do")
                return self._count(Outcome.ALREADY_PROCESSED)
            log.info(f"Order {order_id} processed")
            order.processed_at = utcnow()
            order.version += 1
            session.flush()
            body, version = order_json(order), order.version
        self._cache.write(order_id, body, version)
        return self._count(Outcome.PROCESSED)

    @staticmethod
    def _count(outcome: Outcome) -> Outcome:
        TASKS_PROCESSED.labels(outcome.value).inc()
        return outcome
