"""`oms check`: try every configured dependency once and report each one's state.

Each probe runs concurrently under its own timeout. A dependency whose URL is not set is listed
as "not configured" (the embedded replacement is used) and does not fail the check; every
configured one must answer for the exit code to be 0.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aiormq.exceptions
import redis.asyncio as redis
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, make_url, text
from sqlalchemy.engine import Connection

from oms import migrate
from oms.config import Settings
from oms.db import create_engine, create_sessionmaker
from oms.events.rabbitmq import dead_letter_queue_name, find_queue_mismatch, queue_arguments
from oms.events.relay import age_seconds
from oms.events.sweeper import unprocessed_orders
from oms.worker.waiting import QueueStats, WaitingTasks


class State(StrEnum):
    OK = "ok"
    NOT_CONFIGURED = "not configured"
    UNREACHABLE = "unreachable"
    NOT_MIGRATED = "not migrated"
    OUTDATED = "schema outdated"
    MISMATCH = "queue mismatch"
    SKIPPED = "not checked"

    @property
    def failed(self) -> bool:
        return self not in (State.OK, State.NOT_CONFIGURED, State.SKIPPED)


@dataclass(frozen=True, slots=True)
class CheckResult:
    dependency: str
    state: State
    latency_ms: float | None
    details: str


class DependencyProblem(Exception):
    """The dependency answered, but not in a usable state."""

    def __init__(self, state: State, details: str) -> None:
        super().__init__(details)
        self.state = state
        self.details = details


Probe = Callable[[], Awaitable[str]]


async def run_checks(
    settings: Settings,
    *,
    timeout_seconds: float,
    queue: str | None = None,
) -> list[CheckResult]:
    """Every dependency's state, in a fixed order (`queue` defaults to NEW_ORDER_QUEUE)."""
    queue = queue or settings.new_order_queue
    heads = await asyncio.to_thread(_migration_heads, settings.database_url)
    probes: list[tuple[str, str | None, Probe]] = [
        ("database", settings.database_url, lambda: _database(settings, heads)),
        (
            "redis (cache)",
            settings.redis_url,
            lambda: _redis(settings.redis_url or "", timeout_seconds),
        ),
        (
            "celery broker",
            settings.celery_broker_url,
            lambda: _celery_broker(settings, timeout_seconds),
        ),
        (
            "rabbitmq",
            settings.rabbitmq_url,
            lambda: _rabbitmq(
                settings.rabbitmq_url or "",
                timeout_seconds,
                queue,
                settings.model_copy(update={"new_order_queue": queue}),
            ),
        ),
    ]
    return list(
        await asyncio.gather(
            *(_run(name, url, probe, timeout_seconds) for name, url, probe in probes)
        )
    )


async def _run(name: str, url: str | None, probe: Probe, timeout_seconds: float) -> CheckResult:
    if not url:
        return CheckResult(name, State.NOT_CONFIGURED, None, "embedded replacement in use")
    started = time.perf_counter()

    def elapsed_ms() -> float:
        return round((time.perf_counter() - started) * 1000, 1)

    where = describe_url(url)
    try:
        async with asyncio.timeout(timeout_seconds):
            details = await probe()
    except DependencyProblem as problem:
        return CheckResult(name, problem.state, elapsed_ms(), f"{where}: {problem.details}")
    except TimeoutError:
        return CheckResult(
            name,
            State.UNREACHABLE,
            elapsed_ms(),
            f"{where}: no answer within {timeout_seconds:g} s",
        )
    except Exception as error:
        return CheckResult(name, State.UNREACHABLE, elapsed_ms(), f"{where}: {_reason(error)}")
    return CheckResult(name, State.OK, elapsed_ms(), f"{where}: {details}")


def describe_url(url: str) -> str:
    """Scheme, host, port and path of a URL, never its credentials."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme == "sqlite":
        return f"sqlite {url.split(':///', 1)[-1]}"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{scheme}://{parts.hostname or ''}{port}{parts.path}"


def _reason(error: BaseException) -> str:
    """A one-line cause: the driver's message, or the innermost cause's."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    while not message and error.__cause__ is not None:
        error = error.__cause__
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _migration_heads(database_url: str) -> tuple[str, ...]:
    return tuple(ScriptDirectory.from_config(migrate.alembic_config(database_url)).get_heads())


async def _database(settings: Settings, heads: Sequence[str]) -> str:
    sqlite_file = _sqlite_file(settings)
    if sqlite_file is not None and not sqlite_file.exists():
        # Connecting would create an empty file; a check must not change anything.
        raise DependencyProblem(State.NOT_MIGRATED, "no database file: run `oms migrate`")
    engine = create_engine(settings)
    try:
        async with engine.connect() as connection:
            applied = await connection.run_sync(_applied_revisions)
            version = connection.dialect.server_version_info
        backlog = ""
        if applied is not None and set(applied) == set(heads):
            count, oldest = await unprocessed_orders(create_sessionmaker(engine))
            backlog = f", {count} orders unprocessed (oldest {age_seconds(oldest):.0f} s old)"
    finally:
        await engine.dispose()
    server = f"{engine.dialect.name} {'.'.join(str(part) for part in version or ())}".strip()
    wanted = ", ".join(sorted(heads))
    if applied is None:
        raise DependencyProblem(State.NOT_MIGRATED, f"{server}, no schema: run `oms migrate`")
    if set(applied) != set(heads):
        at = ", ".join(sorted(applied)) or "nothing"
        raise DependencyProblem(
            State.OUTDATED, f"{server}, schema at {at}, code expects {wanted}: run `oms migrate`"
        )
    return f"{server}, schema at head {wanted}{backlog}"


def _sqlite_file(settings: Settings) -> Path | None:
    if not settings.is_sqlite:
        return None
    database = make_url(settings.database_url).database
    return Path(database) if database and database != ":memory:" else None


def _applied_revisions(connection: Connection) -> tuple[str, ...] | None:
    if not inspect(connection).has_table("alembic_version"):
        return None
    rows = connection.execute(text("SELECT version_num FROM alembic_version"))
    return tuple(row[0] for row in rows)


async def _redis(url: str, timeout_seconds: float) -> str:
    client = redis.Redis.from_url(
        url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds
    )
    try:
        await client.ping()
        info: dict[str, Any] = await client.info("server")
    finally:
        await client.aclose()
    database = client.connection_pool.connection_kwargs.get("db", 0)
    return f"redis {info.get('redis_version', '?')}, db {database}, PING ok"


async def _celery_broker(settings: Settings, timeout_seconds: float) -> str:
    url = settings.celery_broker_url or ""
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise DependencyProblem(State.SKIPPED, f"no probe for the {scheme!r} transport")
    server = await _redis(url, timeout_seconds)
    stats = await asyncio.to_thread(_queue_stats, settings)
    return (
        f"{server}, queue {settings.celery_queue}: {stats.queued} tasks waiting, "
        f"{stats.running} running, {stats.redispatched} re-dispatched by the sweeper"
    )


def _queue_stats(settings: Settings) -> QueueStats:
    marks = WaitingTasks(settings)
    try:
        return marks.stats()
    finally:
        marks.close()


async def _rabbitmq(url: str, timeout_seconds: float, queue: str, settings: Settings) -> str:
    connection = await aio_pika.connect(url, timeout=timeout_seconds)
    async with connection:
        transport = connection.transport
        properties = transport.connection.server_properties if transport else {}
        server = f"{_text(properties.get('product', 'AMQP'))} {_text(properties.get('version'))}"
        channel = await connection.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return f"{server}, queue {queue} does not exist yet (the relay declares it)"
        # Does the broker accept this release's arguments for the queues that exist? (A declare
        # with the same arguments changes nothing; a missing queue is not declared here.)
        for name in (queue, dead_letter_queue_name(queue)):
            if name != queue and not await _queue_exists(connection, name):
                continue
            mismatch = await find_queue_mismatch(connection, name, queue_arguments(settings, name))
            if mismatch is not None:
                raise DependencyProblem(State.MISMATCH, f"{server}, {mismatch}")
        result = declared.declaration_result
        messages, consumers = result.message_count, result.consumer_count
        note = "" if consumers else " - nothing consumes it: is `oms consumer` running?"
        kind = settings.rabbitmq_queue_type
        return f"{server}, {kind} queue {queue}: {messages} messages, {consumers} consumers{note}"


async def _queue_exists(connection: aio_pika.abc.AbstractConnection, name: str) -> bool:
    # A passive declare of a missing queue closes its channel: a channel of its own.
    channel = await connection.channel()
    try:
        await channel.declare_queue(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        if not channel.is_closed:
            await channel.close()
    return True


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "?" if value is None else str(value)


def format_table(results: Sequence[CheckResult]) -> str:
    header = ("DEPENDENCY", "STATE", "LATENCY MS", "DETAILS")
    rows = [
        (
            result.dependency,
            str(result.state),
            "-" if result.latency_ms is None else f"{result.latency_ms:.1f}",
            result.details,
        )
        for result in results
    ]
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(3)]
    lines = [
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[3]])
        for row in (header, *rows)
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def exit_code(results: Sequence[CheckResult]) -> int:
    return 1 if any(result.state.failed for result in results) else 0
