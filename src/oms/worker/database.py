"""The worker's database engine: synchronous (psycopg 3), because Celery tasks are sync code.

Wrapping a shared async engine in `asyncio.run` per task fails (a pool bound to a dead loop).
"""

from __future__ import annotations

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url

from oms import tracing
from oms.config import Settings
from oms.db import serialise_sqlite_writers

_SYNC_DRIVERS = {"postgresql+asyncpg": "postgresql+psycopg", "sqlite+aiosqlite": "sqlite"}


def sync_database_url(async_url: str) -> str:
    url = make_url(async_url)
    url = url.set(drivername=_SYNC_DRIVERS.get(url.drivername, url.drivername))
    return url.render_as_string(hide_password=False)


def create_sync_engine(settings: Settings, pool_size: int) -> Engine:
    """One engine per worker process, its pool sized to the number of concurrent tasks."""
    url = sync_database_url(settings.database_url)
    if settings.is_sqlite:
        engine = create_engine(url, connect_args={"timeout": settings.db_statement_timeout_seconds})
        serialise_sqlite_writers(engine)
        tracing.instrument_engine(engine)
        return engine
    statement_timeout_ms = int(settings.db_statement_timeout_seconds * 1000)
    engine = create_engine(
        url,
        pool_size=min(pool_size, settings.db_pool_size),
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={
            "connect_timeout": max(1, round(settings.db_connect_timeout_seconds)),
            "options": f"-c statement_timeout={statement_timeout_ms}",
            "application_name": "oms-worker",
        },
    )
    tracing.instrument_engine(engine)  # the task's statements as its child spans, when on
    return engine
