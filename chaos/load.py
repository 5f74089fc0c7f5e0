"""A steady, bounded load of mixed requests, as a few users of the API would send them.

Creates (each with an Idempotency-Key; some replay an earlier key and must get the same order
back), GETs, PATCHes along the status machine and lists, at a fixed rate with bounded
concurrency, spread over every API process. Every answer is recorded with the phase it was sent
in; every order answered 201 is remembered so the books can be checked afterwards.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from tests.conftest import ApiUser, register_and_login

NEXT_STATUS = {"PENDING": "PAID", "PAID": "SHIPPED"}
# What each kind of request may legitimately answer when every dependency is up.
EXPECTED = {"create": {201}, "replay": {201}, "get": {200}, "patch": {200, 409}, "list": {200}}
TRANSPORT_ERROR = 0


@dataclass
class Sample:
    phase: str
    kind: str
    status: int
    sent_at: float


@dataclass
class KnownOrder:
    order_id: str
    status: str
    key: str
    body: dict[str, Any]


@dataclass
class LoadUser:
    api: ApiUser
    orders: list[KnownOrder] = field(default_factory=list)


@dataclass
class Load:
    """`rate` requests per second over `users`; `max_requests` caps a run whatever its length."""

    api_urls: list[str]
    rate: float
    concurrency: int = 16
    seed: int = 7
    phase: str = "warmup"
    samples: list[Sample] = field(default_factory=list)
    created: dict[str, float] = field(default_factory=dict)  # order id -> when its 201 arrived
    replay_mismatches: list[str] = field(default_factory=list)
    transport_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    users: list[LoadUser] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._turn = 0
        self._stopping = False

    def stop(self) -> None:
        """End the current `run` after the requests in flight."""
        self._stopping = True

    def _client(self) -> httpx.AsyncClient:
        """Round-robin over the API processes (the list may grow while the load runs)."""
        url = self.api_urls[self._turn % len(self.api_urls)]
        self._turn += 1
        if url not in self._clients:
            self._clients[url] = httpx.AsyncClient(
                base_url=url, timeout=10, limits=httpx.Limits(max_connections=self.concurrency)
            )
        return self._clients[url]

    async def setup(self, users: int) -> None:
        """Register and log in once per user (never again during the run)."""
        client = self._client()
        for _ in range(users):
            self.users.append(LoadUser(await register_and_login(client)))

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()

    async def run(self, seconds: float, max_requests: int) -> None:
        """Send at `rate` per second for `seconds` (or until `max_requests`); wait for answers."""
        semaphore = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        interval = 1 / self.rate
        start = time.monotonic()
        sent = 0
        self._stopping = False
        while not self._stopping and sent < max_requests and time.monotonic() - start < seconds:
            await semaphore.acquire()
            task = asyncio.create_task(self._one(semaphore))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
            delay = start + sent * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        if tasks:
            await asyncio.gather(*tasks)

    async def _one(self, semaphore: asyncio.Semaphore) -> None:
        try:
            user = self._random.choice(self.users)
            roll = self._random.random()
            if not user.orders or roll < 0.35:
                kind, request = "create", self._create(user)
            elif roll < 0.42:
                kind, request = "replay", self._replay(user)
            elif roll < 0.70:
                kind, request = "get", self._get(user)
            elif roll < 0.85:
                kind, request = "patch", self._patch(user)
            else:
                kind, request = "list", self._list(user)
            phase, sent_at = self.phase, time.monotonic()
            try:
                status = await request
            except httpx.TransportError as error:
                status = TRANSPORT_ERROR
                self.transport_errors[f"{kind}: {type(error).__name__}"] += 1
            self.samples.append(Sample(phase, kind, status, sent_at))
        finally:
            semaphore.release()

    async def _create(self, user: LoadUser) -> int:
        key = uuid.uuid4().hex
        price = round(self._random.uniform(1, 100), 2)
        body = {"items": [{"product_id": f"SKU-{self._random.randrange(1000)}", "quantity": 1,
                           "price": price}]}  # fmt: skip
        headers = {**user.api.headers, "Idempotency-Key": key}
        response = await self._client().post("/orders/", json=body, headers=headers)
        if response.status_code == 201:
            order = response.json()
            self.created[order["id"]] = time.monotonic()
            user.orders.append(KnownOrder(order["id"], order["status"], key, body))
        return response.status_code

    async def _replay(self, user: LoadUser) -> int:
        order = self._random.choice(user.orders)
        headers = {**user.api.headers, "Idempotency-Key": order.key}
        response = await self._client().post("/orders/", json=order.body, headers=headers)
        if response.status_code == 201 and (
            response.json()["id"] != order.order_id
            or response.headers.get("Idempotent-Replayed") != "true"
        ):
            self.replay_mismatches.append(order.order_id)
        return response.status_code

    async def _get(self, user: LoadUser) -> int:
        order = self._random.choice(user.orders)
        response = await self._client().get(f"/orders/{order.order_id}/", headers=user.api.headers)
        return response.status_code

    async def _patch(self, user: LoadUser) -> int:
        order = self._random.choice(user.orders)
        target = NEXT_STATUS.get(order.status, order.status)
        response = await self._client().patch(
            f"/orders/{order.order_id}/", json={"status": target}, headers=user.api.headers
        )
        if response.status_code == 200:
            order.status = response.json()["status"]
        return response.status_code

    async def _list(self, user: LoadUser) -> int:
        response = await self._client().get(
            f"/orders/user/{user.api.id}/", params={"limit": 20}, headers=user.api.headers
        )
        return response.status_code
