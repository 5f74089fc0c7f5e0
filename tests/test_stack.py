"""`make stack`: the four roles as separate processes (Procfile + honcho), an order end to end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql

from tests.conftest import ITEM, TEST_SECRET, register_and_login
from tests.support.processes import eventually, free_port, oms_env
from tests.support.redis_server import RedisServer
from tests.support.services import POSTGRES_ADMIN_DSN

ROOT = Path(__file__).resolve().parents[1]
ROLES = ("api", "relay", "consumer", "worker")


@pytest.fixture
def database_name() -> Iterator[str]:
    """A name only: `make stack` must create the database itself."""
    name = f"oms_stack_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        admin.execute(drop.format(sql.Identifier(name)))


class Stack:
    """`scripts/stack` (what `make stack` runs), its output split by role."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [str(ROOT / "scripts" / "stack")],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def records(self, role: str) -> list[dict[str, object]]:
        """JSON log records of one role (honcho prefixes `HH:MM:SS role.1 | `)."""
        records = []
        for line in list(self.lines):
            prefix, _, payload = line.partition(" | ")
            if f" {role}." not in prefix:
                continue
            with contextlib.suppress(ValueError):
                record = json.loads(payload)
                if isinstance(record, dict):
                    records.append(record)
        return records

    def output(self) -> str:
        return "\n".join(self.lines[-80:])


async def test_an_order_flows_through_the_stack(database_name: str, tmp_path: Path) -> None:
    redis = RedisServer(tmp_path).start()
    api_port = free_port()
    suffix = uuid.uuid4().hex[:10]
    env = oms_env(
        app_env="test",
        secret_key=TEST_SECRET,
        log_format="json",
        database_url=POSTGRES_ADMIN_DSN.rsplit("/", 1)[0] + f"/{database_name}",
        redis_url=redis.url(0),
        celery_broker_url=redis.url(1),
        rabbitmq_url="amqp://guest:guest@127.0.0.1:5672/",
        rabbitmq_exchange=f"oms.stack.{suffix}",
        new_order_queue=f"new_order.stack.{suffix}",
        celery_queue=f"oms.stack.{suffix}",
        oms_api_port=str(api_port),
        oms_relay_metrics_port=str(free_port()),
        oms_consumer_metrics_port=str(free_port()),
        oms_worker_metrics_port=str(free_port()),
        path=f"{Path(sys.executable).parent}:/usr/bin:/bin",
    )
    stack = Stack(env)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=10) as client:

            async def api_up() -> bool:
                try:
                    return (await client.get("/health/ready")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(api_up, within=60, message=stack.output)
            user = await register_and_login(client)
            request_id = f"stack-{suffix}"
            headers = {**user.headers, "X-Request-ID": request_id}
            created = await client.post("/orders/", json={"items": [ITEM]}, headers=headers)
            assert created.status_code == 201
            order_id = created.json()["id"]

            async def processed() -> bool:
                order = (await client.get(f"/orders/{order_id}/", headers=user.headers)).json()
                return order["processed_at"] is not None

            await eventually(processed, within=30, message=stack.output)

        # `oms smoke`, what an operator runs against any deployment, passes against this one.
        smoke = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "oms.cli", "smoke", f"http://127.0.0.1:{api_port}",
            "--timeout", "10", "--wait", "30",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        table = (await asyncio.wait_for(smoke.communicate(), 120))[0].decode()
        assert smoke.returncode == 0, f"{table}\n{stack.output()}"
        assert table.splitlines()[-1] == "smoke: 10 of 10 steps passed", table

        message = f"Order {order_id} processed"
        assert sum(r.get("event") == message for r in stack.records("worker")) == 1
        for role in ("api", "consumer", "worker"):
            assert any(r.get("request_id") == request_id for r in stack.records(role)), role
    finally:
        stack.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(stack.process.wait, 60)
        finally:
            if stack.process.poll() is None:
                stack.process.kill()
            redis.kill()
    for role in ROLES:
        assert stack.records(role), f"{role} logged nothing:\n{stack.output()}"
