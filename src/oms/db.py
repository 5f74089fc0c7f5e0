"""Database engine, declarative base and the per-request session."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
import structlog
from fastapi import Depends, Request
from sqlalchemy import JSON, ColumnElement, DateTime, MetaData, event, func, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, InstrumentedAttribute
from sqlalchemy.types import TypeDecorator

from oms import tracing
from oms.config import Settings

_log = structlog.get_logger(__name__)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSONB on PostgreSQL, JSON text elsewhere.
JSONDocument = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def result_processor(
        self, dialect: Dialect, coltype: object
    ) -> Callable[[Any], datetime | None] | None:
        # asyncpg already returns UTC-aware datetimes: no Python call per value (three per
        # order row). psycopg (the worker) returns them in the session's time zone.
        if dialect.driver == "asyncpg":
            return None
        return super().result_processor(dialect, coltype)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_datetime(value: datetime | str | None) -> datetime | None:
    """An aggregate's timestamp as an aware datetime (SQLite returns aggregates untyped)."""
    if value is None:
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def count_and_oldest(
    sessionmaker: async_sessionmaker[AsyncSession],
    created_at: InstrumentedAttribute[datetime],
    *where: ColumnElement[bool],
) -> tuple[int, datetime | None]:
    """How many rows match `where`, and the earliest `created_at` among them (a backlog)."""
    async with sessionmaker() as session:
        row = (
            await session.execute(select(func.count(), func.min(created_at)).where(*where))
        ).one()
    return int(row[0]), as_datetime(row[1])


def create_engine(settings: Settings) -> AsyncEngine:
    """One engine (one pool) per process."""
    if settings.is_sqlite:
        engine = create_async_engine(
            settings.database_url,
            connect_args={"timeout": settings.db_statement_timeout_seconds},
            json_serializer=_json_text,
            json_deserializer=orjson.loads,
        )
        serialise_sqlite_writers(engine.sync_engine)
        tracing.instrument_engine(engine.sync_engine)
        return engine
    engine = create_async_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        pool_recycle=1800,
        json_serializer=_json_text,
        json_deserializer=orjson.loads,
        connect_args={
            "timeout": settings.db_connect_timeout_seconds,
            "command_timeout": settings.db_statement_timeout_seconds,
            "server_settings": {"application_name": "oms"},
        },
    )
    _ping_idle_connections(engine, settings.db_pool_ping_idle_seconds)
    tracing.instrument_engine(engine.sync_engine)  # a span per statement, when tracing is on
    return engine


def _json_text(value: Any) -> str:
    """JSON columns (order items, event payloads) go through orjson: a page of 50 orders spent
    a sixth of its time in the standard library's decoder."""
    return orjson.dumps(value).decode()


def _ping_idle_connections(engine: AsyncEngine, idle_seconds: float) -> None:
    """Pessimistic disconnect handling, for connections that sat idle in the pool.

    `pool_pre_ping` would ping on every checkout, and the asyncpg dialect's ping is three round
    trips (BEGIN, `;`, ROLLBACK): more than the query most requests make. A connection returned
    moments ago is as alive as a ping would show, so only one idle for `idle_seconds` (e.g. through
    a quiet period in which PostgreSQL restarted) is pinged first; a dead one is replaced before
    the request sees it (the pool retries the checkout). A connection that dies while busy fails
    its request with 503, as it would with pre-ping, and the pool then drops its other
    connections opened before the failure.
    """

    @event.listens_for(engine.sync_engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        checked_in_at = record.info.get("checked_in_at")
        if checked_in_at is None or time.monotonic() - checked_in_at < idle_seconds:
            return  # just connected, or used moments ago
        try:
            dbapi_connection.ping()
        except Exception as error:
            raise DisconnectionError("idle pooled connection failed its ping") from error


def serialise_sqlite_writers(engine: Engine) -> None:
    """SQLite has no row locks: take the write lock at BEGIN so read-then-write never races."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


def create_statement_engine(engine: AsyncEngine) -> AsyncEngine:
    """The same pool, each statement committing by itself (PostgreSQL autocommit): a request
    that needs one statement at a time makes one round trip per statement, without BEGIN and
    COMMIT or ROLLBACK around it. SQLite keeps its transactions (its BEGIN IMMEDIATE hook
    expects one): writes go through `connection.begin()`, a no-op in autocommit, or
    `in_transaction` when several statements must commit together."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return engine


@asynccontextmanager
async def in_transaction(connection: AsyncConnection) -> AsyncIterator[None]:
    """A real transaction on a connection of the statement engine (whose statements otherwise
    commit one by one on PostgreSQL): for units of work of several statements."""
    if connection.dialect.name == "postgresql":
        await connection.execution_options(isolation_level="READ COMMITTED")
    async with connection.begin():
        yield


# SQLSTATE classes that say "the server cannot serve you now", whatever the statement:
# connection exceptions (08), insufficient resources such as too many connections (53), and
# operator intervention: a server shutting down, crashed or still starting up (57P; asyncpg's
# errors for these are not OperationalErrors).
_UNAVAILABLE_SQLSTATES = ("08", "53", "57P")


def is_database_unavailable(exc: BaseException) -> bool:
    """True when the error means "cannot use the database now", not "the query was wrong"."""
    if isinstance(exc, PoolTimeoutError | OSError):
        return True
    if isinstance(exc, DBAPIError):
        sqlstate = str(getattr(exc.orig, "sqlstate", None) or "")
        return (
            exc.connection_invalidated
            or isinstance(exc, OperationalError | InterfaceError)
            or sqlstate.startswith(_UNAVAILABLE_SQLSTATES)
        )
    return False


@asynccontextmanager
async def open_session(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """A session that closes quietly if the database went away after its last query."""
    session = sessionmaker()
    try:
        yield session
    finally:
        await _close(session)


def create_database_gate(settings: Settings) -> asyncio.Semaphore:
    """Admits as many requests to the database at once as the pool has connections, in arrival
    order. The pool's own wait queue is not fair: a request woken for a returned connection can
    find it taken by one that just arrived, and go back to the end of the line; under load a few
    requests waited seconds while the median waited milliseconds. asyncio's semaphore hands a
    released slot to its first waiter."""
    return asyncio.Semaphore(settings.db_pool_size + settings.db_max_overflow)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    async with request.app.state.database_gate, open_session(sessionmaker) as session:
        yield session


async def _close(session: AsyncSession) -> None:
    """Close after the response is decided (it may already be on the wire). If the database
    went away meanwhile, the closing rollback fails; the server has dropped the transaction
    anyway, so that failure must not turn a sent answer into a broken connection."""
    try:
        await session.close()
    except Exception as error:
        if not is_database_unavailable(error):
            raise
        _log.warning("session_close_failed", error=type(error).__name__)
        with contextlib.suppress(Exception):
            await session.invalidate()


DbSession = Annotated[AsyncSession, Depends(get_session)]


@asynccontextmanager
async def database_connection(request: Request) -> AsyncIterator[AsyncConnection]:
    """A statement-engine connection through the gate, for the order routes: they open it in
    their body (a cached read only on a miss) rather than through a `yield` dependency, which
    FastAPI wraps in an AsyncExitStack and two anyio cancel scopes, about 8 % of a POST's CPU
    in the profile; the connection also goes back to the pool before the response is sent."""
    engine: AsyncEngine = request.app.state.statement_engine
    async with request.app.state.database_gate, engine.connect() as connection:
        yield connection
