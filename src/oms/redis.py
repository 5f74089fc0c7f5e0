"""The process's one Redis client, and the circuit breaker every Redis user goes through.

Redis only makes the service faster (cache) or fairer (shared rate limits); the database stays the
source of truth. So every Redis call is bounded by a short timeout, and after a failure a circuit
breaker makes callers skip Redis for a cool-down instead of each paying the timeout, then lets one
call probe whether it is back. The outage is logged once when it starts and once when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from oms.config import Settings

log = structlog.get_logger(__name__)

T = TypeVar("T")
# What an unreachable, restarting or black-holed server raises (asyncio.TimeoutError is
# TimeoutError on 3.11; socket errors are OSError).
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
FallbackReason = Literal["error", "breaker_open"]


def create_redis_client(settings: Settings) -> Redis:
    """The process's Redis client. No retries: the breaker, not a retry loop, handles outages."""
    if settings.redis_url is None:
        raise ValueError("REDIS_URL is not set")
    timeout = settings.redis_timeout_seconds
    pool = UncontendedFastPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=timeout,  # waiting for a free connection is bounded too
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    return Redis.from_pool(pool)


class UncontendedFastPool(BlockingConnectionPool):
    """redis-py's blocking pool, minus its cost when nobody waits for a connection.

    Profiled under wrk, the blocking pool's checkout and return (a condition, a timeout scope,
    a context-manager generator, connection-event dispatch and metrics hooks this service does not
    use) were 6 % of a cached GET's CPU and of a POST's, for one Redis call each. While no task
    waits, an idle connection is taken and given back directly, and checked before use exactly as
    the pool checks it. Once a task waits (every connection in use), checkout and return go through
    the blocking pool itself, in order, with its timeout, until nobody waits again.

    It reads the pool's private lists and maintenance flag (redis-py 8.1, pinned by uv.lock: check
    them when upgrading). A direct return skips redis-py's after-release event, which only
    re-authenticates connections for streaming credential providers; this client uses none.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._waiting = 0

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        if self._waiting or not self._available_connections or self._in_maintenance:
            self._waiting += 1
            try:
                connection: AbstractConnection = await super().get_connection()  # type: ignore[no-untyped-call]
                return connection
            finally:
                self._waiting -= 1
        connection = self._available_connections.pop()
        self._in_use_connections.add(connection)
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        if self._waiting or self._in_maintenance or connection.should_reconnect():  # type: ignore[no-untyped-call]
            await super().release(connection)  # wakes a waiter
            return
        self._in_use_connections.remove(connection)
        self._available_connections.append(connection)


@dataclass(frozen=True, slots=True)
class SharedRead:
    """A Redis value read along with another call (the rate limit's): `value` (None if the key
    is unset), or why Redis could not be asked (`unavailable`)."""

    value: bytes | None
    unavailable: FallbackReason | None


class RedisUnavailableError(Exception):
    """Redis could not serve this call; the caller falls back."""

    def __init__(self, reason: FallbackReason) -> None:
        super().__init__(reason)
        self.reason: FallbackReason = reason


class Admission(enum.Enum):
    NORMAL = "normal"
    PROBE = "probe"


class CircuitBreaker:
    """Closed: calls go through. The first failure opens it and is logged with its cause; while
    open, calls are refused at once. After `cooldown_seconds` a single call probes; its success
    closes the breaker (logged once), its failure re-opens it quietly for another cool-down."""

    def __init__(
        self,
        name: str,
        cooldown_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._cooldown = cooldown_seconds
        self._clock = clock
        self._open_until: float | None = None
        self._opened_at = 0.0
        self._probing = False
        self._refused = 0

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    def admit(self) -> Admission | None:
        """How this call may proceed, or None when it must skip the dependency."""
        if self._open_until is None:
            return Admission.NORMAL
        if self._probing or self._clock() < self._open_until:
            self._refused += 1
            return None
        self._probing = True
        return Admission.PROBE

    def record_success(self, admission: Admission) -> None:
        if admission is Admission.PROBE:
            self._probing = False
            log.info(
                f"{self.name}_available_again",
                outage_seconds=round(self._clock() - self._opened_at, 3),
                calls_skipped=self._refused,
            )
            self._open_until = None
            self._refused = 0
        # A normal call that started before the breaker opened proves nothing about now.

    def record_failure(self, admission: Admission, error: BaseException) -> None:
        now = self._clock()
        if admission is Admission.PROBE:
            self._probing = False
        elif self._open_until is None:
            self._opened_at = now
            log.warning(
                f"{self.name}_unavailable",
                error=f"{type(error).__name__}: {error}".rstrip(": "),
                retry_in_seconds=self._cooldown,
            )
        self._open_until = now + self._cooldown

    def record_abandoned(self, admission: Admission) -> None:
        """The call was cancelled: it says nothing about the dependency."""
        if admission is Admission.PROBE:
            self._probing = False


class RedisGuard:
    """The client plus its breaker and per-call deadline, shared by the cache and the limiter."""

    def __init__(self, client: Redis, settings: Settings) -> None:
        self.client = client
        self.breaker = CircuitBreaker("redis", settings.redis_breaker_cooldown_seconds)
        self._deadline = settings.redis_timeout_seconds

    async def run(self, operation: Callable[[], Awaitable[T]]) -> T:
        """The operation's result, or RedisUnavailableError (never a Redis or socket error)."""
        admission = self.breaker.admit()
        if admission is None:
            raise RedisUnavailableError("breaker_open")
        try:
            # The socket timeouts bound each read; this bounds the whole operation
            # (reconnect, script load, several round trips).
            async with asyncio.timeout(self._deadline):
                result = await operation()
        except REDIS_ERRORS as error:
            self.breaker.record_failure(admission, error)
            await self._drop_idle_connections()
            raise RedisUnavailableError("error") from error
        except BaseException:
            self.breaker.record_abandoned(admission)
            raise
        if admission is Admission.PROBE:
            # Before the breaker closes, or other calls could take a dead connection first.
            try:
                await self._drop_idle_connections()
            finally:
                self.breaker.record_success(admission)
        else:
            self.breaker.record_success(admission)
        return result

    async def _drop_idle_connections(self) -> None:
        """Pooled connections opened before a restart or outage are dead; each would fail
        once (and re-open the breaker) when next used, so close them all now."""
        with contextlib.suppress(*REDIS_ERRORS):
            await self.client.connection_pool.disconnect(inuse_connections=False)

    async def ping(self) -> None:
        """Readiness probe: asks Redis directly, whatever the breaker thinks (the socket
        timeouts bound it)."""
        await self.client.ping()

    async def close(self) -> None:
        await self.client.aclose()
