"""The event pipeline as real processes: `oms relay`, `oms consumer`, `oms worker`.

Each test gets its own database, its own RabbitMQ exchange and queues (unique names on the
shared broker, deleted afterwards) and its own `redis-server` as the Celery broker and cache,
so tests can restart Redis and run next to other test runs on this machine.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import psycopg
import pytest
from asgi_lifespan import LifespanManager

from oms import migrate
from oms.config import Settings
from oms.events.rabbitmq import dead_letter_queue_name
from oms.main import create_app
from tests.conftest import TEST_SECRET, ApiUser, make_settings, register_and_login
from tests.support.processes import OmsProcess, eventually
from tests.support.redis_server import RedisServer
from tests.support.services import fresh_postgres_database, service_unavailable

RABBITMQ_URL = os.environ.get("OMS_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
PROCESSED = "Order {} processed"


@pytest.fixture
def pipeline_db() -> Iterator[str]:
    with fresh_postgres_database("oms_events") as url:
        migrate.upgrade(url)
        yield url


@pytest.fixture
async def rabbitmq_names() -> AsyncIterator[dict[str, str]]:
    """Unique exchange and queue names on the shared broker, deleted after the test."""
    suffix = uuid.uuid4().hex[:10]
    names = {
        "RABBITMQ_EXCHANGE": f"oms.test.{suffix}",
        "NEW_ORDER_QUEUE": f"new_order.test.{suffix}",
    }
    try:
        connection = await aio_pika.connect(RABBITMQ_URL, timeout=3)
    except Exception as error:
        service_unavailable("RabbitMQ", error)
        raise
    await connection.close()
    yield names
    connection = await aio_pika.connect(RABBITMQ_URL, timeout=3)
    async with connection:
        channel = await connection.channel()
        queue = names["NEW_ORDER_QUEUE"]
        for name in (queue, dead_letter_queue_name(queue)):
            with contextlib.suppress(Exception):
                await channel.queue_delete(name)
        with contextlib.suppress(Exception):
            channel = await connection.channel()
            await channel.exchange_delete(names["RABBITMQ_EXCHANGE"])


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.kill()


@dataclass
class Pipeline:
    database_url: str
    env: dict[str, str]
    workdir: Path
    client: httpx.AsyncClient
    user: ApiUser
    processes: list[OmsProcess] = field(default_factory=list)

    def start(self, role: str, *args: str, **overrides: str) -> OmsProcess:
        process = OmsProcess(role, {**self.env, **overrides}, self.workdir, *args).start()
        self.processes.append(process)
        return process

    async def create_orders(self, count: int, concurrency: int = 10) -> list[str]:
        semaphore = asyncio.Semaphore(concurrency)

        async def one(index: int) -> str:
            async with semaphore:
                response = await self.client.post(
                    "/orders/",
                    json={"items": [{"product_id": f"SKU-{index}", "quantity": 1, "price": 1.5}]},
                    headers={**self.user.headers, "X-Request-ID": f"test-request-{index}"},
                )
            assert response.status_code == 201, response.text
            order_id: str = response.json()["id"]
            return order_id

        return list(await asyncio.gather(*(one(i) for i in range(count))))

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, connect_timeout=3) as connection:
            return connection.execute(sql, params).fetchall()  # type: ignore[arg-type]

    def unprocessed(self, order_ids: list[str]) -> list[str]:
        rows = self.query(
            "SELECT id::text FROM orders WHERE processed_at IS NULL AND id::text = ANY(%s)",
            order_ids,
        )
        return [row[0] for row in rows]

    def versions(self, order_ids: list[str]) -> dict[str, int]:
        rows = self.query(
            "SELECT id::text, version FROM orders WHERE id::text = ANY(%s)", order_ids
        )
        return {row[0]: row[1] for row in rows}

    def processed_lines(self) -> collections.Counter[str]:
        """How many times each order's `Order <id> processed` line appeared, over all workers."""
        counts: collections.Counter[str] = collections.Counter()
        for process in self.processes:
            if process.role != "worker":
                continue
            for record in process.records():
                message = str(record.get("event", ""))
                if message.startswith("Order ") and message.endswith(" processed"):
                    counts[message.removeprefix("Order ").removesuffix(" processed")] += 1
        return counts

    async def wait_processed(self, order_ids: list[str], within: float) -> None:
        await eventually(
            lambda: not self.unprocessed(order_ids),
            within,
            lambda: f"{len(self.unprocessed(order_ids))} orders unprocessed\n" + self.logs(),
        )

    def logs(self) -> str:
        return "\n".join(f"--- {p.role}\n{p.output()}" for p in self.processes)

    def assert_processed_exactly_once(self, order_ids: list[str]) -> None:
        assert self.unprocessed(order_ids) == []
        # The processed mark bumps the version once; a second processing would bump it again.
        assert set(self.versions(order_ids).values()) == {2}
        lines = self.processed_lines()
        assert {order_id: lines[order_id] for order_id in order_ids} == dict.fromkeys(
            order_ids, 1
        ), self.logs()


@pytest.fixture
async def pipeline(
    pipeline_db: str,
    rabbitmq_names: dict[str, str],
    redis_server: RedisServer,
    tmp_path: Path,
) -> AsyncIterator[Pipeline]:
    env = {
        "APP_ENV": "test",
        "SECRET_KEY": TEST_SECRET,
        "LOG_FORMAT": "json",
        "DATABASE_URL": pipeline_db,
        "RABBITMQ_URL": RABBITMQ_URL,
        "CELERY_BROKER_URL": redis_server.url(1),
        "REDIS_URL": redis_server.url(0),
        "CELERY_QUEUE": f"oms.orders.test.{uuid.uuid4().hex[:10]}",
        "WORKER_CONCURRENCY": "16",
        "RELAY_MAX_BACKOFF_SECONDS": "1",
        "RABBITMQ_RECONNECT_INTERVAL_SECONDS": "0.5",
        "SWEEPER_INTERVAL_SECONDS": "1",
        **rabbitmq_names,
    }
    workdir = tmp_path / "run"
    workdir.mkdir()
    settings: Settings = make_settings(pipeline_db)
    app = create_app(settings)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            user = await register_and_login(client)
            pipeline = Pipeline(pipeline_db, env, workdir, client, user)
            try:
                yield pipeline
            finally:
                for process in pipeline.processes:
                    if process.running:
                        with contextlib.suppress(Exception):
                            process.stop(timeout=20)
