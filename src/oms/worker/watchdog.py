"""Inside the Celery worker process: notice that it stopped consuming, and end it.

Celery 5.7 / kombu 5.7 with the threads pool can stop taking tasks for good after their Redis
restarts while tasks are in flight (the acks fail with ConnectionError; reconnection then never
resumes the consumer). Nothing in the process errors out, so a thread checks from outside:
tasks wait in the broker's queue, the worker has free slots, and it has received none for
`WORKER_STALL_SECONDS`. Then the process shuts down (warm: tasks in progress finish) and
`oms worker`'s supervising parent (`oms.worker.supervisor`) starts a fresh one.
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
from oms.worker.waiting import WaitingTasks

log = structlog.get_logger(__name__)

LAST_TASK_RECEIVED = Gauge(
    "oms_worker_last_task_received_timestamp_seconds",
    "When this worker last took a task off the broker (Unix time; its start until the first)",
)
TASKS_IN_WORKER = Gauge(
    "oms_worker_tasks_reserved", "Tasks this worker holds: running, or received and about to run"
)

# A warm shutdown that has not ended by then (a consumer stuck in the library) is cut short.
SHUTDOWN_GRACE_SECONDS = 10.0
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
        self._broker_down = False
        LAST_TASK_RECEIVED.set(_last_received)

    def start(self) -> None:
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
        try:
            depth = self._queue.stats().queued
        except redis.RedisError as error:
            # Redis itself is away: nothing to consume, Celery is reconnecting. Not a stall.
            if not self._broker_down:
                log.warning("Watchdog cannot reach the broker", error=str(error))
            self._broker_down = True
            self._stalled_since = None
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
        if now - since < self._stall_seconds:
            return False
        log.error(
            "Worker stopped consuming: tasks wait while slots are free; restarting it",
            queue_depth=depth,
            tasks_reserved=reserved,
            concurrency=self._concurrency,
            idle_seconds=round(now - _last_received, 1),
        )
        return True

    def _restart(self) -> None:
        # Warm shutdown through Celery's own SIGTERM handler; a stuck one is cut short.
        timer = threading.Timer(SHUTDOWN_GRACE_SECONDS, _exit_now)
        timer.daemon = True
        timer.start()
        os.kill(os.getpid(), signal.SIGTERM)


def _exit_now() -> None:
    log.error("Warm shutdown did not finish; exiting", grace_seconds=SHUTDOWN_GRACE_SECONDS)
    os._exit(EXIT_STALLED)
