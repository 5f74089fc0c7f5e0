from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from oms.events.models import OutboxEvent
from oms.orders.models import IdempotencyKey, Order
from tests.conftest import ITEM, ApiUser, create_order


def item(**changes: Any) -> dict[str, Any]:
    return {**ITEM, **changes}


async def test_create_returns_the_order_with_server_total(
    client: httpx.AsyncClient, user: ApiUser
) -> None:
    items = [item(quantity=3, price="10.10"), item(product_id=42, name=None, price=0.01)]
    response = await client.post("/orders/", json={"items": items}, headers=user.headers)

    assert response.status_code == 201
    order = response.json()
    assert set(order) == {
        "id", "user_id", "items", "total_price", "status",
        "created_at", "updated_at", "processed_at",
    }  # fmt: skip
    assert uuid.UUID(order["id"])
    assert response.headers["Location"] == f"/orders/{order['id']}/"
    assert order["user_id"] == user.id
    assert order["total_price"] == 30.32
    assert order["status"] == "PENDING"
    assert order["processed_at"] is None
    assert order["created_at"] == order["updated_at"]
    assert order["items"] == [
        {"product_id": "SKU-1", "name": "Widget", "quantity": 3, "price": 10.1},
        {"product_id": "42", "name": None, "quantity": 2, "price": 0.01},
    ]


async def test_matching_total_price_is_accepted(client: httpx.AsyncClient, user: ApiUser) -> None:
    body = {"items": [item(quantity=3, price=1.1)], "total_price": 3.30}
    response = await client.post("/orders/", json=body, headers=user.headers)
    assert response.status_code == 201
    assert response.json()["total_price"] == 3.3


async def test_mismatching_total_price_is_422(client: httpx.AsyncClient, user: ApiUser) -> None:
    body = {"items": [item(quantity=3, price=1.1)], "total_price": 3.31}
    response = await client.post("/orders/", json=body, headers=user.headers)

    assert response.status_code == 422
    assert "does not match the sum of the items 3.30" in response.json()["detail"][0]["msg"]


async def test_total_above_numeric_10_2_is_422(client: httpx.AsyncClient, user: ApiUser) -> None:
    body = {"items": [item(quantity=10_000, price="99999.99")]}
    response = await client.post("/orders/", json=body, headers=user.headers)

    assert response.status_code == 422
    assert "exceeds the maximum of 99999999.99" in response.json()["detail"][0]["msg"]


async def test_largest_total_is_accepted(client: httpx.AsyncClient, user: ApiUser) -> None:
    body = {"items": [item(quantity=1, price="99999999.99")]}
    response = await client.post("/orders/", json=body, headers=user.headers)
    assert response.status_code == 201
    assert response.json()["total_price"] == 99999999.99


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"items": []}, "too_short"),
        ({"items": [ITEM] * 101}, "too_long"),
        ({}, "missing"),
        ({"items": "SKU-1"}, "list_type"),
        ({"items": [ITEM], "discount": 5}, "extra_forbidden"),
        ({"items": [item(colour="red")]}, "extra_forbidden"),
        ({"items": [item(product_id=None, name=None)]}, "value_error"),
        ({"items": [item(product_id="")]}, "string_too_short"),
        ({"items": [item(product_id="x" * 65)]}, "string_too_long"),
        ({"items": [item(name="x" * 201)]}, "string_too_long"),
        ({"items": [item(product_id=True)]}, "string_type"),
        ({"items": [item(quantity=0)]}, "greater_than_equal"),
        ({"items": [item(quantity=10_001)]}, "less_than_equal"),
        ({"items": [item(quantity=1.5)]}, "int_type"),
        ({"items": [item(quantity="2")]}, "int_type"),
        ({"items": [item(price=0)]}, "greater_than"),
        ({"items": [item(price=-1)]}, "greater_than"),
        ({"items": [item(price="1.001")]}, "decimal_max_places"),
        ({"items": [item(price="NaN")]}, "finite_number"),
        ({"items": [item(price="1e20")]}, "decimal_max_digits"),
        ({"items": [item(price="ten")]}, "decimal_parsing"),
        ({"items": [ITEM], "total_price": -1}, "greater_than_equal"),
    ],
)
async def test_invalid_orders_are_422(
    client: httpx.AsyncClient, user: ApiUser, body: dict[str, Any], reason: str
) -> None:
    response = await client.post("/orders/", json=body, headers=user.headers)

    assert response.status_code == 422
    assert reason in {error["type"] for error in response.json()["detail"]}


async def test_limits_of_items_are_accepted(client: httpx.AsyncClient, user: ApiUser) -> None:
    items = [item(product_id="x" * 64, name="n" * 200, quantity=10_000, price=0.01)] * 100
    response = await client.post("/orders/", json={"items": items}, headers=user.headers)
    assert response.status_code == 201
    assert response.json()["total_price"] == 10_000.0


async def test_create_requires_a_token(client: httpx.AsyncClient) -> None:
    response = await client.post("/orders/", json={"items": [ITEM]})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_body_over_64_kib_is_413(client: httpx.AsyncClient, user: ApiUser) -> None:
    padding = "x" * (64 * 1024)
    response = await client.post(
        "/orders/", json={"items": [item(name=padding)]}, headers=user.headers
    )
    assert response.status_code == 413
    assert response.json() == {"detail": "Request body exceeds 65536 bytes"}


async def test_streamed_body_over_64_kib_is_413(client: httpx.AsyncClient, user: ApiUser) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(80):
            yield b"x" * 1024

    response = await client.post(
        "/orders/",
        content=chunks(),
        headers={**user.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 413


async def test_order_and_its_event_are_committed_together(
    client: httpx.AsyncClient, user: ApiUser, engine: AsyncEngine
) -> None:
    order = await create_order(client, user)

    async with engine.connect() as connection:
        events = (
            await connection.execute(
                select(OutboxEvent.event_type, OutboxEvent.payload, OutboxEvent.published_at).where(
                    OutboxEvent.payload["order_id"].as_string() == order["id"]
                )
            )
        ).all()
    assert len(events) == 1
    event_type, payload, published_at = events[0]
    assert event_type == "new_order"
    assert published_at is None
    assert set(payload) == {
        "event_id", "event_type", "occurred_at", "order_id", "user_id", "total_price", "items",
    }  # fmt: skip
    assert payload["event_type"] == "new_order"
    assert payload["user_id"] == user.id
    assert payload["total_price"] == order["total_price"]
    assert payload["items"] == order["items"]


async def _outbox_count(engine: AsyncEngine, order_id: str) -> int:
    async with engine.connect() as connection:
        count = await connection.scalar(
            select(func.count())
            .select_from(OutboxEvent)
            .where(OutboxEvent.payload["order_id"].as_string() == order_id)
        )
    return int(count or 0)


class TestIdempotencyKey:
    async def test_repeat_returns_the_same_order_without_a_second_event(
        self, client: httpx.AsyncClient, user: ApiUser, engine: AsyncEngine
    ) -> None:
        headers = {**user.headers, "Idempotency-Key": f"key-{uuid.uuid4()}"}
        first = await client.post("/orders/", json={"items": [ITEM]}, headers=headers)
        again = await client.post(
            "/orders/", json={"items": [ITEM], "total_price": 19.98}, headers=headers
        )

        assert first.status_code == again.status_code == 201
        assert "Idempotent-Replayed" not in first.headers
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.json() == first.json()
        assert again.headers["Location"] == first.headers["Location"]
        assert await _outbox_count(engine, first.json()["id"]) == 1

    async def test_same_key_with_another_body_is_422(
        self, client: httpx.AsyncClient, user: ApiUser
    ) -> None:
        headers = {**user.headers, "Idempotency-Key": "reused"}
        first = await client.post("/orders/", json={"items": [ITEM]}, headers=headers)
        other = await client.post("/orders/", json={"items": [item(quantity=5)]}, headers=headers)
        assert first.status_code == 201
        assert other.status_code == 422
        assert other.json() == {
            "detail": "This Idempotency-Key was already used with a different body"
        }

    async def test_keys_belong_to_one_user(self, client: httpx.AsyncClient, make_user: Any) -> None:
        alice, bob = await make_user(), await make_user()
        key = {"Idempotency-Key": "shared-key"}
        a = await client.post("/orders/", json={"items": [ITEM]}, headers={**alice.headers, **key})
        b = await client.post("/orders/", json={"items": [ITEM]}, headers={**bob.headers, **key})
        assert a.status_code == b.status_code == 201
        assert a.json()["id"] != b.json()["id"]
        assert "Idempotent-Replayed" not in b.headers

    async def test_key_older_than_24_hours_creates_a_new_order(
        self, client: httpx.AsyncClient, user: ApiUser, engine: AsyncEngine
    ) -> None:
        headers = {**user.headers, "Idempotency-Key": "old-key"}
        first = await client.post("/orders/", json={"items": [ITEM]}, headers=headers)
        async with engine.begin() as connection:
            await connection.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.user_id == user.id)
                .values(
                    created_at=datetime.fromisoformat(first.json()["created_at"])
                    - timedelta(hours=25)
                )
            )
        second = await client.post("/orders/", json={"items": [ITEM]}, headers=headers)

        assert second.status_code == 201
        assert "Idempotent-Replayed" not in second.headers
        assert second.json()["id"] != first.json()["id"]

    @pytest.mark.parametrize("key", [b"", b"x" * 256, b"has space", b"tab\tkey", "ключ".encode()])
    async def test_malformed_key_is_422(
        self, client: httpx.AsyncClient, user: ApiUser, key: bytes
    ) -> None:
        response = await client.post(
            "/orders/",
            json={"items": [ITEM]},
            headers={**user.headers, "Idempotency-Key": key},
        )
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]

    async def test_simultaneous_requests_with_one_key_create_one_order(
        self, client: httpx.AsyncClient, user: ApiUser, engine: AsyncEngine
    ) -> None:
        headers = {**user.headers, "Idempotency-Key": f"race-{uuid.uuid4()}"}
        responses = await asyncio.gather(
            *(client.post("/orders/", json={"items": [ITEM]}, headers=headers) for _ in range(4))
        )

        assert {r.status_code for r in responses} <= {201, 409}
        created = {r.json()["id"] for r in responses if r.status_code == 201}
        assert len(created) == 1
        async with engine.connect() as connection:
            orders = await connection.scalar(
                select(func.count()).select_from(Order).where(Order.user_id == user.id)
            )
        assert orders == 1

    @pytest.mark.postgres_only  # SQLite serialises writers: a repeat waits, then replays
    async def test_repeat_while_the_first_is_in_flight_is_409(
        self, client: httpx.AsyncClient, user: ApiUser, engine: AsyncEngine
    ) -> None:
        from oms.orders.service import _advisory_lock_id

        key = "in-flight"
        async with engine.connect() as holder:
            # The first request's transaction holds this lock until it commits.
            await holder.execute(select(func.pg_advisory_lock(_advisory_lock_id(user.id, key))))
            response = await client.post(
                "/orders/", json={"items": [ITEM]}, headers={**user.headers, "Idempotency-Key": key}
            )
            await holder.execute(select(func.pg_advisory_unlock(_advisory_lock_id(user.id, key))))

        assert response.status_code == 409
        assert response.json() == {
            "detail": "A request with this Idempotency-Key is still in progress"
        }

    async def test_simultaneous_repeats_of_a_finished_request_all_replay(
        self, client: httpx.AsyncClient, user: ApiUser
    ) -> None:
        # Found by the chaos drills: concurrent replays of a key whose order was created long
        # ago raced for the in-flight lock, and the losers got 409 "still in progress".
        headers = {**user.headers, "Idempotency-Key": f"replay-{uuid.uuid4()}"}
        first = await client.post("/orders/", json={"items": [ITEM]}, headers=headers)
        assert first.status_code == 201

        repeats = await asyncio.gather(
            *(client.post("/orders/", json={"items": [ITEM]}, headers=headers) for _ in range(8))
        )

        assert [r.status_code for r in repeats] == [201] * 8
        assert {r.json()["id"] for r in repeats} == {first.json()["id"]}
        assert all(r.headers["Idempotent-Replayed"] == "true" for r in repeats)
