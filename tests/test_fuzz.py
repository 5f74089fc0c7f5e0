"""Schemathesis against the app's own OpenAPI, through a real `oms api` process.

Every generated request, valid or not, must get a declared status, never a 5xx, and a body
that matches the declared schema. `make fuzz` runs the same test with many more examples.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from tests.conftest import PASSWORD, unique_email
from tests.support.server import api_environment, running_api

EXAMPLES = int(os.environ.get("OMS_FUZZ_EXAMPLES", "25"))
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


@pytest.fixture(scope="module")
def api_url(postgres_url: str) -> Iterator[str]:
    env = api_environment(postgres_url)
    with running_api(env) as api:
        yield api.url


@pytest.fixture(scope="module")
def token(api_url: str) -> str:
    email = unique_email()
    httpx.post(f"{api_url}/register/", json={"email": email, "password": PASSWORD}, timeout=10)
    response = httpx.post(
        f"{api_url}/token/", data={"username": email, "password": PASSWORD}, timeout=10
    )
    access_token: str = response.json()["access_token"]
    return access_token


OPERATIONS = [
    ("POST", "/register/"),
    ("POST", "/token/"),
    ("POST", "/orders/"),
    ("GET", "/orders/{order_id}/"),
    ("PATCH", "/orders/{order_id}/"),
    ("GET", "/orders/user/{user_id}/"),
    ("GET", "/health"),
    ("GET", "/health/ready"),
    ("GET", "/metrics"),
]


@pytest.fixture(scope="module")
def api_schema(api_url: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{api_url}/openapi.json")


def test_every_operation_is_fuzzed(api_schema: schemathesis.BaseSchema) -> None:
    declared = {
        (result.ok().method.upper(), result.ok().path) for result in api_schema.get_all_operations()
    }
    assert declared == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_api_never_fails_and_keeps_its_schema(
    api_schema: schemathesis.BaseSchema, token: str, method: str, path: str
) -> None:
    operation = api_schema[path][method]
    authorised = path not in ("/register/", "/token/")

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def fuzz(case: schemathesis.Case) -> None:
        if authorised:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}
        case.call_and_validate(checks=CHECKS)

    fuzz()
