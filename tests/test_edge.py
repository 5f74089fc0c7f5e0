"""Hostile input at the edge: whatever a client sends, with or without a token, the answer is a
JSON 4xx (or a 503 to retry), never a 5xx nor a plain-text error."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta

import httpx
import jwt
import pytest
from fastapi import FastAPI
from sqlalchemy.exc import (
    DataError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
    StatementError,
)

from oms.config import Settings
from oms.db import utcnow
from oms.errors import register_error_handlers
from tests.conftest import ITEM, ApiUser, create_order

SURROGATE = "\\ud800"  # as it appears in the JSON text: a lone UTF-16 surrogate


def assert_json_client_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = json.loads(response.content.decode("utf-8"))  # valid UTF-8, valid JSON
    assert "detail" in body


async def post_raw(
    client: httpx.AsyncClient, path: str, body: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await client.post(
        path,
        content=body.encode("ascii"),
        headers={"Content-Type": "application/json", **(headers or {})},
    )


async def test_a_lone_surrogate_in_an_email_gets_a_json_422(client: httpx.AsyncClient) -> None:
    body = f'{{"email": "{SURROGATE}x@example.com", "password": "password123"}}'
    response = await post_raw(client, "/register/", body)
    assert_json_client_error(response, 422)
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "email"]
    assert error["input"] == "\ufffdx@example.com"  # echoed, the surrogate replaced


@pytest.mark.parametrize("authorised", [True, False], ids=["token", "no-token"])
async def test_a_lone_surrogate_in_an_item_gets_a_json_4xx(
    client: httpx.AsyncClient, user: ApiUser, authorised: bool
) -> None:
    item = f'{{"product_id": "SKU-1", "name": "{SURROGATE}", "quantity": 1, "price": 1}}'
    response = await post_raw(
        client, "/orders/", f'{{"items": [{item}]}}', user.headers if authorised else None
    )
    assert_json_client_error(response, 422 if authorised else 401)


async def test_a_lone_surrogate_in_a_status_gets_a_json_422(
    client: httpx.AsyncClient, user: ApiUser
) -> None:
    order = await create_order(client, user)
    response = await client.patch(
        f"/orders/{order['id']}/",
        content=f'{{"status": "PAID{SURROGATE}"}}'.encode("ascii"),
        headers={"Content-Type": "application/json", **user.headers},
    )
    assert_json_client_error(response, 422)


async def test_surrogates_anywhere_in_a_body_never_break_the_answer(
    client: httpx.AsyncClient, user: ApiUser
) -> None:
    bodies = [
        f'{{"{SURROGATE}": 1}}',  # an unknown field named by a surrogate
        f'{{"items": [{{"{SURROGATE}": "{SURROGATE}", "quantity": 1, "price": 1}}]}}',
        f'{{"items": "{SURROGATE}\\udfff"}}',
        f'{{"items": [{{"name": "x", "quantity": 1, "price": "{SURROGATE}"}}]}}',
    ]
    for body in bodies:
        assert_json_client_error(await post_raw(client, "/orders/", body, user.headers), 422)


def signed_token(settings: Settings, subject: object) -> str:
    """A token this service would accept, but for its subject."""
    now = utcnow()
    claims = {
        "sub": subject,
        "iat": now,
        "exp": now + timedelta(minutes=5),
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
    }
    return jwt.encode(claims, settings.secret_key.get_secret_value(), settings.jwt_algorithm)


OUT_OF_RANGE_SUBJECTS = ["2147483648", "1" * 23, "-1", "0", "007", " 7", "+7", "1_0", "1.0", ""]


@pytest.mark.parametrize("subject", OUT_OF_RANGE_SUBJECTS)
async def test_a_signed_token_for_an_impossible_user_id_gets_401(
    client: httpx.AsyncClient, settings: Settings, user: ApiUser, subject: str
) -> None:
    order = await create_order(client, user)
    headers = {"Authorization": f"Bearer {signed_token(settings, subject)}"}
    answers = [
        await client.post("/orders/", json={"items": [ITEM]}, headers=headers),
        await client.get(f"/orders/{order['id']}/", headers=headers),
        await client.patch(f"/orders/{order['id']}/", json={"status": "PAID"}, headers=headers),
        await client.get("/orders/user/2147483648/", headers=headers),
        await client.get(f"/orders/user/{user.id}/", headers=headers),
    ]
    for response in answers:
        assert_json_client_error(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"


async def test_the_largest_user_id_is_still_a_valid_subject(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """2147483647 fits the column: the token is valid, the user simply does not exist."""
    headers = {"Authorization": f"Bearer {signed_token(settings, '2147483647')}"}
    response = await client.get("/orders/user/2147483647/", headers=headers)
    assert_json_client_error(response, 401)
    response = await client.post("/orders/", json={"items": [ITEM]}, headers=headers)
    assert_json_client_error(response, 401)


@pytest.mark.parametrize("slash", ["/", ""], ids=["slash", "no-slash"])
@pytest.mark.parametrize("method", ["DELETE", "PUT", "POST"])
async def test_405_on_an_order_lists_every_method_it_supports(
    client: httpx.AsyncClient, user: ApiUser, method: str, slash: str
) -> None:
    order = await create_order(client, user)
    response = await client.request(method, f"/orders/{order['id']}{slash}", headers=user.headers)
    assert_json_client_error(response, 405)
    assert response.headers["allow"] == "GET, PATCH"


async def test_the_collection_answers_with_and_without_the_slash(
    client: httpx.AsyncClient, user: ApiUser
) -> None:
    for path in ("/orders/", "/orders"):
        response = await client.delete(path)
        assert_json_client_error(response, 405)
        assert response.headers["allow"] == "POST"
        created = await client.post(path, json={"items": [ITEM]}, headers=user.headers)
        assert created.status_code == 201, created.text


async def test_an_unknown_path_is_a_json_404(client: httpx.AsyncClient) -> None:
    assert_json_client_error(await client.get(f"/nowhere/{SURROGATE}"), 404)


def _raises(error: Exception) -> Callable[[], None]:
    def endpoint() -> None:
        raise error

    return endpoint


def _statement(orig: BaseException) -> StatementError:
    return StatementError("statement", "SELECT 1", {}, orig)  # type: ignore[arg-type]


class _Driver(Exception):
    def __init__(self, sqlstate: str = "") -> None:
        super().__init__("driver error")
        self.sqlstate = sqlstate


class _DriverValueError(ValueError):
    """asyncpg's client-side DataError ("invalid input for query argument") is a ValueError."""


DATABASE_ERRORS = {
    "overflow-encoding-a-parameter": (_statement(OverflowError("int too big")), 422),
    "value-out-of-range": (DataError("s", {}, _Driver("22003")), 422),
    "driver-refused-a-parameter": (InterfaceError("s", {}, _DriverValueError("int32")), 422),
    "constraint": (IntegrityError("s", {}, _Driver("23505")), 409),
    "connection-lost": (OperationalError("s", {}, _Driver("08006")), 503),
    "statement-timeout": (OperationalError("s", {}, _Driver("57014")), 503),
    "bug-in-a-query": (ProgrammingError("s", {}, _Driver("42601")), 500),
    "not-a-database-error": (RuntimeError("a bug"), 500),
}


@pytest.mark.parametrize(
    ("error", "status"), list(DATABASE_ERRORS.values()), ids=list(DATABASE_ERRORS)
)
async def test_every_database_layer_error_is_mapped_to_json(error: Exception, status: int) -> None:
    """The one mapping of errors, through HTTP: a value the database refuses is the client's
    422, a conflict 409, an outage 503 with Retry-After; even a bug answers JSON."""
    app = FastAPI()
    register_error_handlers(app)
    app.add_api_route("/boom", _raises(error))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/boom")
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) == {"detail"}
    assert "SELECT" not in response.text
    assert "driver" not in response.text
    if status == 503:
        assert response.headers["retry-after"]
