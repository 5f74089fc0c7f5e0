"""Embedded mode for `oms dev`: relay, bus, consumer and sweeper as tasks of the app's loop.

With no `RABBITMQ_URL` the bus is an in-process queue; with no `CELERY_BROKER_URL` the task
runs in a worker thread and refreshes the API's own cache. Everything else is the code the
separate `oms relay` / `oms consumer` / `oms worker` processes run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from oms.cache import OrderCache
from oms.config import Settings
from oms.events.bus import InProcessBus
from oms.events.consumer import NewOrderHandler
from oms.events.process import build_dispatcher
from oms.events.rabbitmq import RabbitBus
from oms.events.relay import Relay, listen_for_outbox
from oms.events.sweeper import Sweeper
from oms.worker.processing import LoopCacheWriter

log = structlog.get_logger(__name__)


@asynccontextmanager
async def embedded_pipeline(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    cache: OrderCache,
) -> AsyncIterator[InProcessBus | RabbitBus]:
    """Run the whole event pipeline inside the current event loop until the block exits."""
    bus: InProcessBus | RabbitBus = (
        RabbitBus(settings) if settings.rabbitmq_url else InProcessBus(settings.consumer_prefetch)
    )
    cache_writer = LoopCacheWriter(cache, asyncio.get_running_loop(), timeout=1.0)
    dispatcher = build_dispatcher(settings, cache_writer)
    relay = Relay(settings, sessionmaker, bus)
    stop = asyncio.Event()
    await bus.start_consuming(NewOrderHandler(settings, sessionmaker, dispatcher).handle)
    tasks = [
        asyncio.create_task(relay.run(stop), name="relay"),
        asyncio.create_task(Sweeper(settings, sessionmaker, dispatcher).run(stop), name="sweeper"),
    ]
    if not settings.is_sqlite:
        tasks.append(asyncio.create_task(listen_for_outbox(settings, relay.wakeup, stop)))
    log.info(
        "Embedded event pipeline started",
        bus="rabbitmq" if settings.rabbitmq_url else "in-process",
        tasks="celery" if settings.celery_broker_url else "threads",
    )
    try:
        yield bus
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await bus.close()
        await dispatcher.close()


def with_embedded_pipeline(app: FastAPI, settings: Settings) -> FastAPI:
    """Extend the app's lifespan so the pipeline starts after it and stops before it."""
    app_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: FastAPI) -> AsyncIterator[Any]:
        async with (
            app_lifespan(application) as state,
            embedded_pipeline(
                settings, application.state.sessionmaker, application.state.order_cache
            ),
        ):
            yield state

    app.router.lifespan_context = lifespan
    return app
