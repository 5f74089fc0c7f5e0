from __future__ import annotations

import asyncio
from datetime import datetime

import httpx
import pytest

from tests.conftest import PASSWORD, unique_email


async def test_register_returns_the_new_user(client: httpx.AsyncClient) -> None:
    email = unique_email()
    response = await client.post("/register/", json={"email": email, "password": PASSWORD})

    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id", "email", "created_at"}
    assert body["email"] == email
    assert isinstance(body["id"], int)
    assert datetime.fromisoformat(body["created_at"]).tzinfo is not None


async def test_email_is_stored_lower_case(client: httpx.AsyncClient) -> None:
    email = unique_email()
    response = await client.post("/register/", json={"email": email.upper(), "password": PASSWORD})
    assert response.status_code == 201
    assert response.json()["email"] == email


async def test_path_without_trailing_slash_is_served(client: httpx.AsyncClient) -> None:
    response = await client.post("/register", json={"email": unique_email(), "password": PASSWORD})
    assert response.status_code == 201


async def test_taken_email_is_409_case_insensitively(client: httpx.AsyncClient) -> None:
    email = unique_email()
    first = await client.post("/register/", json={"email": email, "password": PASSWORD})
    again = await client.post("/register/", json={"email": email.upper(), "password": PASSWORD})

    assert first.status_code == 201
    assert again.status_code == 409
    assert again.json() == {"detail": "A user with this email already exists"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not-an-email", "password": PASSWORD}, "email"),
        ({"email": "a@example.com", "password": "short12"}, "password"),
        ({"email": "a@example.com", "password": "x" * 129}, "password"),
        ({"email": "a@example.com"}, "password"),
        ({"password": PASSWORD}, "email"),
        ({"email": "a@example.com", "password": PASSWORD, "admin": True}, "admin"),
    ],
)
async def test_invalid_registration_is_422(
    client: httpx.AsyncClient, body: dict[str, object], field: str
) -> None:
    response = await client.post("/register/", json=body)

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-1] == field


async def test_password_of_128_characters_is_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/register/", json={"email": unique_email(), "password": "p" * 128}
    )
    assert response.status_code == 201


async def test_simultaneous_registrations_of_one_email_give_201_and_409(
    client: httpx.AsyncClient,
) -> None:
    email = unique_email()
    responses = await asyncio.gather(
        *(client.post("/register/", json={"email": email, "password": PASSWORD}) for _ in range(2))
    )
    assert sorted(r.status_code for r in responses) == [201, 409]
