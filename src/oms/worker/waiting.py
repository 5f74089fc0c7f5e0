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
from dataclasses import dataclass

import redis
import structlog
from redis.client import Pipeline

from oms.config import Settings

log = structlog.get_logger(__name__)


def waiting_key(settings: Settings) -> str:
    return f"{settings.celery_queue}:waiting"


def running_key(settings: Settings) -> str:
    return f"{settings.celery_queue}:running"


def redispatched_key(settings: Settings) -> str:
    return f"{settings.celery_queue}:redispatched"


# kombu's Redis transport keeps one list per priority step: the queue's name for priority 0,
# the name, its separator and the step for the others (kombu.transport.redis, PRIORITY_STEPS).
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (0, 3, 6, 9)


def priority_lists(queue: str) -> list[str]:
    return [
        queue if step == 0 else f"{queue}{_PRIORITY_SEPARATOR}{step}" for step in _PRIORITY_STEPS
    ]


@dataclass(frozen=True, slots=True)
class QueueStats:
    """The task queue as the broker sees it now."""

    queued: int  # task messages waiting in the queue
    running: int  # tasks taken by a worker and not done (marks younger than the timeout)
    redispatched: int  # re-dispatches by the sweeper since the broker's data began


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
        self._redispatched = redispatched_key(settings)
        self._queues = priority_lists(settings.celery_queue)
        self._max_wait = settings.task_max_wait_seconds
        self._max_run = settings.processing_timeout_seconds
        self._failing = False

    def add(self, order_ids: Iterable[uuid.UUID]) -> None:
        """Mark tasks about to be published: BEFORE the publish, since a worker may take a task
        before the publish returns and must find the mark to clear. Raises `redis.RedisError`
        (a task without a mark costs at most one duplicate run, which the task recognises)."""
        now = time.time()
        marks = {str(order_id): now for order_id in order_ids}
        if marks:
            self._client.zadd(self._waiting, marks)

    def discard(self, order_ids: Iterable[uuid.UUID]) -> None:
        """The publish failed: no task waits for these orders; never raises."""
        members = [str(order_id) for order_id in order_ids]
        if members:
            self._quietly(lambda pipe: pipe.zrem(self._waiting, *members))

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

    def record_redispatches(self, count: int) -> None:
        """Count the sweeper's re-dispatches where `oms check` and every process can read them."""
        self._quietly(lambda pipe: pipe.incrby(self._redispatched, count))

    def stats(self) -> QueueStats:
        """Raises `redis.RedisError`."""
        pipe = self._client.pipeline(transaction=False)
        for queue in self._queues:
            pipe.llen(queue)
        pipe.zcount(self._running, time.time() - self._max_run, "+inf")
        pipe.get(self._redispatched)
        *lengths, running, redispatched = pipe.execute()
        return QueueStats(sum(lengths), int(running), int(redispatched or 0))

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
