"""The order cache: a seam with an in-process implementation for the embedded mode.

Values are the order's response JSON. Every write carries the order's version, and a write
never replaces a newer version, so a slow read-through fill cannot undo a later change.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from typing import Annotated, Protocol

from fastapi import Depends, Request

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

    async def close(self) -> None: ...


class InMemoryOrderCache:
    """A bounded TTL cache living in one process."""

    def __init__(self, ttl_seconds: float, max_entries: int = 10_000) -> None:
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._entries: OrderedDict[uuid.UUID, tuple[float, int, bytes]] = OrderedDict()

    async def get(self, order_id: uuid.UUID) -> bytes | None:
        entry = self._entries.get(order_id)
        if entry is None:
            return None
        expires_at, _version, body = entry
        if expires_at <= time.monotonic():
            del self._entries[order_id]
            return None
        return body

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


def get_order_cache(request: Request) -> OrderCache:
    cache: OrderCache = request.app.state.order_cache
    return cache


Cache = Annotated[OrderCache, Depends(get_order_cache)]
