"""`oms smoke BASE_URL`: an end-to-end check of a running deployment, over HTTP only.

It needs no configuration and no access to the stores, so it runs from a laptop, a CI job, a
container of the image or a Kubernetes Job alike. Each step depends on the ones before it (the
order read is the one just created), so the first failure ends the run and the steps after it are
reported as not run. The throwaway users it registers are left behind: the API has no way to
delete a user, and `smoke-<hex>@example.com` tells them apart.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

ITEM = {"product_id": "SMOKE-1", "name": "oms smoke", "quantity": 2, "price": 1.25}
POLL_INTERVAL_SECONDS = 0.25


class StepFailed(Exception):
    """A step saw something other than what the contract promises."""


@dataclass
class StepResult:
    name: str
    state: str  # "ok", "FAILED" or "not run"
    milliseconds: float | None = None
    details: str = ""


@dataclass
class _Session:
    """What the steps hand on to each other."""

    email: str = field(default_factory=lambda: f"smoke-{uuid.uuid4().hex[:12]}@example.com")
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    user_id: int = 0
    token: str = ""
    other_token: str = ""
    order_id: str = ""

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}


def _expect(response: httpx.Response, status: int) -> Any:
    if response.status_code != status:
        body = response.text[:200].replace("\n", " ")
        raise StepFailed(
            f"{response.request.method} {response.url.path}: "
            f"{response.status_code}, expected {status}: {body}"
        )
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError as error:
        raise StepFailed(f"{response.url.path}: not JSON") from error


async def _register(client: httpx.AsyncClient, email: str, password: str) -> tuple[int, str]:
    created = _expect(
        await client.post("/register/", json={"email": email, "password": password}), 201
    )
    issued = _expect(
        await client.post("/token/", data={"username": email, "password": password}), 200
    )
    if issued.get("token_type") != "bearer" or not issued.get("access_token"):
        raise StepFailed(f"/token/: unexpected body {sorted(issued)}")
    return int(created["id"]), str(issued["access_token"])


class Smoke:
    def __init__(self, client: httpx.AsyncClient, processing_timeout: float) -> None:
        self._client = client
        self._processing_timeout = processing_timeout
        self._s = _Session()

    def steps(self) -> list[tuple[str, Callable[[], Awaitable[str]]]]:
        return [
            ("ready", self.ready),
            ("register and log in", self.register),
            ("401 without a token", self.unauthorized),
            ("create order", self.create),
            ("read order", self.read),
            ("patch order to PAID", self.patch),
            ("list orders", self.list_orders),
            ("403 another user's order", self.forbidden),
            ("404 unknown order", self.not_found),
            ("processed_at set", self.processed),
        ]

    async def ready(self) -> str:
        body = _expect(await self._client.get("/health/ready"), 200)
        return f"status {body.get('status')}"

    async def register(self) -> str:
        self._s.user_id, self._s.token = await _register(
            self._client, self._s.email, self._s.password
        )
        return f"user {self._s.user_id} ({self._s.email})"

    async def unauthorized(self) -> str:
        response = await self._client.get(f"/orders/user/{self._s.user_id}/")
        _expect(response, 401)
        bad = await self._client.get(
            f"/orders/user/{self._s.user_id}/", headers=self._s.auth("not-a-token")
        )
        _expect(bad, 401)
        return "no token and a malformed token"

    async def create(self) -> str:
        response = await self._client.post(
            "/orders/",
            json={"items": [ITEM]},
            headers={**self._s.auth(), "Idempotency-Key": f"smoke-{uuid.uuid4().hex}"},
        )
        order = _expect(response, 201)
        if order.get("status") != "PENDING" or order.get("total_price") != 2.5:
            raise StepFailed(f"unexpected order {order}")
        self._s.order_id = str(order["id"])
        return f"order {self._s.order_id}"

    async def read(self) -> str:
        order = _expect(
            await self._client.get(f"/orders/{self._s.order_id}/", headers=self._s.auth()), 200
        )
        if order.get("id") != self._s.order_id or order.get("user_id") != self._s.user_id:
            raise StepFailed(f"read another order: {order.get('id')}")
        return "same order"

    async def patch(self) -> str:
        response = await self._client.patch(
            f"/orders/{self._s.order_id}/", json={"status": "PAID"}, headers=self._s.auth()
        )
        order = _expect(response, 200)
        if order.get("status") != "PAID":
            raise StepFailed(f"status {order.get('status')} after the PATCH")
        return "PENDING -> PAID"

    async def list_orders(self) -> str:
        response = await self._client.get(
            f"/orders/user/{self._s.user_id}/", headers=self._s.auth()
        )
        orders = _expect(response, 200)
        if [o.get("id") for o in orders] != [self._s.order_id]:
            raise StepFailed(f"expected exactly the new order, got {len(orders)} orders")
        if orders[0].get("status") != "PAID":
            raise StepFailed("the list shows a stale status")
        return "1 order, PAID"

    async def forbidden(self) -> str:
        other_email = f"smoke-{uuid.uuid4().hex[:12]}@example.com"
        _, self._s.other_token = await _register(self._client, other_email, self._s.password)
        response = await self._client.get(
            f"/orders/{self._s.order_id}/", headers=self._s.auth(self._s.other_token)
        )
        _expect(response, 403)
        return f"read by {other_email}"

    async def not_found(self) -> str:
        response = await self._client.get(f"/orders/{uuid.uuid4()}/", headers=self._s.auth())
        _expect(response, 404)
        return "random order id"

    async def processed(self) -> str:
        """The event pipeline end to end: outbox, relay, bus, consumer, Celery, worker."""
        deadline = time.monotonic() + self._processing_timeout
        while True:
            response = await self._client.get(
                f"/orders/{self._s.order_id}/", headers=self._s.auth()
            )
            order = _expect(response, 200)
            if order.get("processed_at"):
                return f"processed_at {order['processed_at']}"
            if time.monotonic() >= deadline:
                raise StepFailed(f"still unprocessed after {self._processing_timeout:g} s")
            await asyncio.sleep(POLL_INTERVAL_SECONDS)


async def run_smoke(
    base_url: str, *, timeout_seconds: float, processing_timeout_seconds: float
) -> list[StepResult]:
    """Runs every step against `base_url`; each HTTP request has `timeout_seconds`."""
    results: list[StepResult] = []
    async with httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        timeout=httpx.Timeout(timeout_seconds),
        headers={"X-Request-ID": f"smoke-{uuid.uuid4().hex[:16]}", "User-Agent": "oms-smoke"},
        follow_redirects=False,
    ) as client:
        smoke = Smoke(client, processing_timeout_seconds)
        failed = False
        for name, step in smoke.steps():
            if failed:
                results.append(StepResult(name, "not run"))
                continue
            started = time.perf_counter()
            try:
                details = await step()
            except (StepFailed, httpx.HTTPError, KeyError, TypeError, ValueError) as error:
                failed = True
                reason = str(error) or type(error).__name__
                if isinstance(error, httpx.TimeoutException):
                    reason = f"no answer within {timeout_seconds:g} s ({type(error).__name__})"
                elif isinstance(error, httpx.HTTPError):
                    reason = f"{type(error).__name__}: {reason}"
                results.append(StepResult(name, "FAILED", _since(started), reason))
            else:
                results.append(StepResult(name, "ok", _since(started), details))
    return results


def _since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def format_table(results: list[StepResult]) -> str:
    rows = [("STEP", "RESULT", "MS", "DETAILS")]
    rows += [
        (r.name, r.state, "" if r.milliseconds is None else f"{r.milliseconds:.1f}", r.details)
        for r in results
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
        + f"  {row[3]}"
        for row in rows
    ]
    passed = sum(r.state == "ok" for r in results)
    lines.append(f"smoke: {passed} of {len(results)} steps passed")
    return "\n".join(line.rstrip() for line in lines) + "\n"


def exit_code(results: list[StepResult]) -> int:
    return 0 if results and all(r.state == "ok" for r in results) else 1
