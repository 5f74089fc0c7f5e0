"""Schemathesis against the app's own OpenAPI, through a real `oms api` process, with every check:
valid data (positive) must be accepted and invalid data (negative) refused with a 4xx, every
response must match its declared status, content type, headers and schema, an undeclared method
must get a 405 with `Allow`, and the stateful phase follows the declared links (create -> get ->
patch -> list). The test passes only with no failure at all, not merely no 5xx.

The suite runs a few examples per operation; `make fuzz` runs the same with many more
(OMS_FUZZ_EXAMPLES). The hooks in tests/support/fuzz_hooks.py teach the generator the two rules
of `POST /orders/` that JSON Schema cannot state.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis

from tests.conftest import PASSWORD, unique_email
from tests.support.server import api_environment, running_api

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = int(os.environ.get("OMS_FUZZ_EXAMPLES", "20"))
SEED = os.environ.get("OMS_FUZZ_SEED", "1")
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


def test_every_operation_is_fuzzed(api_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    declared = {
        (result.ok().method.upper(), result.ok().path) for result in schema.get_all_operations()
    }
    assert declared == set(OPERATIONS)


def test_the_order_links_are_declared(api_url: str) -> None:
    paths = httpx.get(f"{api_url}/openapi.json", timeout=10).json()["paths"]
    links = paths["/orders/"]["post"]["responses"]["201"]["links"]
    assert {link["operationId"] for link in links.values()} == {
        "get_order",
        "update_order_status",
        "list_user_orders",
    }


def test_schemathesis_finds_no_failure_with_every_check(
    api_url: str, token: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("st")), "run", f"{api_url}/openapi.json",
            "--header", f"Authorization: Bearer {token}",
            "--checks", "all",
            "--mode", "all",
            "--phases", "examples,coverage,fuzzing,stateful",
            "--max-examples", str(EXAMPLES),
            "--seed", SEED,
            "--workers", "1",
            "--no-color",
            "--suppress-health-check", "all",
        ],
        cwd=tmp_path,  # its caches (.schemathesis, .hypothesis) stay out of the checkout
        env={
            **os.environ,
            "SCHEMATHESIS_HOOKS": "tests.support.fuzz_hooks",
            "PYTHONPATH": str(ROOT),
        },
        capture_output=True,
        text=True,
        timeout=3600,
    )  # fmt: skip
    report = result.stdout[-20_000:] + result.stderr[-5_000:]
    assert result.returncode == 0, report
    assert "No issues found" in result.stdout, report
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert f"✅  {phase}" in result.stdout, report
