"""What every pipeline process shares: signal handling and choosing the task transport."""

from __future__ import annotations

import asyncio
import signal

import structlog

from oms.config import Settings
from oms.worker.dispatch import CeleryDispatcher, TaskDispatcher, ThreadDispatcher
from oms.worker.processing import CacheWriter, NoCache, OrderProcessor, RedisCacheWriter

log = structlog.get_logger(__name__)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT: the process finishes its work in progress and exits."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def _stop(signum: int) -> None:
        if not stop.is_set():
            log.info("Shutdown requested", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _stop, signum)
    return stop


def build_dispatcher(settings: Settings, cache: CacheWriter | None = None) -> TaskDispatcher:
    """Celery when `CELERY_BROKER_URL` is set, else the task runs in a thread of this process."""
    if settings.celery_broker_url:
        return CeleryDispatcher(settings)
    from oms.worker.database import create_sync_engine

    if cache is None:
        cache = RedisCacheWriter(settings) if settings.redis_url else NoCache()
    log.info("No CELERY_BROKER_URL: process_order runs in threads of this process")
    engine = create_sync_engine(settings, pool_size=settings.worker_concurrency)
    return ThreadDispatcher(OrderProcessor(engine, cache), settings.worker_concurrency)
