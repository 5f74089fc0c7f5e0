from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from oms.auth.models import User
from oms.auth.tokens import TokenVerifier, create_access_token
from oms.config import Settings
from oms.exceptions import AuthenticationError
from oms.main import create_app
from oms.orders.models import Order
from tests.conftest import (
    ITEM,
    PASSWORD,
    ApiUser,
    create_order,
    register_and_login,
    unique_email,
)

PROTECTED = "/orders/user/{id}/"
RECHECK_SECONDS = 0.5


async def test_login_returns_a_bearer_token(client: httpx.AsyncClient, user: ApiUser) -> None:
    response = await client.post("/token/", data={"username": user.email, "password": PASSWORD})

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 30 * 60


async def test_token_claims(client: httpx.AsyncClient, user: ApiUser, settings: Settings) -> None:
    claims = jwt.decode(
        user.token,
        settings.secret_key.get_secret_value(),
        algorithms=["HS256"],
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
    )
    assert claims["sub"] == str(user.id)
    assert claims["exp"] - claims["iat"] == 30 * 60


async def test_login_is_case_insensitive_on_email(client: httpx.AsyncClient, user: ApiUser) -> None:
    response = await client.post(
        "/token", data={"username": user.email.upper(), "password": PASSWORD}
    )
    assert response.status_code == 200


async def test_wrong_password_and_unknown_email_look_the_same(
    client: httpx.AsyncClient, user: ApiUser
) -> None:
    wrong = await client.post("/token/", data={"username": user.email, "password": "wrong pass"})
    unknown = await client.post("/token/", data={"username": unique_email(), "password": PASSWORD})

    for response in (wrong, unknown):
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert wrong.json() == unknown.json() == {"detail": "Incorrect email or password"}


async def test_missing_form_fields_are_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/token/", data={"username": "a@example.com"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "password"]


async def test_no_token_is_401(client: httpx.AsyncClient, user: ApiUser) -> None:
    response = await client.get(PROTECTED.format(id=user.id))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json() == {"detail": "Not authenticated"}


def _token(settings: Settings, **claims: object) -> str:
    now = datetime.now(UTC)
    payload = {
        "sub": "1",
        "iat": now,
        "exp": now + timedelta(minutes=5),
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        **claims,
    }
    return jwt.encode(payload, settings.secret_key.get_secret_value(), algorithm="HS256")


async def test_bad_tokens_are_401(
    client: httpx.AsyncClient, user: ApiUser, settings: Settings
) -> None:
    past = datetime.now(UTC) - timedelta(hours=1)
    header, payload, _signature = user.token.split(".")
    unsigned = jwt.encode({"sub": str(user.id)}, key=None, algorithm="none")
    bad_tokens = {
        "expired": _token(settings, sub=str(user.id), iat=past, exp=past + timedelta(minutes=1)),
        "tampered": f"{header}.{payload}.{'A' * 43}",
        "alg none": unsigned,
        "wrong audience": _token(settings, sub=str(user.id), aud="someone-else"),
        "wrong issuer": _token(settings, sub=str(user.id), iss="someone-else"),
        "other secret": jwt.encode({"sub": str(user.id)}, "x" * 40, algorithm="HS256"),
        "non-numeric subject": _token(settings, sub="alice"),
        "malformed": "not-a-jwt",
        "truncated": user.token[:-5],
    }
    for name, token in bad_tokens.items():
        response = await client.get(
            PROTECTED.format(id=user.id), headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 401, name
        assert response.json() == {"detail": "Invalid or expired token"}, name
        assert response.headers["WWW-Authenticate"] == "Bearer", name


async def test_token_of_deleted_user_is_401(
    client: httpx.AsyncClient, user: ApiUser, engine: AsyncEngine
) -> None:
    assert (await client.get(PROTECTED.format(id=user.id), headers=user.headers)).status_code == 200
    async with engine.begin() as connection:
        await connection.execute(delete(User).where(User.id == user.id))

    response = await client.get(PROTECTED.format(id=user.id), headers=user.headers)
    assert response.status_code == 401


@pytest.fixture
async def rechecking_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app that remembers a user exists for only RECHECK_SECONDS (SPEC 2.4)."""
    app = create_app(settings.model_copy(update={"user_recheck_seconds": RECHECK_SECONDS}))
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http


async def test_token_of_deleted_user_is_401_on_every_order_route(
    rechecking_client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Whatever the route would otherwise answer: a cached copy of the user's own order, another
    user's order (403), a missing one (404), or a new order; a cached read at the latest once
    USER_RECHECK_SECONDS have passed since the process last saw the user."""
    client = rechecking_client
    user, other = await register_and_login(client), await register_and_login(client)
    own = (await create_order(client, user))["id"]
    others = (await create_order(client, other))["id"]
    for reader, order_id in ((user, own), (other, others)):  # both now in the cache
        response = await client.get(f"/orders/{order_id}/", headers=reader.headers)
        assert response.status_code == 200
    async with engine.begin() as connection:
        await connection.execute(delete(User).where(User.id == user.id))
    await asyncio.sleep(RECHECK_SECONDS)  # what the process remembers about the user expires

    paid = {"status": "PAID"}
    requests = {
        "read own (cached)": ("GET", f"/orders/{own}/", None),
        "read another's": ("GET", f"/orders/{others}/", None),
        "read missing": ("GET", f"/orders/{uuid.uuid4()}/", None),
        "create": ("POST", "/orders/", {"items": [ITEM]}),
        "change own": ("PATCH", f"/orders/{own}/", paid),
        "change another's": ("PATCH", f"/orders/{others}/", paid),
        "list": ("GET", PROTECTED.format(id=user.id), None),
    }
    for name, (method, url, body) in requests.items():
        response = await client.request(method, url, json=body, headers=user.headers)
        assert response.status_code == 401, name
        assert response.json() == {"detail": "Invalid or expired token"}, name
    async with engine.connect() as connection:
        count = select(func.count()).select_from(Order).where(Order.user_id == user.id)
        assert await connection.scalar(count) == 0


async def test_cached_read_needs_no_database_while_the_user_is_remembered(
    client: httpx.AsyncClient, user: ApiUser, engine: AsyncEngine
) -> None:
    """Within USER_RECHECK_SECONDS (60 here) a cache hit is served without asking PostgreSQL
    whether the user still exists: the read of a deleted user's cached order still answers."""
    order = await create_order(client, user)
    first = await client.get(f"/orders/{order['id']}/", headers=user.headers)
    async with engine.begin() as connection:
        await connection.execute(delete(User).where(User.id == user.id))

    again = await client.get(f"/orders/{order['id']}/", headers=user.headers)

    assert again.status_code == 200
    assert again.content == first.content


async def test_hash_with_other_parameters_verifies_and_is_upgraded(
    client: httpx.AsyncClient, user: ApiUser, engine: AsyncEngine
) -> None:
    from pwdlib.hashers.argon2 import Argon2Hasher

    legacy = Argon2Hasher(memory_cost=8192, time_cost=1, parallelism=2).hash(PASSWORD)
    async with engine.begin() as connection:
        await connection.execute(
            update(User).where(User.id == user.id).values(hashed_password=legacy)
        )

    response = await client.post("/token/", data={"username": user.email, "password": PASSWORD})

    assert response.status_code == 200
    async with engine.connect() as connection:
        stored = await connection.scalar(select(User.hashed_password).where(User.id == user.id))
    assert stored is not None
    assert stored != legacy
    assert "m=19456,t=2,p=1" in stored


def test_an_accepted_token_is_refused_once_it_expires(settings: Settings) -> None:
    verifier = TokenVerifier(settings)
    token = _token(settings, sub="7", exp=datetime.now(UTC) + timedelta(seconds=1))
    assert verifier.user_id(token) == 7
    assert verifier.user_id(token) == 7  # remembered

    time.sleep(2)  # past `exp`, whose resolution is a second
    with pytest.raises(AuthenticationError):
        verifier.user_id(token)


def test_the_verifier_remembers_a_bounded_number_of_tokens(settings: Settings) -> None:
    verifier = TokenVerifier(settings, max_remembered=2)
    tokens = [create_access_token(user_id, settings)[0] for user_id in (1, 2, 3)]
    assert [verifier.user_id(token) for token in tokens] == [1, 2, 3]
    assert len(verifier._accepted) == 2
    assert verifier.user_id(tokens[0]) == 1
    with pytest.raises(AuthenticationError):
        verifier.user_id(tokens[0][:-2])
