"""Inside the Celery worker process: notice that it stopped consuming, and end it.

Celery 5.7 / kombu 5.7 with the threads pool can stop taking tasks after their Redis restarts
while tasks are in flight. kombu's Redis QoS frees a prefetch slot only once the ack reached
Redis; an ack that fails with ConnectionError leaves its slot taken for good. With every slot
taken the worker never takes a task again; with some taken it runs on the rest. Nothing in the
process errors out, so a thread checks from outside, while tasks wait in the broker's queue and
the worker has free slots: the worker has received no task for `WORKER_STALL_SECONDS`, or a
delivery no task holds any more has kept its slot that long. Then the process shuts down (warm:
tasks in progress finish) and `oms worker`'s supervising parent (`oms.worker.supervisor`) starts
a fresh one.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import redis
import structlog
from celery import signals
from celery.worker import state
from prometheus_client import Gauge

from oms.config import Settings
from oms.worker.waiting import BROKER_SOCKET_TIMEOUT_SECONDS, WaitingTasks

log = structlog.get_logger(__name__)

LAST_TASK_RECEIVED = Gauge(
    "oms_worker_last_task_received_timestamp_seconds",
    "When this worker last took a task off the broker (Unix time; its start until the first)",
)
TASKS_IN_WORKER = Gauge(
    "oms_worker_tasks_reserved", "Tasks this worker holds: running, or received and about to run"
)
STRANDED_SLOTS = Gauge(
    "oms_worker_stranded_slots",
    "Prefetch slots the broker client still counts as taken though no task holds them",
)

# A warm shutdown that has not ended by then (a consumer stuck in the library) is cut short.
SHUTDOWN_GRACE_SECONDS = 10.0
# A slot a finished task frees is back within milliseconds, but its ack can wait behind others
# on Celery's event loop, each bounded by the broker client's timeout and redis-py's retries: a
# slot is taken for lost only when no task has held it for this long (or WORKER_STALL_SECONDS).
STRANDED_MIN_SECONDS = 3 * BROKER_SOCKET_TIMEOUT_SECONDS
# Exit status of a worker the watchdog had to cut short; the parent restarts it all the same.
EXIT_STALLED = 75

_last_received = time.time()


@signals.task_received.connect
def _on_task_received(**_kwargs: Any) -> None:
    global _last_received
    _last_received = time.time()
    LAST_TASK_RECEIVED.set(_last_received)


class Watchdog:
    """One daemon thread; its Redis calls are bounded by the task marks' client timeouts."""

    def __init__(self, settings: Settings, concurrency: int, interval: float = 1.0) -> None:
        if not settings.celery_broker_url:
            raise ValueError("CELERY_BROKER_URL is not set")
        self._queue = WaitingTasks(settings)
        self._concurrency = concurrency
        self._stall_seconds = settings.worker_stall_seconds
        self._interval = interval
        self._stalled_since: float | None = None
        self._stranded_since: dict[object, float] = {}
        self._stranded_seconds = max(self._stall_seconds, STRANDED_MIN_SECONDS)
        self._qos: object = None
        self._broker_down = False
        self._consumer: Any = None
        LAST_TASK_RECEIVED.set(_last_received)

    def start(self, consumer: Any) -> None:
        """`consumer`: Celery's worker Consumer, the `worker_ready` signal's sender."""
        self._consumer = consumer
        threading.Thread(target=self._run, name="oms-worker-watchdog", daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(self._interval)
            try:
                if self.check(time.time()):
                    self._restart()
                    return
            except Exception:  # the watchdog must never die of its own error
                log.exception("Worker watchdog check failed")

    def check(self, now: float) -> bool:
        """True when the worker has stopped consuming (one observation per call)."""
        reserved = len(state.reserved_requests)
        TASKS_IN_WORKER.set(reserved)
        self._observe_slots(now)
        try:
            depth = self._queue.stats().queued
        except redis.RedisError as error:
            # Redis itself is away: nothing to consume, Celery is reconnecting. Not a stall, and
            # acks failing now may yet be undone by the reconnection's fresh channel.
            if not self._broker_down:
                log.warning("Watchdog cannot reach the broker", error=str(error))
            self._broker_down = True
            self._stalled_since = None
            self._stranded_since = {}
            return False
        if self._broker_down:
            log.info("Watchdog reaches the broker again", queue_depth=depth)
            self._broker_down = False
        if depth == 0 or reserved >= self._concurrency:
            self._stalled_since = None  # nothing to take, or no room to take it: not a stall
            return False
        # Tasks wait and slots are free: the clock runs from then or from the last task taken.
        since = max(self._stalled_since or now, _last_received)
        self._stalled_since = since
        stranded_for = now - min(self._stranded_since.values(), default=now)
        if now - since < self._stall_seconds and stranded_for < self._stranded_seconds:
            return False
        log.error(
            "Worker stopped consuming: tasks wait while slots are free; restarting it",
            queue_depth=depth,
            tasks_reserved=reserved,
            concurrency=self._concurrency,
            idle_seconds=round(now - _last_received, 1),
            slots_stranded=len(self._stranded_since),
        )
        return True

    def _observe_slots(self, now: float) -> None:
        """Track each stranded delivery tag from when it was first seen on the current channel."""
        seen = _stranded_deliveries(self._consumer)
        if seen is None:
            return  # not readable this time: the last view stands
        qos, stranded = seen
        if qos is not self._qos:  # reconnected (or reconnecting): the old channel's slots are gone
            self._qos = qos
            self._stranded_since = {}
        self._stranded_since = {tag: self._stranded_since.get(tag, now) for tag in stranded}
        STRANDED_SLOTS.set(len(stranded))

    def _restart(self) -> None:
        # Warm shutdown through Celery's own SIGTERM handler; a stuck one is cut short.
        timer = threading.Timer(SHUTDOWN_GRACE_SECONDS, _exit_now)
        timer.daemon = True
        timer.start()
        os.kill(os.getpid(), signal.SIGTERM)


def _stranded_deliveries(consumer: Any) -> tuple[object, set[object]] | None:
    """The channel's QoS and the delivery tags it counts as taken that no Celery task holds.

    Reads kombu's QoS bookkeeping (`_delivered` less `_dirty`, as its `can_consume` does): kombu
    5.7 offers no public view of it. While Celery reconnects (no connection, or the consumer still
    on the closed channel) nothing is stranded. None when a set changed while it was copied.
    Held means reserved or scheduled; a task rate limit (none is set) would hold more.
    """
    try:
        if consumer.connection is None or consumer.task_consumer.channel.closed:
            return None, set()
        qos = consumer.task_consumer.channel.qos
        taken = set(qos._delivered) - set(qos._dirty)
        # Scheduled: a retry waiting for its countdown (its message is delivered, not running).
        requests = [*state.reserved_requests, *state.scheduled_requests]  # type: ignore[attr-defined]
        held = {request.message.delivery_tag for request in requests}
    except AttributeError:  # not consuming yet
        return None, set()
    except RuntimeError:
        return None
    return qos, taken - held


def _exit_now() -> None:
    log.error("Warm shutdown did not finish; exiting", grace_seconds=SHUTDOWN_GRACE_SECONDS)
    os._exit(EXIT_STALLED)
