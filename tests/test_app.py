"""Cross-cutting behaviour: health, schema, request ids, database outages."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import text
from sqlalchemy.exc import InterfaceError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from oms.config import Settings
from oms.main import create_app
from tests.conftest import (
    ITEM,
    PASSWORD,
    ApiUser,
    create_order,
    make_settings,
    register_and_login,
    unique_email,
)
from tests.support.processes import free_port
from tests.support.tcp_proxy import TcpProxy


async def test_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_reports_each_dependency(client: httpx.AsyncClient, settings: Settings) -> None:
    response = await client.get("/health/ready")
    expected = {"database": "ok"} | ({"redis": "ok"} if settings.redis_url else {})
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "dependencies": expected}


async def test_openapi_lists_canonical_paths_only(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert set(schema["paths"]) == {
        "/health",
        "/health/ready",
        "/metrics",
        "/register/",
        "/token/",
        "/orders/",
        "/orders/{order_id}/",
        "/orders/user/{user_id}/",
    }
    get_order = schema["paths"]["/orders/{order_id}/"]["get"]["responses"]
    assert {"200", "401", "403", "404", "422", "503"} <= set(get_order)


async def test_swagger_ui_is_served(client: httpx.AsyncClient) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    assert "swagger-ui" in response.text


async def test_request_id_is_echoed_or_generated(client: httpx.AsyncClient) -> None:
    given = await client.get("/health", headers={"X-Request-ID": "abc-123"})
    hostile = await client.get("/health", headers={"X-Request-ID": "x" * 500})
    missing = await client.get("/health")

    assert given.headers["X-Request-ID"] == "abc-123"
    assert len(hostile.headers["X-Request-ID"]) == 32
    assert len(missing.headers["X-Request-ID"]) == 32


async def test_json_body_needs_a_json_content_type(
    client: httpx.AsyncClient, user: ApiUser
) -> None:
    response = await client.post(
        "/orders/",
        content=b'{"items": []}',
        headers={**user.headers, "Content-Type": "text/plain"},
    )
    assert response.status_code == 422


async def test_malformed_json_is_422(client: httpx.AsyncClient, user: ApiUser) -> None:
    response = await client.post(
        "/orders/",
        content=b'{"items": [',
        headers={**user.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


@pytest.fixture
async def proxy(postgres_url: str) -> AsyncIterator[TcpProxy]:
    target = urlsplit(postgres_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.start()
    yield proxy
    await proxy.stop()


async def test_database_outage_is_503_and_recovers(postgres_url: str, proxy: TcpProxy) -> None:
    parts = urlsplit(postgres_url)
    through_proxy = urlunsplit(parts._replace(netloc=f"postgres@127.0.0.1:{proxy.port}"))
    app = create_app(make_settings(through_proxy, db_connect_timeout_seconds=1))
    transport = httpx.ASGITransport(app=app)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        user = await register_and_login(client)
        order = await create_order(client, user)

        await proxy.stop()
        down = await client.get(f"/orders/user/{user.id}/", headers=user.headers)
        create_down = await client.post("/orders/", json={"items": [ITEM]}, headers=user.headers)
        ready_down = await client.get("/health/ready")
        alive = await client.get("/health")

        assert down.status_code == 503
        assert down.json() == {"detail": "Database unavailable; please retry shortly"}
        assert down.headers["Retry-After"] == "2"
        assert create_down.status_code == 503
        assert ready_down.status_code == 503
        assert ready_down.json()["dependencies"]["database"] == "unavailable"
        assert alive.status_code == 200

        await proxy.start()
        recovered = await client.get(f"/orders/{order['id']}/", headers=user.headers)
        assert recovered.status_code == 200
        assert (await client.get("/health/ready")).status_code == 200


@pytest.mark.parametrize(
    ("rabbitmq_url", "state", "overall"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", "ok", "ok"),
        (f"amqp://guest:guest@127.0.0.1:{free_port()}/", "unavailable", "degraded"),
    ],
)
async def test_ready_reports_rabbitmq_without_depending_on_it(
    sqlite_url: str, rabbitmq_url: str, state: str, overall: str
) -> None:
    app = create_app(make_settings(sqlite_url, rabbitmq_url=rabbitmq_url))
    transport = httpx.ASGITransport(app=app)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        response = await client.get("/health/ready")

    assert response.status_code == 200
    assert response.json()["status"] == overall
    assert response.json()["dependencies"]["rabbitmq"] == state


@pytest.mark.postgres_only
async def test_too_many_connections_is_503(postgres_url: str, engine: AsyncEngine) -> None:
    """PostgreSQL refusing a connection (SQLSTATE 53300) is an outage for the client, not a bug."""
    role = f"oms_limited_{uuid.uuid4().hex[:8]}"
    async with engine.begin() as connection:
        await connection.execute(text(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 0'))
        database = urlsplit(postgres_url).path.lstrip("/")
        await connection.execute(text(f'GRANT ALL ON DATABASE "{database}" TO "{role}"'))
    limited = urlunsplit(urlsplit(postgres_url)._replace(netloc=f"{role}@127.0.0.1:5432"))
    app = create_app(make_settings(limited))
    transport = httpx.ASGITransport(app=app)
    try:
        async with (
            LifespanManager(app),
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        ):
            response = await client.post(
                "/register/", json={"email": unique_email(), "password": PASSWORD}
            )
        assert response.status_code == 503
        assert response.json() == {"detail": "Database unavailable; please retry shortly"}
    finally:
        async with engine.begin() as connection:
            await connection.execute(text(f'DROP OWNED BY "{role}"'))
            await connection.execute(text(f'DROP ROLE "{role}"'))


async def _starting_up_postgres(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """What PostgreSQL answers while it recovers after a crash: FATAL 57P03, then it hangs up."""
    length = int.from_bytes(await reader.readexactly(4), "big")
    body = await reader.readexactly(length - 4)
    if body[:4] == (80877103).to_bytes(4, "big"):  # SSLRequest: "no TLS", then the startup
        writer.write(b"N")
        length = int.from_bytes(await reader.readexactly(4), "big")
        await reader.readexactly(length - 4)
    fields = b"SFATAL\0VFATAL\0C57P03\0Mthe database system is starting up\0\0"
    writer.write(b"E" + (len(fields) + 4).to_bytes(4, "big") + fields)
    await writer.drain()
    writer.close()


async def test_database_starting_up_is_503(postgres_url: str) -> None:
    # Found by the chaos drills: right after a PostgreSQL restart, connections are refused
    # with SQLSTATE 57P03 ("starting up"), which the API answered with 500.
    server = await asyncio.start_server(_starting_up_postgres, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    parts = urlsplit(postgres_url)
    starting = urlunsplit(parts._replace(netloc=f"postgres@127.0.0.1:{port}"))
    app = create_app(make_settings(starting))
    transport = httpx.ASGITransport(app=app)
    async with (
        server,
        LifespanManager(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        register = await client.post(
            "/register/", json={"email": "starting@example.com", "password": "a-long-password"}
        )
        ready = await client.get("/health/ready")

    assert register.status_code == 503
    assert register.json() == {"detail": "Database unavailable; please retry shortly"}
    assert ready.status_code == 503


class _ConnectionLostAtClose(AsyncSession):
    """The database went away after the handler's last query: the closing rollback fails."""

    async def close(self) -> None:
        await super().close()
        raise InterfaceError("ROLLBACK", None, Exception("the underlying connection is closed"))


async def test_connection_lost_after_the_response_is_decided_keeps_the_response(
    database_url: str,
) -> None:
    # Found by the chaos drills: during a PostgreSQL crash, the session's closing rollback
    # raised after the response had started; the client saw a dropped connection.
    app = create_app(make_settings(database_url))
    transport = httpx.ASGITransport(app=app)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        user = await register_and_login(client)
        order = await create_order(client, user)
        app.state.sessionmaker = async_sessionmaker(
            app.state.engine, class_=_ConnectionLostAtClose, expire_on_commit=False
        )
        response = await client.get(f"/orders/{order['id']}/", headers=user.headers)
        listed = await client.get(f"/orders/user/{user.id}/", headers=user.headers)

    assert response.status_code == 200
    assert response.json()["id"] == order["id"]
    assert listed.status_code == 200
