"""Rate limiting (SPEC 2.4) with the `limits` library and a moving window.

The moving window keeps one timestamp per request in the window (at most the limit), so the
headers are exact: `RateLimit-Reset` and `Retry-After` say when the oldest request leaves the
window and frees a slot. The windows live in Redis so replicas share them; they reuse the
process's Redis connection pool and go through its circuit breaker. In Redis, a decision is one
round trip: `HIT_AND_COUNT_LUA` does what `limits`' moving-window `hit` and `get_window_stats`
do (its own Lua scripts, two calls) on the same keys, in one script. When Redis cannot answer,
the same limits are enforced by a per-process in-memory window (`limits`' `MemoryStorage`)
instead: a limiter outage never becomes a 500.

Two entry points apply the limits: `limit_per_client` (RATE_LIMIT_TIMES per RATE_LIMIT_SECONDS
per client per route; the client is the verified JWT subject when a valid token is present, else
the peer IP), which authentication calls first thing on every protected route, and the dependency
`limit_auth_per_ip` (AUTH_RATE_LIMIT per IP) on the credential routes. The peer IP is what the
server resolved: uvicorn honours proxy headers only from FORWARDED_ALLOW_IPS.
Each decision is left in the request state, where `oms.middleware.RequestMiddleware` turns it into
`RateLimit-*` headers on whatever response the route produces, 429 included.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import structlog
from fastapi import Request
from limits import RateLimitItem, RateLimitItemPerSecond, parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.aio.strategies import RateLimiter as WindowLimiter
from prometheus_client import Counter

from oms.config import Settings
from oms.redis import RedisGuard, RedisUnavailableError, SharedRead
from oms.routing import route_template

log = structlog.get_logger(__name__)

LimitName = Literal["client", "auth"]
STATE_KEY = "rate_limit"
KEY_PREFIX = "oms:ratelimit"

# One moving-window decision, atomically: `limits`' acquire_moving_window.lua (take a slot unless
# the window holds `limit` entries newer than now - expiry) followed by its moving_window.lua
# (binary search for the oldest entry still in the window). Same list layout and key names as
# `limits`' RedisStorage (newest timestamp first, trimmed to `limit`, expiring after `expiry`).
# KEYS: the window list; ARGV: now (float seconds), limit, expiry (seconds).
# Returns {allowed (0/1), number of entries in the window, oldest entry (string) or false}.
_MOVING_WINDOW_LUA = """
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local expiry = tonumber(ARGV[3])
local start = now - expiry

local allowed = 0
local entry = redis.call('LINDEX', KEYS[1], limit - 1)
if not (entry and tonumber(entry) >= start) then
    redis.call('LPUSH', KEYS[1], ARGV[1])
    redis.call('LTRIM', KEYS[1], 0, limit - 1)
    redis.call('EXPIRE', KEYS[1], expiry)
    allowed = 1
end

local low, high, oldest = 0, math.min(redis.call('LLEN', KEYS[1]), limit) - 1, nil
while low <= high do
    local mid = math.floor((low + high) / 2)
    local value = redis.call('LINDEX', KEYS[1], mid)
    if value and tonumber(value) >= start then
        oldest = mid
        low = mid + 1
    else
        high = mid - 1
    end
end
local count, oldest_entry = 0, false
if oldest ~= nil then
    count, oldest_entry = oldest + 1, redis.call('LINDEX', KEYS[1], oldest)
end
"""
HIT_AND_COUNT_LUA = _MOVING_WINDOW_LUA + "return {allowed, count, oldest_entry}\n"
# The same decision plus, when allowed, the value under KEYS[2] (false if none): a cached order
# read and its rate limit in one round trip.
HIT_AND_READ_LUA = (
    _MOVING_WINDOW_LUA
    + "return {allowed, count, oldest_entry, allowed == 1 and redis.call('GET', KEYS[2])}\n"
)

RATE_LIMIT_REJECTIONS = Counter(
    "oms_rate_limit_rejections", "Requests answered 429 by the rate limiter", ["limit"]
)
RATE_LIMIT_FALLBACKS = Counter(
    "oms_rate_limit_fallbacks",
    "Rate limit decisions taken in process memory because Redis failed or its breaker was open",
    ["reason"],
)


@dataclass(frozen=True, slots=True)
class RateLimitDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_after_seconds: int

    @property
    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_after_seconds),
        }

    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """The same, as ASGI header pairs."""
        return [
            (b"ratelimit-limit", b"%d" % self.limit),
            (b"ratelimit-remaining", b"%d" % self.remaining),
            (b"ratelimit-reset", b"%d" % self.reset_after_seconds),
        ]

    @property
    def retry_after_seconds(self) -> int:
        return max(1, self.reset_after_seconds)


class RateLimitExceededError(Exception):
    """Raised by the dependencies; `oms.errors` answers it with a 429."""

    def __init__(self, decision: RateLimitDecision) -> None:
        super().__init__("Rate limit exceeded")
        self.decision = decision


class RateLimiter:
    """The process's limiter: Redis-backed when Redis is configured and answering."""

    def __init__(self, settings: Settings, guard: RedisGuard | None) -> None:
        self.limits: dict[LimitName, RateLimitItem] = {
            "client": RateLimitItemPerSecond(
                settings.rate_limit_times, settings.rate_limit_seconds
            ),
            "auth": parse(settings.auth_rate_limit),
        }
        self._guard = guard
        self._memory_storage = MemoryStorage()
        self._memory = MovingWindowRateLimiter(self._memory_storage)
        self._hit_and_count = (
            guard.client.register_script(HIT_AND_COUNT_LUA) if guard is not None else None
        )
        self._hit_and_read = (
            guard.client.register_script(HIT_AND_READ_LUA) if guard is not None else None
        )

    async def hit(self, name: LimitName, *identifiers: str) -> RateLimitDecision:
        item = self.limits[name]
        if self._guard is not None:
            try:
                decision, _ = await self._guard.run(lambda: self._hit_shared(item, identifiers))
                return decision
            except RedisUnavailableError as unavailable:
                RATE_LIMIT_FALLBACKS.labels(reason=unavailable.reason).inc()
        return await _hit(self._memory, item, identifiers)

    async def hit_and_read(
        self, name: LimitName, identifiers: tuple[str, ...], key: str
    ) -> tuple[RateLimitDecision, SharedRead]:
        """The decision, plus the Redis value under `key` read in the same round trip when the
        request is allowed. Without Redis the decision comes from memory and the read fails
        (`SharedRead.unavailable`), so the caller falls back as it would for its own call."""
        item = self.limits[name]
        if self._guard is not None:
            try:
                return await self._guard.run(lambda: self._hit_shared(item, identifiers, key))
            except RedisUnavailableError as unavailable:
                RATE_LIMIT_FALLBACKS.labels(reason=unavailable.reason).inc()
                return await _hit(self._memory, item, identifiers), SharedRead(
                    None, unavailable.reason
                )
        return await _hit(self._memory, item, identifiers), SharedRead(None, "error")

    async def _hit_shared(
        self, item: RateLimitItem, identifiers: tuple[str, ...], read_key: str | None = None
    ) -> tuple[RateLimitDecision, SharedRead]:
        key = f"{KEY_PREFIX}:{item.key_for(*identifiers)}"
        expiry = item.get_expiry()
        now = time.time()
        args: list[str | int] = [repr(now), item.amount, expiry]
        value: bytes | None = None
        if read_key is None:
            assert self._hit_and_count is not None
            allowed, count, oldest = await self._hit_and_count(keys=[key], args=args)
        else:
            assert self._hit_and_read is not None
            allowed, count, oldest, value = await self._hit_and_read(
                keys=[key, read_key], args=args
            )
        window_start = float(oldest) if oldest else now
        decision = RateLimitDecision(
            allowed=bool(allowed),
            limit=item.amount,
            remaining=item.amount - int(count),
            reset_after_seconds=max(0, math.ceil(window_start + expiry - time.time())),
        )
        return decision, SharedRead(value or None, None)

    async def close(self) -> None:
        # The in-memory storage expires entries with a background task.
        timer = self._memory_storage.timer
        if timer is not None:
            timer.cancel()


async def _hit(
    limiter: WindowLimiter, item: RateLimitItem, identifiers: tuple[str, ...]
) -> RateLimitDecision:
    allowed = await limiter.hit(item, *identifiers)
    stats = await limiter.get_window_stats(item, *identifiers)
    return RateLimitDecision(
        allowed=allowed,
        limit=item.amount,
        remaining=stats.remaining,
        reset_after_seconds=max(0, math.ceil(stats.reset_time - time.time())),
    )


async def limit_per_client(
    request: Request, user_id: int | None, read_key: str | None = None
) -> SharedRead | None:
    """RATE_LIMIT_TIMES per RATE_LIMIT_SECONDS per client per route; the client is the user of a
    verified token, else (no token, or an invalid one) the peer IP. With `read_key`, also the
    Redis value under it, read in the decision's round trip."""
    client = f"user:{user_id}" if user_id is not None else f"ip:{_peer_ip(request)}"
    limiter: RateLimiter = request.app.state.rate_limiter
    route = _route_of(request)
    if read_key is None:
        _decide(request, "client", route, client, await limiter.hit("client", route, client))
        return None
    decision, read = await limiter.hit_and_read("client", (route, client), read_key)
    _decide(request, "client", route, client, decision)
    return read


async def limit_auth_per_ip(request: Request) -> None:
    """AUTH_RATE_LIMIT per peer IP on the credential endpoints."""
    limiter: RateLimiter = request.app.state.rate_limiter
    route, client = _route_of(request), f"ip:{_peer_ip(request)}"
    _decide(request, "auth", route, client, await limiter.hit("auth", route, client))


def _decide(
    request: Request, name: LimitName, route: str, client: str, decision: RateLimitDecision
) -> None:
    request.state.rate_limit = decision
    if not decision.allowed:
        RATE_LIMIT_REJECTIONS.labels(limit=name).inc()
        log.info("rate_limited", limit=name, route=route, client=client)
        raise RateLimitExceededError(decision)


def _route_of(request: Request) -> str:
    """The route template, so `/orders/<any id>/` is one route; with or without the slash."""
    template = route_template(request.scope).rstrip("/") or "/"
    return f"{request.method} {template}"


def _peer_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"
