"""CORS (SPEC 2.4): listed origins only; localhost by default in `local`."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from oms.config import Settings
from oms.cors import cors_options
from oms.middleware import RequestMiddleware
from tests.conftest import make_settings
from tests.support.apps import app_client
from tests.test_config import _oms

SHOP = "https://shop.example"


def preflight(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,idempotency-key",
    }


async def cors_answers(settings: Settings, origin: str) -> tuple[httpx.Response, httpx.Response]:
    """The preflight of a POST /orders/ and a simple GET, both from `origin`."""
    async with app_client(settings) as client:
        options = await client.options("/orders/", headers=preflight(origin))
        simple = await client.get("/health", headers={"Origin": origin})
    return options, simple


def settings_with(sqlite_url: str, **values: Any) -> Settings:
    return make_settings(sqlite_url, **values)


async def test_a_listed_origin_may_call_and_read_the_exposed_headers(sqlite_url: str) -> None:
    options, simple = await cors_answers(settings_with(sqlite_url, cors_origins=[SHOP]), SHOP)

    assert options.status_code == 200
    assert options.headers["Access-Control-Allow-Origin"] == SHOP
    assert "POST" in options.headers["Access-Control-Allow-Methods"]
    assert "idempotency-key" in options.headers["Access-Control-Allow-Headers"].lower()
    assert "Access-Control-Allow-Credentials" not in options.headers
    assert simple.headers["Access-Control-Allow-Origin"] == SHOP
    exposed = simple.headers["Access-Control-Expose-Headers"].lower()
    for header in ("ratelimit-remaining", "retry-after", "location", "x-request-id"):
        assert header in exposed


async def test_an_unlisted_origin_is_refused(sqlite_url: str) -> None:
    options, simple = await cors_answers(
        settings_with(sqlite_url, cors_origins=[SHOP]), "https://evil.example"
    )

    assert options.status_code == 400
    assert "Access-Control-Allow-Origin" not in options.headers
    assert "Access-Control-Allow-Origin" not in simple.headers


@pytest.mark.parametrize("origin", ["http://localhost:5173", "http://127.0.0.1:3000"])
async def test_local_mode_allows_localhost_by_default(sqlite_url: str, origin: str) -> None:
    options, _simple = await cors_answers(settings_with(sqlite_url, app_env="local"), origin)
    assert options.status_code == 200
    assert options.headers["Access-Control-Allow-Origin"] == origin


@pytest.mark.parametrize(
    ("app_env", "origin"),
    [
        ("local", "https://localhost.evil.example"),
        ("local", SHOP),
        ("production", "http://localhost:5173"),
    ],
)
async def test_nothing_else_is_cross_origin_by_default(
    sqlite_url: str, app_env: str, origin: str
) -> None:
    options, simple = await cors_answers(settings_with(sqlite_url, app_env=app_env), origin)
    assert options.status_code == 400
    assert "Access-Control-Allow-Origin" not in simple.headers


async def test_credentials_are_allowed_for_listed_origins(sqlite_url: str) -> None:
    settings = settings_with(sqlite_url, cors_origins=[SHOP], cors_allow_credentials=True)
    options, _simple = await cors_answers(settings, SHOP)
    assert options.headers["Access-Control-Allow-Credentials"] == "true"


def test_a_wildcard_with_credentials_is_refused() -> None:
    with pytest.raises(ValidationError, match="CORS_ORIGINS"):
        make_settings("sqlite:///x.db", cors_origins=["*"], cors_allow_credentials=True)
    assert make_settings("sqlite:///x.db", cors_origins=["*"]).cors_origins == ["*"]


def test_the_command_refuses_to_start_with_a_wildcard_and_credentials() -> None:
    result = _oms("migrate", CORS_ORIGINS="*", CORS_ALLOW_CREDENTIALS="true")
    assert result.returncode == 2
    assert "CORS_ORIGINS" in result.stderr


async def test_every_answer_varies_by_origin_and_a_refused_body_is_readable_cross_origin(
    sqlite_url: str,
) -> None:
    """`Vary: Origin` on every response (a shared cache must not hand a same-origin answer to a
    cross-origin caller), and a listed origin can read the 413 of an oversized body."""
    settings = settings_with(sqlite_url, cors_origins=[SHOP], max_body_bytes=1024)
    big = b"{" + b" " * 2048 + b"}"
    async with app_client(settings) as client:
        plain = await client.get("/health")
        unknown = await client.get("/orders/00000000-0000-0000-0000-000000000000/")
        too_large = await client.post("/orders/", content=big, headers={"Origin": SHOP})
        too_large_same_origin = await client.post("/orders/", content=big)

    for response in (plain, unknown, too_large, too_large_same_origin):
        assert response.headers.get_list("Vary") == ["Origin"]
    assert "Access-Control-Allow-Origin" not in plain.headers
    assert too_large.status_code == too_large_same_origin.status_code == 413
    assert too_large.headers["Access-Control-Allow-Origin"] == SHOP
    assert too_large.json() == too_large_same_origin.json()


async def test_an_answer_that_already_varies_gets_origin_in_the_same_header(
    sqlite_url: str,
) -> None:
    """A route's own `Vary` is kept and `Origin` joins it in one header, with or without an
    Origin header on the request (as Starlette's CORS layer merges it)."""

    async def varying_app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"application/json"), (b"vary", b"Accept-Encoding")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})

    settings = settings_with(sqlite_url, cors_origins=[SHOP])
    app = RequestMiddleware(varying_app, max_body_bytes=1024, cors=cors_options(settings))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        plain = await client.get("/")
        cross = await client.get("/", headers={"Origin": SHOP})

    for response in (plain, cross):
        assert response.headers.get_list("Vary") == ["Accept-Encoding, Origin"]
    assert cross.headers["Access-Control-Allow-Origin"] == SHOP
