"""Rate limiting (SPEC 2.4): per client per route, shared by replicas through Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from pydantic import ValidationError
from redis.asyncio import Redis

from oms.config import Settings
from oms.ratelimit import KEY_PREFIX
from tests.conftest import PASSWORD, ApiUser, create_order, make_settings, register_and_login
from tests.support.apps import client_for, running_app, unique_client_ip
from tests.support.redis_servers import free_port

LIMIT = 3
RATE_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


def limited_settings(postgres_url: str, redis_url: str | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "rate_limit_times": LIMIT,
        "rate_limit_seconds": 60,
        "auth_rate_limit": "100/minute",
        **overrides,
    }
    return make_settings(postgres_url, **values)


@pytest.fixture(scope="module")
async def app(postgres_url: str, redis_url: str) -> AsyncIterator[FastAPI]:
    async with running_app(limited_settings(postgres_url, redis_url)) as application:
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    # Each test is its own peer address, so anonymous budgets never mix between tests.
    async with client_for(app, unique_client_ip()) as http:
        yield http


@pytest.fixture
async def user(client: httpx.AsyncClient) -> ApiUser:
    return await register_and_login(client)


def rejections(limit: str) -> float:
    return REGISTRY.get_sample_value("oms_rate_limit_rejections_total", {"limit": limit}) or 0.0


async def test_over_the_limit_is_429_with_retry_after_and_ratelimit_headers(
    client: httpx.AsyncClient, user: ApiUser, redis_url: str
) -> None:
    url = f"/orders/user/{user.id}/"
    before = rejections("client")
    allowed = [await client.get(url, headers=user.headers) for _ in range(LIMIT)]
    refused = await client.get(url, headers=user.headers)

    assert [r.status_code for r in allowed] == [200] * LIMIT
    assert [r.headers["RateLimit-Remaining"] for r in allowed] == ["2", "1", "0"]
    assert all(r.headers["RateLimit-Limit"] == str(LIMIT) for r in allowed)
    # The oldest request of the window leaves it 60 s after it was made, freeing a slot.
    assert all(50 < int(r.headers["RateLimit-Reset"]) <= 60 for r in allowed)
    assert refused.status_code == 429
    assert refused.json()["detail"].startswith("Rate limit exceeded")
    assert 50 < int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["RateLimit-Limit"] == str(LIMIT)
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert rejections("client") == before + 1
    async with Redis.from_url(redis_url) as redis:  # the counters live in Redis
        assert [key async for key in redis.scan_iter(f"{KEY_PREFIX}:*user:{user.id}*")]


async def test_one_route_is_one_budget_whatever_the_id_or_trailing_slash(
    client: httpx.AsyncClient, user: ApiUser
) -> None:
    orders = [await create_order(client, user) for _ in range(2)]
    paths = [
        f"/orders/{orders[0]['id']}/",
        f"/orders/{orders[1]['id']}",
        f"/orders/{uuid.uuid4()}/",
    ]
    responses = [await client.get(path, headers=user.headers) for path in paths]
    refused = await client.get(paths[0], headers=user.headers)
    other_route = await client.get(f"/orders/user/{user.id}/", headers=user.headers)

    assert [r.status_code for r in responses] == [200, 200, 404]
    assert responses[2].headers["RateLimit-Remaining"] == "0"  # errors count and carry headers
    assert refused.status_code == 429
    assert other_route.status_code == 200


async def test_each_user_has_a_budget_of_its_own(client: httpx.AsyncClient) -> None:
    alice, bob = await register_and_login(client), await register_and_login(client)
    for _ in range(LIMIT):
        await client.get(f"/orders/user/{alice.id}/", headers=alice.headers)

    assert (await client.get(f"/orders/user/{alice.id}/", headers=alice.headers)).status_code == 429
    assert (await client.get(f"/orders/user/{bob.id}/", headers=bob.headers)).status_code == 200


async def test_requests_without_a_valid_token_are_limited_by_ip(
    client: httpx.AsyncClient,
) -> None:
    forged = {"Authorization": "Bearer not-a-token"}
    responses = [await client.get("/orders/user/1/", headers=forged) for _ in range(LIMIT + 1)]
    assert [r.status_code for r in responses] == [401] * LIMIT + [429]


async def test_two_app_instances_share_one_budget(
    postgres_url: str, redis_url: str, app: FastAPI
) -> None:
    ip = unique_client_ip()
    async with (
        running_app(limited_settings(postgres_url, redis_url)) as replica,
        client_for(app, ip) as first,
        client_for(replica, ip) as second,
    ):
        user = await register_and_login(first)
        url = f"/orders/user/{user.id}/"
        statuses = [
            (await (first if i % 2 else second).get(url, headers=user.headers)).status_code
            for i in range(LIMIT + 2)
        ]

    assert statuses == [200] * LIMIT + [429, 429]


async def test_register_and_token_have_the_auth_limit_per_ip(
    postgres_url: str, redis_url: str
) -> None:
    settings = limited_settings(postgres_url, redis_url, auth_rate_limit="2/minute")
    async with running_app(settings) as app, client_for(app, unique_client_ip()) as client:
        email = f"limit-{uuid.uuid4().hex[:8]}@example.com"
        body = {"email": email, "password": PASSWORD}
        registers = [await client.post("/register/", json=body) for _ in range(3)]
        form = {"username": email, "password": PASSWORD}
        tokens = [await client.post("/token/", data=form) for _ in range(3)]
        async with client_for(app, unique_client_ip()) as elsewhere:
            other_ip = await elsewhere.post("/token/", data=form)

    assert [r.status_code for r in registers] == [201, 409, 429]
    assert [r.status_code for r in tokens] == [200, 200, 429]
    assert registers[0].headers["RateLimit-Limit"] == "2"
    assert tokens[2].json()["detail"].startswith("Rate limit exceeded")
    assert "Retry-After" in tokens[2].headers
    assert other_ip.status_code == 200


async def test_health_metrics_and_docs_are_not_limited(client: httpx.AsyncClient) -> None:
    for path in ("/health", "/health/ready", "/openapi.json", "/docs"):
        responses = [await client.get(path) for _ in range(LIMIT + 2)]
        assert {r.status_code for r in responses} == {200}, path
        assert not any(h in responses[-1].headers for h in RATE_HEADERS), path


@pytest.mark.parametrize("redis", ["down", "embedded"])
async def test_without_redis_the_limit_holds_per_process_and_never_500s(
    postgres_url: str, redis: str
) -> None:
    redis_url = f"redis://127.0.0.1:{free_port()}/0" if redis == "down" else None
    settings = limited_settings(postgres_url, redis_url)
    async with running_app(settings) as app, client_for(app, unique_client_ip()) as client:
        user = await register_and_login(client)
        url = f"/orders/user/{user.id}/"
        responses = [await client.get(url, headers=user.headers) for _ in range(LIMIT + 1)]

    assert [r.status_code for r in responses] == [200] * LIMIT + [429]
    assert responses[-1].headers["RateLimit-Remaining"] == "0"


def test_malformed_limit_settings_fail_at_start() -> None:
    with pytest.raises(ValidationError, match="auth_rate_limit"):
        make_settings("sqlite:///x.db", auth_rate_limit="often")
    with pytest.raises(ValidationError, match="redis_url"):
        make_settings("sqlite:///x.db", redis_url="http://127.0.0.1:6379")
