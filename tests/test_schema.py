"""The published OpenAPI schema and the server agree on every boundary: a request body the
schema calls valid is accepted, one it calls invalid is a 422 (schemathesis explores the same
at random, tests/test_fuzz.py; these are the cases found by hand)."""

from __future__ import annotations

from typing import Any

import httpx
import jsonschema_rs
import pytest

from tests.conftest import PASSWORD, ApiUser, unique_email


def validator(document: dict[str, Any], component: str) -> Any:
    schema = {"$ref": f"#/components/schemas/{component}", "components": document["components"]}
    return jsonschema_rs.Draft202012Validator(schema, validate_formats=True)


@pytest.fixture
async def openapi(client: httpx.AsyncClient) -> dict[str, Any]:
    document: dict[str, Any] = (await client.get("/openapi.json")).json()
    return document


def item(**fields: Any) -> dict[str, Any]:
    return {"product_id": "SKU-1", "quantity": 1, "price": "9.99", **fields}


ITEMS = [
    # product_id: a string of 1-64 characters, not blank, or a JSON number (SPEC 2.1)
    item(product_id=12),
    item(product_id=1.5),
    item(product_id=-3),
    item(product_id=2**53 - 1),
    item(product_id=2**53),
    item(product_id=""),
    item(product_id=" "),
    item(product_id="\t\u3000"),
    item(product_id=" padded "),
    item(product_id="x" * 64),
    item(product_id="x" * 65),
    item(product_id=True),
    item(product_id=None, name="Widget"),
    item(product_id=None),
    {"quantity": 1, "price": 1},
    # price: above 0, at most 2 decimal places, as a number or a decimal string
    item(price=""),
    item(price="0"),
    item(price="0.00"),
    item(price="0.01"),
    item(price="9.99"),
    item(price="9.999"),
    item(price="1e2"),
    item(price="+1"),
    item(price=" 1"),
    item(price="01.5"),
    item(price="NaN"),
    item(price=9.999),
    item(price=0.07),
    item(price=1e-5),
    item(price=0),
    item(price=-1),
    item(price=99999999.99),
    item(price=100000000),
    item(price=True),
    # quantity: an integer 1-10 000 (2.0 is one, in JSON Schema too)
    item(quantity=2.0),
    item(quantity=1.5),
    item(quantity="2"),
    item(quantity=0),
    item(quantity=10_000, price="1"),
    item(quantity=10_001),
]


@pytest.mark.parametrize("order_item", ITEMS, ids=[repr(i)[:60] for i in ITEMS])
async def test_server_accepts_exactly_the_items_the_schema_allows(
    client: httpx.AsyncClient, openapi: dict[str, Any], user: ApiUser, order_item: dict[str, Any]
) -> None:
    body = {"items": [order_item]}
    schema_valid = validator(openapi, "OrderCreate").is_valid(body)
    response = await client.post("/orders/", json=body, headers=user.headers)
    assert response.status_code == (201 if schema_valid else 422), response.text


async def test_a_numeric_product_id_is_stored_as_its_text(
    client: httpx.AsyncClient, user: ApiUser
) -> None:
    body = {"items": [item(product_id=12, name=" Widget ")]}
    response = await client.post("/orders/", json=body, headers=user.headers)
    assert response.status_code == 201, response.text
    [stored] = response.json()["items"]
    assert (stored["product_id"], stored["name"]) == ("12", "Widget")


EMAILS = [
    "alice@example.com",
    "alice@shop.test",  # reserved for testing (RFC 6761): accepted, see auth/schemas.py
    "alice@SHOP.TEST",
    "alice@test",
    "alice@shop.local",
    "alice@localhost",
    "alice@host.invalid",
    "alice@x.onion",
    "alice@nodot",
    "Alice <alice@example.com>",
    "not an email",
]


@pytest.mark.parametrize("local_part_and_domain", EMAILS)
async def test_server_accepts_exactly_the_emails_the_schema_allows(
    client: httpx.AsyncClient, openapi: dict[str, Any], local_part_and_domain: str
) -> None:
    email = local_part_and_domain.replace("alice", unique_email().split("@")[0])
    body = {"email": email, "password": PASSWORD}
    schema_valid = validator(openapi, "RegisterIn").is_valid(body)
    response = await client.post("/register/", json=body)
    assert response.status_code == (201 if schema_valid else 422), response.text


async def test_special_use_test_domains_are_accepted(client: httpx.AsyncClient) -> None:
    email = unique_email().replace("example.com", "shop.test")
    response = await client.post("/register/", json={"email": email, "password": PASSWORD})
    assert response.status_code == 201, response.text
