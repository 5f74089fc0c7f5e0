"""Abuse: other users' data, injection-looking input, hostile bodies and headers, leaks."""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator

import httpx
import pytest

from tests.conftest import ITEM, PASSWORD, TEST_SECRET, ApiUser, create_order, unique_email
from tests.support.server import RunningApi, api_environment, running_api

MakeUser = Callable[[], Awaitable[ApiUser]]
INJECTIONS = [
    "'; DROP TABLE orders; --",
    '" OR 1=1 --',
    "Robert'); DELETE FROM users;--",
    "%' UNION SELECT hashed_password FROM users --",
    "$1; SELECT pg_sleep(10)",
]


async def test_another_users_token_reaches_none_of_their_data(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    alice, mallory = await make_user(), await make_user()
    order = await create_order(client, alice)
    await client.get(f"/orders/{order['id']}/", headers=alice.headers)  # now cached too

    attempts = [
        await client.get(f"/orders/{order['id']}/", headers=mallory.headers),
        await client.patch(
            f"/orders/{order['id']}/", json={"status": "CANCELED"}, headers=mallory.headers
        ),
        await client.get(f"/orders/user/{alice.id}/", headers=mallory.headers),
    ]

    for response in attempts:
        assert response.status_code in (403, 404)
        assert order["id"] not in response.text
        assert "SKU-1" not in response.text
    still = await client.get(f"/orders/{order['id']}/", headers=alice.headers)
    assert still.json()["status"] == "PENDING"


@pytest.mark.parametrize("text", INJECTIONS)
async def test_injection_looking_strings_are_stored_literally(
    client: httpx.AsyncClient, text: str
) -> None:
    email = f"o'brien+{uuid.uuid4().hex[:8]}@example.com"
    password = f"{text}-pw"
    registered = await client.post("/register/", json={"email": email, "password": password})
    assert registered.status_code == 201
    assert registered.json()["email"] == email
    login = await client.post("/token/", data={"username": email, "password": password})
    assert login.status_code == 200
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}

    item = {"product_id": text[:64], "name": text, "quantity": 1, "price": 1}
    created = await client.post(
        "/orders/",
        json={"items": [item]},
        headers={**headers, "Idempotency-Key": text.replace(" ", "_")[:255]},
    )
    assert created.status_code == 201
    read = await client.get(created.headers["Location"], headers=headers)
    assert read.json()["items"][0] == {**item, "price": 1.0}


async def test_deeply_nested_json_is_4xx(client: httpx.AsyncClient, user: ApiUser) -> None:
    deep = "[" * 20_000 + "]" * 20_000
    response = await client.post(
        "/orders/",
        content=f'{{"items": {deep}}}'.encode(),
        headers={**user.headers, "Content-Type": "application/json"},
    )
    assert response.status_code in (400, 422)
    assert "detail" in response.json()


@pytest.mark.parametrize(
    "raw",
    [
        b'{"items": [{"product_id": "a", "quantity": 1, "price": 1e400}]}',
        b'{"items": [{"product_id": "a", "quantity": 1, "price": -1e400}]}',
        b'{"items": [{"product_id": "a", "quantity": 1, "price": 1.' + b"1" * 5000 + b"}]}",
        b'{"items": [{"product_id": 1e400, "quantity": 1, "price": 1}]}',
        b'{"items": [{"product_id": "a", "quantity": 1e400, "price": 1}]}',
        b'{"items": [{"product_id": "a", "quantity": 1, "price": 1}], "total_price": 1e400}',
    ],
)
async def test_huge_numbers_are_422(client: httpx.AsyncClient, user: ApiUser, raw: bytes) -> None:
    response = await client.post(
        "/orders/", content=raw, headers={**user.headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 422


async def test_integer_too_long_to_parse_is_400(client: httpx.AsyncClient, user: ApiUser) -> None:
    raw = b'{"items": [{"product_id": "a", "quantity": 1' + b"0" * 5000 + b', "price": 1}]}'
    response = await client.post(
        "/orders/", content=raw, headers={**user.headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json() == {"detail": "There was an error parsing the body"}


async def test_non_utf8_body_is_4xx(client: httpx.AsyncClient, user: ApiUser) -> None:
    body = b'{"items": [{"product_id": "\xff\xfe", "quantity": 1, "price": 1}]}'
    response = await client.post(
        "/orders/", content=body, headers={**user.headers, "Content-Type": "application/json"}
    )
    assert 400 <= response.status_code < 500


async def test_non_utf8_form_is_4xx(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/token/",
        content=b"username=%ff%fe&password=\xff\xfe",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert 400 <= response.status_code < 500


async def test_nul_characters_are_422(client: httpx.AsyncClient, user: ApiUser) -> None:
    order = await client.post(
        "/orders/", json={"items": [{**ITEM, "name": "a\x00b"}]}, headers=user.headers
    )
    login = await client.post("/token/", data={"username": "a\x00@x.com", "password": "p"})
    assert order.status_code == login.status_code == 422


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/xml", "multipart/form-data; boundary=x", "application/json-patch"],
)
async def test_wrong_content_types_are_4xx(
    client: httpx.AsyncClient, user: ApiUser, content_type: str
) -> None:
    response = await client.post(
        "/orders/",
        content=json.dumps({"items": [ITEM]}).encode(),
        headers={**user.headers, "Content-Type": content_type},
    )
    assert 400 <= response.status_code < 500


@pytest.mark.parametrize(
    "request_id", [b"abc\r\nX-Injected: 1", b"x" * 10_000, b'{"json": true}', b"\xff\xfe"]
)
async def test_hostile_request_id_is_replaced(client: httpx.AsyncClient, request_id: bytes) -> None:
    response = await client.get("/health", headers={"X-Request-ID": request_id})
    assert response.status_code == 200
    echoed = response.headers["X-Request-ID"]
    assert len(echoed) == 32
    assert echoed.isalnum()
    assert "X-Injected" not in response.headers


@pytest.fixture(scope="module")
def api(postgres_url: str) -> Iterator[RunningApi]:
    env = api_environment(postgres_url)
    with running_api(env) as running:
        yield running


def test_login_timing_does_not_reveal_which_emails_exist(api: RunningApi) -> None:
    email = unique_email()
    httpx.post(f"{api.url}/register/", json={"email": email, "password": PASSWORD}, timeout=10)
    known: list[float] = []
    unknown: list[float] = []
    with httpx.Client(base_url=api.url, timeout=10) as http:
        for attempt in range(50):
            for username, timings in ((email, known), (unique_email(), unknown)):
                started = time.perf_counter()
                response = http.post(
                    "/token/", data={"username": username, "password": f"wrong-{attempt}"}
                )
                timings.append(time.perf_counter() - started)
                assert response.status_code == 401
    ratio = statistics.median(known) / statistics.median(unknown)
    assert 0.9 <= ratio <= 1.1, f"known/unknown median login time ratio {ratio:.2f}"


def test_no_secret_or_password_in_logs_or_responses(api: RunningApi) -> None:
    email = unique_email()
    password = f"Secret-Password-{uuid.uuid4().hex}"
    with httpx.Client(base_url=api.url, timeout=10) as http:
        bodies = [
            http.post("/register/", json={"email": email, "password": password}).text,
            http.post("/register/", json={"email": email, "password": password}).text,
            http.post("/token/", data={"username": email, "password": "wrong password"}).text,
            http.post("/token/", data={"username": email, "password": password}).text,
            http.post("/register/", json={"email": "bad", "password": password}).text,
        ]
    time.sleep(0.5)  # let the server flush its log lines
    log = api.log()
    assert log.strip(), "the API wrote no log at all"
    for text in [*bodies, log]:
        assert password not in text
        assert TEST_SECRET not in text
        assert "$argon2id$" not in text
