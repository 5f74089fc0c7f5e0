"""The FastAPI application."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI

from oms import tracing
from oms.auth.passwords import PasswordHasher
from oms.auth.router import router as auth_router
from oms.auth.service import RecentlySeenUsers
from oms.auth.tokens import TokenVerifier
from oms.cache import DisabledOrderCache, InMemoryOrderCache, OrderCache, RedisOrderCache
from oms.config import Settings, get_settings
from oms.cors import cors_options
from oms.db import (
    create_database_gate,
    create_engine,
    create_sessionmaker,
    create_statement_engine,
)
from oms.docs import add_docs
from oms.errors import register_error_handlers
from oms.health import DependencyCheck, broker_check, database_check
from oms.health import router as health_router
from oms.logging import configure_logging
from oms.metrics import router as metrics_router
from oms.middleware import RequestMiddleware
from oms.orders.router import router as orders_router
from oms.ratelimit import RateLimiter, limit_auth_per_ip
from oms.redis import RedisGuard, create_redis_client

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

DESCRIPTION = """
Order management service. Register, obtain a bearer token from `/token/` (OAuth2 password
flow; *Authorize* above), then create, read, update and list your orders.
"""


def _settle_garbage_collector() -> None:
    """Keeps the cycle collector off the objects that live as long as the process.

    Measured under load: full collections walked everything imported and built at startup,
    taking 15 % of the CPU and pausing the loop for up to 100 ms (the tail latency). Frozen, they
    are never examined again; a larger first-generation threshold makes the young collections,
    which find little (reference counting frees almost everything), less frequent.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, *gc.get_threshold()[1:])


def create_app(
    settings: Settings | None = None, tracer_provider: TracerProvider | None = None
) -> FastAPI:
    """The app; traced with `tracer_provider` if given, else as the OTEL_* settings say."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings)
        hasher = PasswordHasher(settings)
        checks = [database_check(engine)]
        # Redis when configured (shared by replicas), else in-process (embedded mode).
        redis = RedisGuard(create_redis_client(settings), settings) if settings.redis_url else None
        cache: OrderCache
        if not settings.cache_enabled:
            cache = DisabledOrderCache()
        elif redis is None:
            cache = InMemoryOrderCache(settings.cache_ttl_seconds)
        else:
            cache = RedisOrderCache(redis, settings.cache_ttl_seconds)
            checks.append(DependencyCheck("redis", redis.ping, critical=False))
        if settings.rabbitmq_url:
            checks.append(broker_check(settings.rabbitmq_url))
        limiter = RateLimiter(settings, redis)
        app.state.settings = settings
        app.state.engine = engine
        app.state.sessionmaker = create_sessionmaker(engine)
        app.state.statement_engine = create_statement_engine(engine)
        app.state.database_gate = create_database_gate(settings)
        app.state.token_verifier = TokenVerifier(settings)
        app.state.password_hasher = hasher
        app.state.recently_seen_users = RecentlySeenUsers(settings.user_recheck_seconds)
        app.state.order_cache = cache
        app.state.rate_limiter = limiter
        app.state.redis = redis  # RedisGuard | None: the one client, for anything else needing it
        app.state.readiness_checks = checks
        _settle_garbage_collector()
        try:
            yield
        finally:
            await cache.close()
            await limiter.close()
            if redis is not None:
                await redis.close()
            hasher.close()
            await engine.dispose()

    app = FastAPI(
        title="OMS",
        summary="Order management service",
        description=DESCRIPTION,
        version="0.1.0",
        lifespan=lifespan,
        redirect_slashes=False,
        docs_url=None,  # served by add_docs from local assets instead of a CDN
        redoc_url=None,
        # FastAPI's built-in OpenTelemetry asks the global providers (environment look-ups)
        # on every request to learn whether anyone configured them; tracing, when on, is
        # oms.tracing's instrumentation instead (nothing at all per request when off).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    register_error_handlers(app)
    # One layer: request id, CORS, the body limit, rate-limit headers, access line and metrics.
    app.add_middleware(
        RequestMiddleware, max_body_bytes=settings.max_body_bytes, cors=cors_options(settings)
    )
    # Routes are matched in this order, each candidate costing a regex and FastAPI's scope
    # bookkeeping: the probes first (polled by every orchestrator), the order routes next (the
    # traffic), then the rare ones. Health and metrics are never rate limited.
    app.include_router(health_router)
    app.include_router(orders_router)  # rate limited by its authentication (CurrentUser)
    app.include_router(auth_router, dependencies=[Depends(limit_auth_per_ip)])
    app.include_router(metrics_router)
    add_docs(app)  # not rate limited either
    # Outermost, so the server span covers the whole request; absent when tracing is off.
    tracing.instrument_app(app, tracer_provider or tracing.setup(settings, "oms-api"))
    return app


def create_app_from_env() -> FastAPI:
    """Factory for uvicorn (`oms.main:create_app_from_env`): logging plus the app.

    This is how a deployment serves the API (`oms api`, or any ASGI server pointed at it), so
    it refuses the public development key whatever APP_ENV says, as `oms api` does."""
    settings = get_settings()
    if problem := settings.deployment_key_problem():
        raise SystemExit(f"Invalid configuration: {problem}")
    configure_logging(settings)
    return create_app(settings)
