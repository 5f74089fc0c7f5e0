"""Fixtures shared by every test: backends, the app, an HTTP client and users."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from oms import migrate
from oms.config import Settings
from oms.main import create_app
from tests.support.services import claimed_redis_database, fresh_postgres_database

TEST_SECRET = secrets.token_urlsafe(48)
PASSWORD = "correct horse battery"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgres_only: run only on the PostgreSQL backend")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Backend-specific tests are deselected (not skipped) on the other backend."""
    sqlite_variants = [
        item
        for item in items
        if item.get_closest_marker("postgres_only")
        and getattr(item, "callspec", None)
        and item.callspec.params.get("database_url") == "sqlite"
    ]
    if sqlite_variants:
        config.hook.pytest_deselected(items=sqlite_variants)
        items[:] = [item for item in items if item not in sqlite_variants]


def make_settings(database_url: str, **overrides: Any) -> Settings:
    """Settings for a test app: explicit values only, no `.env`, a random secret. The suite
    creates users and requests faster than the real limits allow, so they are raised unless a
    test sets its own (tests/test_ratelimit.py)."""
    values: dict[str, Any] = {
        "app_env": "test",
        "secret_key": TEST_SECRET,
        "database_url": database_url,
        "log_format": "json",
        "rate_limit_times": 1_000_000,
        "auth_rate_limit": "1000000/minute",
        # Many apps and processes share one PostgreSQL (max_connections 100) during a run.
        "db_pool_size": 5,
        "db_max_overflow": 5,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        migrate.upgrade(url)
        yield url


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'oms.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Every API test runs once on SQLite and once on PostgreSQL."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database of the shared server for this run only (see claimed_redis_database)."""
    with claimed_redis_database() as url:
        yield url


@pytest.fixture(scope="session")
def settings(request: pytest.FixtureRequest, database_url: str) -> Settings:
    """SQLite runs embedded (in-process cache and limiter); PostgreSQL with the real Redis."""
    if database_url.startswith("sqlite"):
        return make_settings(database_url)
    return make_settings(database_url, redis_url=request.getfixturevalue("redis_url"))


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with LifespanManager(application):
        yield application


@pytest.fixture(scope="session")
def engine(app: FastAPI) -> AsyncEngine:
    engine: AsyncEngine = app.state.engine
    return engine


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


@dataclass(frozen=True)
class ApiUser:
    id: int
    email: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def unique_email() -> str:
    return f"user-{uuid.uuid4().hex[:12]}@example.com"


async def register_and_login(client: httpx.AsyncClient) -> ApiUser:
    email = unique_email()
    registered = await client.post("/register/", json={"email": email, "password": PASSWORD})
    assert registered.status_code == 201, registered.text
    token = await client.post("/token/", data={"username": email, "password": PASSWORD})
    assert token.status_code == 200, token.text
    return ApiUser(registered.json()["id"], email, token.json()["access_token"])


@pytest.fixture
def make_user(client: httpx.AsyncClient) -> Callable[[], Awaitable[ApiUser]]:
    return lambda: register_and_login(client)


@pytest.fixture
async def user(make_user: Callable[[], Awaitable[ApiUser]]) -> ApiUser:
    return await make_user()


ITEM = {"product_id": "SKU-1", "name": "Widget", "quantity": 2, "price": 9.99}


async def create_order(
    client: httpx.AsyncClient, user: ApiUser, items: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    response = await client.post("/orders/", json={"items": items or [ITEM]}, headers=user.headers)
    assert response.status_code == 201, response.text
    order: dict[str, Any] = response.json()
    return order
