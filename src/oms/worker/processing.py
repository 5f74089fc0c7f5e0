"""What `process_order` does, independent of how it was dispatched (Celery or a thread).

Exactly once in effect: after the sleep one conditional UPDATE sets `processed_at` only where it
is still empty, so of any number of concurrent or repeated runs exactly one wins, commits, then
logs the line. Nothing is claimed before the sleep, so a worker killed while sleeping leaves no
state behind and the redelivered task (or the sweeper's re-dispatch) simply does the work.
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
from sqlalchemy import Engine, bindparam, select, update

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
    """Thread-safe: every task thread shares one processor and its engine's small pool.

    A run holds a pooled connection only for its two short statements, never during the sleep,
    so hundreds of tasks in flight share a pool of a few connections.
    """

    def __init__(self, engine: Engine, cache: CacheWriter) -> None:
        self._engine = engine
        self._cache = cache
        self._check = select(Order.processed_at).where(Order.id == bindparam("order_id"))
        self._mark = (
            update(Order)
            .where(Order.id == bindparam("order_id"), Order.processed_at.is_(None))
            .values(
                processed_at=bindparam("now", type_=Order.__table__.c.processed_at.type),
                version=Order.version + 1,
            )
            .returning(*Order.__table__.c)
        )

    def process(self, order_id: uuid.UUID) -> Outcome:
        with self._engine.connect() as connection:
            found = connection.execute(self._check, {"order_id": order_id}).first()
            connection.rollback()  # hand the connection back clean, before the sleep
        if found is None:
            log.warning("Order not found; nothing to process")
            return self._count(Outcome.NOT_FOUND)
        if found.processed_at is not None:
            log.info("Order already processed; nothing to do")
            return self._count(Outcome.ALREADY_PROCESSED)

        log.info("Processing order")
        time.sleep(PROCESSING_SECONDS)

        # One statement: of any number of concurrent runs, exactly one matches the row with
        # `processed_at` still empty (PostgreSQL re-checks the condition after a row lock wait).
        with self._engine.begin() as connection:
            row = connection.execute(self._mark, {"order_id": order_id, "now": utcnow()}).first()
        if row is None:
            log.info("Order already processed; nothing to do")
            return self._count(Outcome.ALREADY_PROCESSED)
        # After the commit: the line means the order is processed for good.
        log.info(f"Order {order_id} processed")
        mapping = dict(row._mapping)
        self._cache.write(order_id, order_json(mapping), int(mapping["version"]))
        return self._count(Outcome.PROCESSED)

    @staticmethod
    def _count(outcome: Outcome) -> Outcome:
        TASKS_PROCESSED.labels(outcome.value).inc()
        return outcome
