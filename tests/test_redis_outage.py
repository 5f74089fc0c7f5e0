"""Redis refused, black-holed or restarted: the API keeps answering from the database."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from oms.cache import cache_key
from tests.conftest import ITEM, ApiUser, create_order, make_settings, register_and_login
from tests.support.apps import app_client
from tests.support.redis_servers import RedisServerProcess, black_hole, free_port
from tests.support.services import REDIS_TEST_SERVER
from tests.support.tcp_proxy import TcpProxy

BURST = 20
GENEROUS_BOUND_SECONDS = 5.0  # not a benchmark: only "no request waits for a dead Redis long"


async def exercise_every_route(client: httpx.AsyncClient, user: ApiUser) -> list[int]:
    """POST, GET (twice), PATCH and list; returns their status codes."""
    created = await client.post("/orders/", json={"items": [ITEM]}, headers=user.headers)
    order_id = created.json()["id"]
    read = await client.get(f"/orders/{order_id}/", headers=user.headers)
    patched = await client.patch(
        f"/orders/{order_id}/", json={"status": "PAID"}, headers=user.headers
    )
    reread = await client.get(f"/orders/{order_id}/", headers=user.headers)
    listed = await client.get(f"/orders/user/{user.id}/", headers=user.headers)
    assert reread.json()["status"] == "PAID"
    return [r.status_code for r in (created, read, patched, reread, listed)]


async def assert_serves_without_redis(client: httpx.AsyncClient) -> None:
    user = await register_and_login(client)
    assert await exercise_every_route(client, user) == [201, 200, 200, 200, 200]

    order = await create_order(client, user)
    started = time.monotonic()
    responses = await asyncio.gather(
        *(client.get(f"/orders/{order['id']}/", headers=user.headers) for _ in range(BURST))
    )
    assert [r.status_code for r in responses] == [200] * BURST
    assert time.monotonic() - started < GENEROUS_BOUND_SECONDS

    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "degraded",
        "dependencies": {"database": "ok", "redis": "unavailable"},
    }


async def test_redis_refusing_connections(postgres_url: str) -> None:
    settings = make_settings(postgres_url, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with app_client(settings) as client:
        await assert_serves_without_redis(client)


async def test_redis_black_holed(postgres_url: str) -> None:
    async with black_hole() as port:
        settings = make_settings(postgres_url, redis_url=f"redis://127.0.0.1:{port}/0")
        async with app_client(settings) as client:
            await assert_serves_without_redis(client)


@pytest.fixture
async def redis_proxy() -> AsyncIterator[TcpProxy]:
    """A cuttable path to the shared Redis (the server itself is never stopped)."""
    server = urlsplit(REDIS_TEST_SERVER)
    proxy = TcpProxy(server.hostname or "127.0.0.1", server.port or 6379)
    await proxy.start()
    yield proxy
    await proxy.stop()


def through(proxy: TcpProxy, redis_url: str) -> str:
    return urlunsplit(urlsplit(redis_url)._replace(netloc=f"127.0.0.1:{proxy.port}"))


async def test_each_outage_is_logged_once_and_the_recovery_once(
    postgres_url: str, redis_url: str, redis_proxy: TcpProxy
) -> None:
    settings = make_settings(
        postgres_url,
        redis_url=through(redis_proxy, redis_url),
        redis_breaker_cooldown_seconds=0.05,
    )
    async with app_client(settings) as client:
        user = await register_and_login(client)
        order = await create_order(client, user)
        url = f"/orders/{order['id']}/"

        with capture_logs() as logs:
            for _outage in range(2):
                await redis_proxy.stop()
                for _ in range(BURST):
                    assert (await client.get(url, headers=user.headers)).status_code == 200
                    await asyncio.sleep(0.01)  # let the breaker probe several times
                await redis_proxy.start()
                await asyncio.sleep(0.06)
                assert (await client.get(url, headers=user.headers)).status_code == 200

    redis_logs = [entry for entry in logs if entry["event"].startswith("redis_")]
    assert [(e["event"], e["log_level"]) for e in redis_logs] == [
        ("redis_unavailable", "warning"),
        ("redis_available_again", "info"),
    ] * 2
    assert "Connection" in redis_logs[0]["error"]


async def test_redis_restarted_under_load_gives_no_5xx(postgres_url: str, tmp_path: Path) -> None:
    server = RedisServerProcess(tmp_path)
    server.start()
    try:
        settings = make_settings(
            postgres_url, redis_url=server.url, redis_breaker_cooldown_seconds=0.1
        )
        async with app_client(settings) as client:
            users = [await register_and_login(client) for _ in range(4)]
            statuses: list[int] = []
            stop = asyncio.Event()

            async def load(user: ApiUser) -> None:
                while not stop.is_set():
                    statuses.extend(await exercise_every_route(client, user))

            with capture_logs() as logs:
                workers = [asyncio.create_task(load(user)) for user in users]
                await asyncio.sleep(0.5)
                await asyncio.to_thread(server.stop)
                await asyncio.sleep(0.5)
                await asyncio.to_thread(server.start)
                await asyncio.sleep(0.7)
                stop.set()
                await asyncio.gather(*workers)

            # Once back, reads fill the restarted (empty) Redis again.
            order = await create_order(client, users[0])
            await client.get(f"/orders/{order['id']}/", headers=users[0].headers)
            async with Redis.from_url(server.url) as redis:
                assert await redis.exists(cache_key(uuid.UUID(order["id"])))
    finally:
        server.stop()

    events = [entry["event"] for entry in logs if entry["event"].startswith("redis_")]
    assert events == ["redis_unavailable", "redis_available_again"]
    assert len(statuses) > 50
    assert all(200 <= code < 300 for code in statuses), sorted(set(statuses))


async def test_a_change_lost_in_an_outage_does_not_leave_a_stale_cached_order(
    postgres_url: str, redis_url: str, redis_proxy: TcpProxy
) -> None:
    settings = make_settings(
        postgres_url,
        redis_url=through(redis_proxy, redis_url),
        redis_breaker_cooldown_seconds=0.05,
    )
    async with app_client(settings) as client:
        user = await register_and_login(client)
        order = await create_order(client, user)
        url = f"/orders/{order['id']}/"
        await client.get(url, headers=user.headers)  # cached as PENDING

        await redis_proxy.stop()
        patched: Any = await client.patch(url, json={"status": "PAID"}, headers=user.headers)
        await redis_proxy.start()
        await asyncio.sleep(0.06)
        reads = [(await client.get(url, headers=user.headers)).json()["status"] for _ in range(2)]

    assert patched.status_code == 200
    assert reads == ["PAID", "PAID"]
