from __future__ import annotations

import asyncio
import itertools
import uuid

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from oms.orders.models import Order, OrderStatus
from tests.conftest import ApiUser, create_order

ALLOWED = {
    ("PENDING", "PAID"),
    ("PAID", "SHIPPED"),
    ("PENDING", "CANCELED"),
    ("PAID", "CANCELED"),
}
STATUSES = [status.value for status in OrderStatus]


async def _order_in(
    client: httpx.AsyncClient, user: ApiUser, engine: AsyncEngine, status: str
) -> str:
    order_id: str = (await create_order(client, user))["id"]
    async with engine.begin() as connection:
        await connection.execute(
            update(Order).where(Order.id == uuid.UUID(order_id)).values(status=OrderStatus(status))
        )
    return order_id


@pytest.mark.parametrize(
    ("current", "target"), [(a, b) for a, b in itertools.product(STATUSES, STATUSES) if a != b]
)
async def test_status_machine(
    client: httpx.AsyncClient, user: ApiUser, engine: AsyncEngine, current: str, target: str
) -> None:
    order_id = await _order_in(client, user, engine, current)

    response = await client.patch(
        f"/orders/{order_id}/", json={"status": target}, headers=user.headers
    )

    if (current, target) in ALLOWED:
        assert response.status_code == 200
        assert response.json()["status"] == target
        assert response.json()["updated_at"] > response.json()["created_at"]
    else:
        assert response.status_code == 409
        assert response.json() == {
            "detail": f"Cannot change order status from {current} to {target}"
        }


@pytest.mark.parametrize("status", STATUSES)
async def test_setting_the_current_status_is_a_no_op(
    client: httpx.AsyncClient, user: ApiUser, engine: AsyncEngine, status: str
) -> None:
    order_id = await _order_in(client, user, engine, status)
    before = (await client.get(f"/orders/{order_id}/", headers=user.headers)).json()

    response = await client.patch(
        f"/orders/{order_id}", json={"status": status}, headers=user.headers
    )

    assert response.status_code == 200
    assert response.json()["status"] == status
    assert response.json()["updated_at"] == before["updated_at"]


async def test_read_after_patch_shows_the_new_state(
    client: httpx.AsyncClient, user: ApiUser
) -> None:
    order = await create_order(client, user)
    await client.get(f"/orders/{order['id']}/", headers=user.headers)  # cached as PENDING

    patched = await client.patch(
        f"/orders/{order['id']}/", json={"status": "PAID"}, headers=user.headers
    )
    read = await client.get(f"/orders/{order['id']}/", headers=user.headers)

    assert read.json() == patched.json()
    assert read.json()["status"] == "PAID"


@pytest.mark.parametrize(
    "body", [{"status": "DELIVERED"}, {"status": "paid"}, {}, {"status": "PAID", "note": "x"}]
)
async def test_bad_patch_body_is_422(
    client: httpx.AsyncClient, user: ApiUser, body: dict[str, str]
) -> None:
    order = await create_order(client, user)
    response = await client.patch(f"/orders/{order['id']}/", json=body, headers=user.headers)
    assert response.status_code == 422


async def test_patch_of_another_users_order_is_403(
    client: httpx.AsyncClient,
    make_user,  # type: ignore[no-untyped-def]
) -> None:
    alice, mallory = await make_user(), await make_user()
    order = await create_order(client, alice)

    response = await client.patch(
        f"/orders/{order['id']}/", json={"status": "CANCELED"}, headers=mallory.headers
    )

    assert response.status_code == 403
    read = await client.get(f"/orders/{order['id']}/", headers=alice.headers)
    assert read.json()["status"] == "PENDING"


async def test_patch_of_unknown_order_is_404(client: httpx.AsyncClient, user: ApiUser) -> None:
    response = await client.patch(
        f"/orders/{uuid.uuid4()}/", json={"status": "PAID"}, headers=user.headers
    )
    assert response.status_code == 404


async def test_patch_requires_a_token(client: httpx.AsyncClient, user: ApiUser) -> None:
    order = await create_order(client, user)
    response = await client.patch(f"/orders/{order['id']}/", json={"status": "PAID"})
    assert response.status_code == 401


async def test_simultaneous_patches_end_in_a_valid_state(
    client: httpx.AsyncClient, user: ApiUser
) -> None:
    order = await create_order(client, user)
    url = f"/orders/{order['id']}/"

    responses = await asyncio.gather(
        client.patch(url, json={"status": "PAID"}, headers=user.headers),
        client.patch(url, json={"status": "CANCELED"}, headers=user.headers),
        client.patch(url, json={"status": "SHIPPED"}, headers=user.headers),
    )

    assert all(r.status_code in (200, 409) for r in responses)
    applied = [r.json() for r in responses if r.status_code == 200]
    assert applied
    final = (await client.get(url, headers=user.headers)).json()
    last = max(applied, key=lambda body: body["updated_at"])
    assert final == last
    assert final["status"] in {"PAID", "CANCELED", "SHIPPED"}
