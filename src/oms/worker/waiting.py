"""Which orders have a live task: waiting in the Celery queue, or running in a worker.

The sweeper re-dispatches an unprocessed order only when its task is lost, never while the task
merely waits behind a backlog or runs: a duplicate would hold a worker slot for nothing and so
feed the backlog it was meant to cure. Two sorted sets beside the queue hold the marks: the
dispatcher adds an order to `waiting` once the broker has accepted its task; the worker moves it
to `running` when it takes the task and removes it when the task is done.

The sets live in the broker's own Redis database, so a Redis restart that drops the queued tasks
drops their marks with them: exactly the orders whose task was lost have none, and the sweeper
picks them up. A mark is trusted for a bounded time only: `TASK_MAX_WAIT_SECONDS` in the queue,
`PROCESSING_TIMEOUT_SECONDS` running (a worker killed mid-task cannot clear its mark).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence

import redis
import structlog
from redis.client import Pipeline

from oms.config import Settings

log = structlog.get_logger(__name__)


def waiting_key(settings: Settings) -> str:
    return f"{settings.celery_queue}:waiting"


def running_key(settings: Settings) -> str:
    return f"{settings.celery_queue}:running"


class WaitingTasks:
    """Marks in the Celery broker's Redis; every call is bounded by the client's timeouts."""

    def __init__(self, settings: Settings) -> None:
        if not settings.celery_broker_url:
            raise ValueError("CELERY_BROKER_URL is not set")
        self._client = redis.Redis.from_url(
            settings.celery_broker_url,
            socket_timeout=settings.celery_publish_timeout_seconds,
            socket_connect_timeout=min(2.0, settings.celery_publish_timeout_seconds),
        )
        self._waiting = waiting_key(settings)
        self._running = running_key(settings)
        self._max_wait = settings.task_max_wait_seconds
        self._max_run = settings.processing_timeout_seconds
        self._failing = False

    def add(self, order_ids: Iterable[uuid.UUID]) -> None:
        """Mark tasks the broker accepted; raises `redis.RedisError` (the task is queued all the
        same: a missing mark costs at most one duplicate run, which the task recognises)."""
        now = time.time()
        marks = {str(order_id): now for order_id in order_ids}
        if marks:
            self._client.zadd(self._waiting, marks)

    def taken(self, order_id: uuid.UUID) -> None:
        """A worker starts the task; never raises (a stale mark expires)."""
        member = str(order_id)

        def move(pipe: Pipeline) -> None:
            pipe.zrem(self._waiting, member)
            pipe.zadd(self._running, {member: time.time()})

        self._quietly(move)

    def done(self, order_id: uuid.UUID) -> None:
        """The task ended, whatever its outcome; never raises."""
        member = str(order_id)
        self._quietly(lambda pipe: pipe.zrem(self._running, member))

    def pending(self, order_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Of these orders, those whose task waits or runs; raises `redis.RedisError`."""
        if not order_ids:
            return set()
        members = [str(order_id) for order_id in order_ids]
        now = time.time()
        pipe = self._client.pipeline(transaction=False)
        # Marks past their trust are dropped here, so the sets stay bounded.
        pipe.zremrangebyscore(self._waiting, "-inf", f"({now - self._max_wait}")
        pipe.zremrangebyscore(self._running, "-inf", f"({now - self._max_run}")
        pipe.zmscore(self._waiting, members)
        pipe.zmscore(self._running, members)
        _, _, waiting, running = pipe.execute()
        return {
            order_id
            for order_id, queued, started in zip(order_ids, waiting, running, strict=True)
            if (queued is not None and queued >= now - self._max_wait)
            or (started is not None and started >= now - self._max_run)
        }

    def _quietly(self, commands: Callable[[Pipeline], object]) -> None:
        pipe = self._client.pipeline(transaction=False)
        commands(pipe)
        try:
            pipe.execute()
        except redis.RedisError as error:
            if not self._failing:
                log.warning("Cannot update the task marks; Redis unavailable", error=str(error))
            self._failing = True
        else:
            self._failing = False

    def close(self) -> None:
        self._client.close()
