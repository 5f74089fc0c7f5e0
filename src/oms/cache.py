"""The order cache: Redis when `REDIS_URL` is set, an in-process TTL cache otherwise.

Values are the order's response JSON. Every write carries the order's version, and a write
never replaces a newer version, so a slow read-through fill cannot undo a later change.
The cache is an optimisation only: when Redis is down every read is a miss, writes are
dropped, and the service answers from the database.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections import OrderedDict
from typing import Protocol

import structlog
from prometheus_client import Counter

from oms.redis import RedisGuard, RedisUnavailableError, SharedRead

log = structlog.get_logger(__name__)

CACHE_HITS = Counter("oms_cache_hits", "Order reads served from the cache")
CACHE_MISSES = Counter("oms_cache_misses", "Order reads the cache could not serve")
CACHE_FALLBACKS = Counter(
    "oms_cache_fallbacks",
    "Cache calls that went without the cache because Redis failed or its breaker was open",
    ["operation", "reason"],
)

# Redis layout, shared by the API and the worker: the order JSON under `orders:{id}` (served as
# is on a hit) and its version under `orders:{id}:version`, both with the same TTL.
# KEYS: body key, version key; ARGV: body, version, ttl seconds. Returns 1 if written.
PUT_IF_NEWER_LUA = """
local current = redis.call('GET', KEYS[2])
if current and tonumber(current) > tonumber(ARGV[2]) then
    return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return 1
"""


def cache_key(order_id: uuid.UUID) -> str:
    return f"orders:{order_id}"


def version_key(order_id: uuid.UUID) -> str:
    return f"orders:{order_id}:version"


class OrderCache(Protocol):
    async def get(self, order_id: uuid.UUID) -> bytes | None:
        """The cached order JSON, or None on a miss or when the cache is unavailable."""

    async def put(self, order_id: uuid.UUID, body: bytes, version: int) -> None:
        """Store the order JSON unless a newer version is already cached."""

    def shared_key(self, order_id: uuid.UUID) -> str | None:
        """The Redis key a caller may read along with its own Redis call (the rate limit) instead
        of calling `get`, or None when `get` must be called."""

    def shared_read(self, read: SharedRead) -> bytes | None:
        """What such a read of `shared_key` means for this cache (counted like `get`)."""

    async def close(self) -> None: ...


class _OwnReadsOnly:
    """For caches that are not in Redis: every read is a `get`."""

    def shared_key(self, order_id: uuid.UUID) -> str | None:
        return None

    def shared_read(self, read: SharedRead) -> bytes | None:
        raise AssertionError("shared_key gave no key to read")


class DisabledOrderCache(_OwnReadsOnly):
    """`CACHE_ENABLED=false`: every read is a miss and writes are dropped."""

    async def get(self, order_id: uuid.UUID) -> bytes | None:
        CACHE_MISSES.inc()
        return None

    async def put(self, order_id: uuid.UUID, body: bytes, version: int) -> None:
        return None

    async def close(self) -> None:
        return None


class InMemoryOrderCache(_OwnReadsOnly):
    """A bounded TTL cache living in one process."""

    def __init__(self, ttl_seconds: float, max_entries: int = 10_000) -> None:
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._entries: OrderedDict[uuid.UUID, tuple[float, int, bytes]] = OrderedDict()

    async def get(self, order_id: uuid.UUID) -> bytes | None:
        entry = self._entries.get(order_id)
        if entry is not None and entry[0] <= time.monotonic():
            del self._entries[order_id]
            entry = None
        if entry is None:
            CACHE_MISSES.inc()
            return None
        CACHE_HITS.inc()
        return entry[2]

    async def put(self, order_id: uuid.UUID, body: bytes, version: int) -> None:
        current = self._entries.get(order_id)
        if current is not None and current[1] > version and current[0] > time.monotonic():
            return
        self._entries[order_id] = (time.monotonic() + self._ttl, version, body)
        self._entries.move_to_end(order_id)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def close(self) -> None:
        self._entries.clear()


class RedisOrderCache:
    """The shared cache in Redis (layout above). Never raises: Redis trouble is a miss."""

    # Orders whose write was lost in an outage. Until Redis has dropped their entries, they
    # are not read from it: an older cached state must not outlive the outage.
    MAX_UNWRITTEN = 10_000

    def __init__(self, guard: RedisGuard, ttl_seconds: int) -> None:
        self._guard = guard
        self._ttl = ttl_seconds
        self._put_if_newer = guard.client.register_script(PUT_IF_NEWER_LUA)
        self._unwritten: OrderedDict[uuid.UUID, int] = OrderedDict()
        self._failed_writes = itertools.count()

    async def get(self, order_id: uuid.UUID) -> bytes | None:
        try:
            if self._unwritten:
                await self._invalidate_unwritten()
            body = await self._guard.run(lambda: self._read(cache_key(order_id)))
        except RedisUnavailableError as unavailable:
            CACHE_FALLBACKS.labels(operation="get", reason=unavailable.reason).inc()
            return None
        (CACHE_MISSES if body is None else CACHE_HITS).inc()
        return body

    async def put(self, order_id: uuid.UUID, body: bytes, version: int) -> None:
        keys = [cache_key(order_id), version_key(order_id)]
        try:
            if self._unwritten:
                await self._invalidate_unwritten()
            await self._guard.run(
                lambda: self._put_if_newer(keys=keys, args=[body, version, self._ttl])
            )
        except RedisUnavailableError as unavailable:
            CACHE_FALLBACKS.labels(operation="put", reason=unavailable.reason).inc()
            self._remember_unwritten(order_id)

    def shared_key(self, order_id: uuid.UUID) -> str | None:
        # Entries still to invalidate after an outage: `get` drops them before reading.
        return None if self._unwritten else cache_key(order_id)

    def shared_read(self, read: SharedRead) -> bytes | None:
        if read.unavailable is not None:
            CACHE_FALLBACKS.labels(operation="get", reason=read.unavailable).inc()
            return None
        (CACHE_MISSES if read.value is None else CACHE_HITS).inc()
        return read.value

    async def close(self) -> None:
        """Nothing of its own to close: the lifespan owns the Redis client."""

    async def _read(self, key: str) -> bytes | None:
        value = await self._guard.client.get(key)
        # The client does not decode responses, so this is bytes; a str would be re-encoded.
        return value.encode() if isinstance(value, str) else value

    def _remember_unwritten(self, order_id: uuid.UUID) -> None:
        self._unwritten[order_id] = next(self._failed_writes)
        self._unwritten.move_to_end(order_id)
        if len(self._unwritten) > self.MAX_UNWRITTEN:
            self._unwritten.popitem(last=False)
            log.warning("cache_invalidation_list_full", kept=self.MAX_UNWRITTEN)

    async def _invalidate_unwritten(self) -> None:
        """Drop the entries of every unwritten order; raises RedisUnavailableError if Redis
        cannot. Concurrent callers may each send the (idempotent) UNLINK: none reads first."""
        pending = dict(self._unwritten)
        keys = [key for order_id in pending for key in (cache_key(order_id), version_key(order_id))]
        await self._guard.run(lambda: self._guard.client.unlink(*keys))
        for order_id, failure in pending.items():
            if self._unwritten.get(order_id) == failure:  # not failed again meanwhile
                del self._unwritten[order_id]
        log.info("cache_entries_invalidated_after_outage", count=len(pending))
