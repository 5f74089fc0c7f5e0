"""Which orders have a live task: waiting in the Celery queue, held by a worker, or running.

The sweeper re-dispatches an unprocessed order only when its task is lost, never while the task
merely waits behind a backlog or runs: a duplicate would hold a worker slot for nothing and so
feed the backlog it was meant to cure. Two sorted sets beside the queue hold the marks: the
dispatcher adds an order to `waiting` just before it publishes the task; the worker moves it to
`running` when it takes the task and removes it when the task is done.

The sets live in the broker's own Redis database, so a Redis restart that drops the queued tasks
drops their marks with them: exactly the orders whose task was lost have none, and the sweeper
picks them up. A `running` mark is trusted for `PROCESSING_TIMEOUT_SECONDS` (a worker killed
mid-task cannot clear it).

A `waiting` mark can outlive its task too: kombu's Redis transport takes a message off the list
(BRPOP) before it records it in its `unacked` hash, so a worker killed between the two loses the
message while the mark stays. The queue is FIFO and every task message carries its mark's time
(`MARK_HEADER`), so the message next in line tells which marks belong to messages already taken
off the queue. Such a mark is first only suspect; seen again, with the same time, at a look at
least `SETTLE_SECONDS` later (the next sweep), its message must be in the `unacked` hash, held by
a worker, or it is lost. A message between BRPOP and the hash is never taken for lost, nor one
put back by kombu (a dead worker's, at the head of the queue), which is taken again by then.
When the queue cannot tell (a message without the header, from an older release), a `waiting`
mark is trusted for `TASK_MAX_WAIT_SECONDS`. Mark times are the dispatching hosts' clocks: they
must agree within a few seconds, as NTP keeps them.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
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


# The read timeout of Celery's connections to the broker (its transport options).
BROKER_SOCKET_TIMEOUT_SECONDS = 5.0

# kombu's Redis transport keeps the messages workers hold and have not acked in one hash per
# broker database: delivery tag -> JSON [message, exchange, routing key] (`unacked_key`, which
# `oms.worker.celery_app` leaves at its default, as it sets no key prefix).
_UNACKED_HASH = "unacked"

# The header of each task message: when its order was marked waiting (epoch seconds, a string).
MARK_HEADER = "oms_waiting_since"

# How long a mark stays suspect before the unacked hash decides: far longer than kombu needs
# between BRPOP and recording the message as unacked.
SETTLE_SECONDS = 1.0
# A suspect not looked at again for this long is forgotten (the sweeper moved on).
_SUSPECT_MEMORY_SECONDS = 600.0


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


@dataclass(frozen=True, slots=True)
class Pending:
    """What the marks and the queue say of some orders; the orders in neither set are lost."""

    live: frozenset[uuid.UUID]  # the task waits in the queue, is held by a worker, or runs
    unsure: frozenset[uuid.UUID]  # the task left the queue, held or lost: ask at the next sweep


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
        # The longest a message may take to reach the queue after its mark: the dispatcher's
        # deadline, then the flush of its batch (the broker socket's timeout, a reconnection).
        self._publish_slack = (
            settings.celery_publish_timeout_seconds + BROKER_SOCKET_TIMEOUT_SECONDS + 3.0
        )
        # Orders whose mark a look found below the head of the queue: (mark, since; monotonic).
        self._suspects: dict[uuid.UUID, tuple[float, float]] = {}
        # The sweeper's calls may overlap when one outlives its caller's timeout.
        self._lock = threading.Lock()
        self._failing = False

    def add(self, order_ids: Iterable[uuid.UUID], marked_at: float) -> None:
        """Mark tasks about to be published, with the time their messages carry in
        `MARK_HEADER`: BEFORE the publish, since a worker may take a task before the publish
        returns and must find the mark to clear. Raises `redis.RedisError` (a task without a
        mark costs at most one duplicate run, which the task recognises)."""
        marks = {str(order_id): marked_at for order_id in order_ids}
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

    def pending(self, order_ids: Sequence[uuid.UUID]) -> Pending:
        """Of these orders, those whose task waits, is held or runs, and those to ask about at
        the next sweep (their task left the queue: held, or lost); raises `redis.RedisError`."""
        if not order_ids:
            return Pending(frozenset(), frozenset())
        with self._lock:
            return self._pending(order_ids)

    def _pending(self, order_ids: Sequence[uuid.UUID]) -> Pending:
        members = [str(order_id) for order_id in order_ids]
        now, clock = time.time(), time.monotonic()
        pipe = self._client.pipeline(transaction=False)
        pipe.zmscore(self._waiting, members)
        pipe.zmscore(self._running, members)
        for queue in self._queues:
            pipe.lindex(queue, -1)  # the message next in line (kombu pops from the right)
        waiting, running, *next_in_line = pipe.execute()
        taken_off = self._taken_off(now, next_in_line)

        live: set[uuid.UUID] = set()
        unsure: set[uuid.UUID] = set()
        seen_again: list[uuid.UUID] = []
        for order_id, queued, started in zip(order_ids, waiting, running, strict=True):
            if started is not None and started >= now - self._max_run:
                live.add(order_id)
            elif queued is None:
                continue
            elif taken_off is None:
                if queued >= now - self._max_wait:
                    live.add(order_id)
            elif queued >= taken_off:
                live.add(order_id)  # still in the queue, however long it has waited
            else:
                suspect = self._suspects.get(order_id)
                if suspect is not None and suspect[0] == queued:
                    if suspect[1] <= clock - SETTLE_SECONDS:
                        seen_again.append(order_id)
                        continue
                else:
                    self._suspects[order_id] = (queued, clock)
                unsure.add(order_id)
        held = self._held_by_workers(seen_again) if seen_again else set()
        live.update(held)
        for order_id in (*live, *seen_again):
            self._suspects.pop(order_id, None)
        self._forget_old_suspects(clock)
        self._trim(now, taken_off)
        return Pending(frozenset(live), frozenset(unsure))

    def _taken_off(self, now: float, next_in_line: Sequence[bytes | None]) -> float | None:
        """The mark time below which no message is in the queue any more; None: no telling."""
        bound = now - self._publish_slack
        for raw in next_in_line:
            if raw is None:
                continue  # an empty list: every message marked before the slack has left it
            marked_at = _mark_of(raw)
            if marked_at is None:
                return None  # a message from before the header
            # Published at most the slack after its mark, it is behind every message marked
            # more than the slack before it: those have all been taken.
            bound = min(bound, marked_at - self._publish_slack)
        return bound

    def _forget_old_suspects(self, clock: float) -> None:
        forget = clock - _SUSPECT_MEMORY_SECONDS
        for order_id in [o for o, (_, since) in self._suspects.items() if since < forget]:
            del self._suspects[order_id]

    def _trim(self, now: float, taken_off: float | None) -> None:
        """Drop the marks no longer trusted, so the sets stay bounded: `running` ones past the
        processing timeout, `waiting` ones past the maximum wait that the queue does not hold."""
        oldest_queued = now - self._max_wait
        if taken_off is not None:
            oldest_queued = min(oldest_queued, taken_off)
        pipe = self._client.pipeline(transaction=False)
        pipe.zremrangebyscore(self._waiting, "-inf", f"({oldest_queued}")
        pipe.zremrangebyscore(self._running, "-inf", f"({now - self._max_run}")
        pipe.execute()

    def _held_by_workers(self, order_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
        """Those of these orders whose task message a worker holds (kombu's unacked hash)."""
        wanted = {str(order_id): order_id for order_id in order_ids}
        held: set[uuid.UUID] = set()
        for raw in self._client.hvals(_UNACKED_HASH):
            order = _order_of(raw)
            if order in wanted:
                held.add(wanted[order])
        return held

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


def _mark_of(raw: bytes | str) -> float | None:
    """The mark time a task message on the queue carries, if any."""
    try:
        mark = json.loads(raw)["headers"][MARK_HEADER]
        return float(mark)
    except (ValueError, TypeError, KeyError):
        return None


def _order_of(raw: bytes | str) -> str | None:
    """The order id of an entry of kombu's unacked hash, if it is a task for one."""
    try:
        message = json.loads(raw)[0]
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0])
    except (ValueError, TypeError, KeyError, IndexError, binascii.Error):
        return None
