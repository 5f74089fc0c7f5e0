from __future__ import annotations

import httpx
import pytest

from tests.conftest import ITEM, ApiUser, create_order


async def test_list_is_newest_first(client: httpx.AsyncClient, user: ApiUser) -> None:
    created = [await create_order(client, user, [{**ITEM, "quantity": n}]) for n in (1, 2, 3)]

    response = await client.get(f"/orders/user/{user.id}/", headers=user.headers)

    assert response.status_code == 200
    assert response.json() == list(reversed(created))
    assert "Link" not in response.headers


async def test_pagination_with_link_header(client: httpx.AsyncClient, user: ApiUser) -> None:
    created = [await create_order(client, user) for _ in range(5)]
    newest_first = [order["id"] for order in reversed(created)]

    first = await client.get(f"/orders/user/{user.id}/?limit=2", headers=user.headers)
    assert [o["id"] for o in first.json()] == newest_first[:2]
    assert first.headers["Link"] == f'</orders/user/{user.id}/?limit=2&offset=2>; rel="next"'

    last = await client.get(f"/orders/user/{user.id}?limit=2&offset=4", headers=user.headers)
    assert [o["id"] for o in last.json()] == newest_first[4:]
    assert "Link" not in last.headers


async def test_status_filter(client: httpx.AsyncClient, user: ApiUser) -> None:
    paid = await create_order(client, user)
    await create_order(client, user)
    await client.patch(f"/orders/{paid['id']}/", json={"status": "PAID"}, headers=user.headers)

    response = await client.get(
        f"/orders/user/{user.id}/?status=PAID&limit=1", headers=user.headers
    )

    assert [o["id"] for o in response.json()] == [paid["id"]]
    assert "Link" not in response.headers


async def test_link_keeps_the_status_filter(client: httpx.AsyncClient, user: ApiUser) -> None:
    for _ in range(2):
        await create_order(client, user)
    response = await client.get(
        f"/orders/user/{user.id}/?status=PENDING&limit=1", headers=user.headers
    )
    assert "status=PENDING" in response.headers["Link"]


async def test_empty_list(client: httpx.AsyncClient, user: ApiUser) -> None:
    response = await client.get(f"/orders/user/{user.id}/", headers=user.headers)
    assert response.status_code == 200
    assert response.json() == []


async def test_another_users_list_is_403(client: httpx.AsyncClient, make_user) -> None:  # type: ignore[no-untyped-def]
    alice, mallory = await make_user(), await make_user()
    await create_order(client, alice)

    response = await client.get(f"/orders/user/{alice.id}/", headers=mallory.headers)

    assert response.status_code == 403
    assert response.json() == {"detail": "You can only list your own orders"}


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=201", "offset=-1", "limit=ten", "status=LOST", "offset=1000001"],
)
async def test_bad_parameters_are_422(client: httpx.AsyncClient, user: ApiUser, query: str) -> None:
    response = await client.get(f"/orders/user/{user.id}/?{query}", headers=user.headers)
    assert response.status_code == 422


async def test_user_id_must_be_an_integer(client: httpx.AsyncClient, user: ApiUser) -> None:
    response = await client.get("/orders/user/me/", headers=user.headers)
    assert response.status_code == 422


async def test_list_requires_a_token(client: httpx.AsyncClient, user: ApiUser) -> None:
    response = await client.get(f"/orders/user/{user.id}/")
    assert response.status_code == 401
