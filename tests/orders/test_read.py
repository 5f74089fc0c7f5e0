from __future__ import annotations

import uuid

import httpx

from tests.conftest import ApiUser, create_order


async def test_owner_reads_the_order(client: httpx.AsyncClient, user: ApiUser) -> None:
    order = await create_order(client, user)

    first = await client.get(f"/orders/{order['id']}/", headers=user.headers)
    cached = await client.get(f"/orders/{order['id']}", headers=user.headers)

    assert first.status_code == cached.status_code == 200
    assert first.json() == order
    assert cached.content == first.content
    assert first.headers["content-type"] == "application/json"


async def test_another_users_order_is_403(client: httpx.AsyncClient, make_user) -> None:  # type: ignore[no-untyped-def]
    alice, mallory = await make_user(), await make_user()
    order = await create_order(client, alice)

    # Once from the database, once after alice's read filled the cache.
    before = await client.get(f"/orders/{order['id']}/", headers=mallory.headers)
    await client.get(f"/orders/{order['id']}/", headers=alice.headers)
    after = await client.get(f"/orders/{order['id']}/", headers=mallory.headers)

    for response in (before, after):
        assert response.status_code == 403
        assert response.json() == {"detail": "This order belongs to another user"}


async def test_unknown_order_is_404(client: httpx.AsyncClient, user: ApiUser) -> None:
    response = await client.get(f"/orders/{uuid.uuid4()}/", headers=user.headers)
    assert response.status_code == 404
    assert response.json() == {"detail": "Order not found"}


async def test_order_id_must_be_a_uuid(client: httpx.AsyncClient, user: ApiUser) -> None:
    response = await client.get("/orders/12345/", headers=user.headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "order_id"]


async def test_reading_requires_a_token(client: httpx.AsyncClient, user: ApiUser) -> None:
    order = await create_order(client, user)
    response = await client.get(f"/orders/{order['id']}/")
    assert response.status_code == 401
