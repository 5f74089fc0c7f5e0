"""The Redis order cache (SPEC 4), observed in Redis itself."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from oms.cache import OrderCache, RedisOrderCache, cache_key, version_key
from oms.redis import SharedRead
from tests.conftest import ApiUser, create_order, make_settings, register_and_login
from tests.support.apps import app_client, client_for, running_app
from tests.support.redis_servers import RedisServerProcess

TTL = 300


@pytest.fixture(scope="module")
async def app(postgres_url: str, redis_url: str) -> AsyncIterator[FastAPI]:
    async with running_app(
        make_settings(postgres_url, redis_url=redis_url, cache_ttl_seconds=TTL)
    ) as application:
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as http:
        yield http


@pytest.fixture(scope="module")
async def redis_db(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def user(client: httpx.AsyncClient) -> ApiUser:
    return await register_and_login(client)


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_the_app_uses_redis_when_redis_url_is_set(app: FastAPI) -> None:
    assert isinstance(app.state.order_cache, RedisOrderCache)


async def test_a_miss_fills_redis_with_the_response_bytes_and_a_ttl(
    client: httpx.AsyncClient, user: ApiUser, redis_db: Redis
) -> None:
    order = await create_order(client, user)
    key = cache_key(uuid.UUID(order["id"]))
    assert await redis_db.get(key) is None  # creating does not fill the cache

    misses = counter("oms_cache_misses_total")
    response = await client.get(f"/orders/{order['id']}/", headers=user.headers)

    assert response.status_code == 200
    assert await redis_db.get(key) == response.content
    assert await redis_db.get(version_key(uuid.UUID(order["id"]))) == b"1"
    assert TTL - 5 < await redis_db.ttl(key) <= TTL
    assert counter("oms_cache_misses_total") == misses + 1


async def test_a_hit_is_served_from_redis_as_stored(
    client: httpx.AsyncClient, user: ApiUser, redis_db: Redis
) -> None:
    order = await create_order(client, user)
    first = await client.get(f"/orders/{order['id']}/", headers=user.headers)
    # Change the cached copy behind the service's back: the next read must return it verbatim.
    doctored = first.content.replace(b'"PENDING"', b'"PAID"')
    await redis_db.set(cache_key(uuid.UUID(order["id"])), doctored)

    hits = counter("oms_cache_hits_total")
    second = await client.get(f"/orders/{order['id']}/", headers=user.headers)

    assert second.status_code == 200
    assert second.content == doctored
    assert counter("oms_cache_hits_total") == hits + 1


async def test_ownership_is_checked_on_a_hit(
    client: httpx.AsyncClient, user: ApiUser, redis_db: Redis
) -> None:
    other = await register_and_login(client)
    order = await create_order(client, user)
    await client.get(f"/orders/{order['id']}/", headers=user.headers)
    assert await redis_db.exists(cache_key(uuid.UUID(order["id"])))

    response = await client.get(f"/orders/{order['id']}/", headers=other.headers)

    assert response.status_code == 403


async def test_patch_rewrites_the_cached_order(
    client: httpx.AsyncClient, user: ApiUser, redis_db: Redis
) -> None:
    order = await create_order(client, user)
    await client.get(f"/orders/{order['id']}/", headers=user.headers)

    patched = await client.patch(
        f"/orders/{order['id']}/", json={"status": "PAID"}, headers=user.headers
    )
    read = await client.get(f"/orders/{order['id']}/", headers=user.headers)

    assert patched.status_code == 200
    assert await redis_db.get(cache_key(uuid.UUID(order["id"]))) == patched.content
    assert await redis_db.get(version_key(uuid.UUID(order["id"]))) == b"2"
    assert read.content == patched.content


async def test_an_older_version_never_replaces_a_newer_one(app: FastAPI, redis_db: Redis) -> None:
    cache: OrderCache = app.state.order_cache
    order_id = uuid.uuid4()

    await cache.put(order_id, b'{"v":2}', 2)
    await cache.put(order_id, b'{"v":1}', 1)
    assert await redis_db.get(cache_key(order_id)) == b'{"v":2}'

    await cache.put(order_id, b'{"v":3}', 3)
    assert await cache.get(order_id) == b'{"v":3}'


class FillPausingCache:
    """Holds the read-through fill of version 1 until the test lets it go."""

    def __init__(self, inner: OrderCache) -> None:
        self.inner = inner
        self.fill_reached = asyncio.Event()
        self.release_fill = asyncio.Event()

    async def get(self, order_id: uuid.UUID) -> bytes | None:
        return await self.inner.get(order_id)

    def shared_key(self, order_id: uuid.UUID) -> str | None:
        return self.inner.shared_key(order_id)

    def shared_read(self, read: SharedRead) -> bytes | None:
        return self.inner.shared_read(read)

    async def put(self, order_id: uuid.UUID, body: bytes, version: int) -> None:
        if version == 1:
            self.fill_reached.set()
            await self.release_fill.wait()
        await self.inner.put(order_id, body, version)

    async def close(self) -> None:
        await self.inner.close()


async def test_a_slow_get_miss_does_not_overwrite_a_patch(
    app: FastAPI, client: httpx.AsyncClient, user: ApiUser, redis_db: Redis
) -> None:
    order = await create_order(client, user)
    real_cache = app.state.order_cache
    pausing = FillPausingCache(real_cache)
    app.state.order_cache = pausing
    try:
        # The GET reads version 1 from the database and stalls before writing it to Redis...
        slow_get = asyncio.create_task(client.get(f"/orders/{order['id']}/", headers=user.headers))
        await asyncio.wait_for(pausing.fill_reached.wait(), 5)
        # ...a PATCH commits version 2 and writes it...
        patched = await client.patch(
            f"/orders/{order['id']}/", json={"status": "PAID"}, headers=user.headers
        )
        # ...then the stale fill goes ahead.
        pausing.release_fill.set()
        stale = await slow_get
    finally:
        app.state.order_cache = real_cache

    assert stale.json()["status"] == "PENDING"
    assert patched.json()["status"] == "PAID"
    assert await redis_db.get(cache_key(uuid.UUID(order["id"]))) == patched.content
    fresh = await client.get(f"/orders/{order['id']}/", headers=user.headers)
    assert fresh.json()["status"] == "PAID"


async def test_a_cache_hit_is_one_redis_command(postgres_url: str, tmp_path: Path) -> None:
    """The rate-limit decision and the cached order come back from one script call: nothing
    else reaches Redis for a hit (a private server, watched with MONITOR)."""
    server = RedisServerProcess(tmp_path)
    server.start()
    try:
        settings = make_settings(postgres_url, redis_url=server.url)
        async with (
            app_client(settings) as client,
            Redis.from_url(server.url) as redis,
            Redis.from_url(server.url) as watcher,
        ):
            user = await register_and_login(client)
            order = await create_order(client, user)
            url = f"/orders/{order['id']}/"
            first = await client.get(url, headers=user.headers)  # the miss fills the cache
            sent: list[str] = []
            await redis.ping()  # connected before the watch: its HELLO is not part of it
            async with watcher.monitor() as monitor:
                hit = await client.get(url, headers=user.headers)
                await redis.echo("end of the hit")
                async with asyncio.timeout(5):
                    async for command in monitor.listen():
                        if command["command"] == "ECHO end of the hit":
                            break
                        if command["client_type"] != "lua":  # not what the script calls
                            sent.append(command["command"].split()[0])
    finally:
        server.stop()
    assert hit.status_code == 200
    assert hit.content == first.content
    assert "ratelimit-remaining" in hit.headers
    assert sent == ["EVALSHA"]
