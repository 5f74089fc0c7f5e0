"""The image (`make image`, oms:local) built with podman and every role run from it.

The containers use the host's network (the local services listen on 127.0.0.1 only) and run the
way Kubernetes runs them (deploy/k8s): read-only root filesystem, every capability dropped. Each
run has its own database, RabbitMQ exchange and queues, Celery queue and a private Redis.
Outside CI the test skips when podman is missing or cannot run containers; in CI `make image`
installs podman first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import httpx
import pytest

from oms.events.rabbitmq import dead_letter_queue_name
from tests.conftest import ITEM, TEST_SECRET, register_and_login
from tests.support.processes import eventually, free_port, json_records
from tests.support.redis_server import RedisServer
from tests.support.services import IN_CI, fresh_postgres_database

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "oms:local"
CACHE = Path(os.environ.get("OMS_IMAGE_CACHE", "/var/cache/oms-image"))
ROLES = ("api", "relay", "consumer", "worker")
# Unprivileged and immutable, as in deploy/k8s: /tmp is the one writable place (an emptyDir
# there; podman's own tmpfs on /run and /var/tmp is turned off so nothing else is writable).
HARDENED = (
    "--read-only",
    "--read-only-tmpfs=false",
    "--tmpfs=/tmp",
    "--cap-drop=all",
    "--security-opt=no-new-privileges",
)


def _engine_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CACHE / "containers.conf")}


def _podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args],
        env=_engine_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def image() -> str:
    if not IN_CI:
        if shutil.which("podman") is None:
            pytest.skip("no container engine: podman is not installed (`make image` installs it)")
        if not (CACHE / "containers.conf").exists():
            pytest.skip(f"podman was never set up for this host: run `make image` ({CACHE})")
        info = _podman("info", "--format", "{{.Host.OCIRuntime.Name}}", timeout=30)
        if info.returncode != 0:
            pytest.skip(f"podman cannot run containers here: {info.stderr.strip()[:300]}")
    built = subprocess.run(
        [str(ROOT / "scripts" / "image")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return IMAGE


@dataclass
class Containers:
    """Role containers of one test run, removed at the end."""

    prefix: str
    env: dict[str, str]
    names: list[str] = field(default_factory=list)

    def _env_args(self, extra: dict[str, str]) -> list[str]:
        return [f"--env={key}={value}" for key, value in {**self.env, **extra}.items()]

    def run_once(self, *command: str) -> subprocess.CompletedProcess[str]:
        return _podman(
            "run", "--rm", "--network=host", *HARDENED, *self._env_args({}), IMAGE, *command
        )

    def start(self, role: str, *args: str, **env: str) -> str:
        name = f"{self.prefix}-{role}"
        started = _podman(
            "run",
            "--detach",
            f"--name={name}",
            "--network=host",
            "--no-healthcheck",  # podman runs health checks through systemd, absent here
            *HARDENED,
            *self._env_args(env),
            IMAGE,
            role,
            *args,
        )
        assert started.returncode == 0, started.stderr
        self.names.append(name)
        return name

    def logs(self, name: str) -> str:
        result = _podman("logs", name)
        return result.stdout + result.stderr

    def records(self, name: str) -> list[dict[str, object]]:
        return json_records(self.logs(name).splitlines())

    def running(self, name: str) -> bool:
        state = _podman("inspect", "--format", "{{.State.Running}}", name)
        return state.stdout.strip() == "true"

    def process_users(self, name: str) -> list[str]:
        """The user of every process in the container, as the host's kernel sees it."""
        top = _podman("top", name, "huser", "args")
        assert top.returncode == 0, top.stderr
        return [line.split()[0] for line in top.stdout.splitlines()[1:] if line.strip()]

    def describe(self) -> str:
        return "\n".join(f"--- {name}\n{self.logs(name)[-2000:]}" for name in self.names)

    def remove(self) -> None:
        if self.names:
            _podman("rm", "--force", "--time=10", *self.names, timeout=120)


async def _delete_rabbitmq_names(env: dict[str, str]) -> None:
    connection = await aio_pika.connect(env["RABBITMQ_URL"], timeout=5)
    async with connection:
        queue = env["NEW_ORDER_QUEUE"]
        for name in (queue, dead_letter_queue_name(queue)):
            with contextlib.suppress(Exception):
                await (await connection.channel()).queue_delete(name)
        with contextlib.suppress(Exception):
            await (await connection.channel()).exchange_delete(env["RABBITMQ_EXCHANGE"])


@pytest.fixture
async def containers(tmp_path: Path) -> AsyncIterator[Containers]:
    suffix = uuid.uuid4().hex[:10]
    redis = RedisServer(tmp_path).start()
    with fresh_postgres_database("oms_image") as database_url:
        env = {
            "APP_ENV": "production",
            "SECRET_KEY": TEST_SECRET,
            "LOG_FORMAT": "json",
            "DATABASE_URL": database_url,
            "DB_POOL_SIZE": "3",
            "REDIS_URL": redis.url(0),
            "CELERY_BROKER_URL": redis.url(1),
            "RABBITMQ_URL": "amqp://guest:guest@127.0.0.1:5672/",
            "RABBITMQ_EXCHANGE": f"oms.image.{suffix}",
            "NEW_ORDER_QUEUE": f"new_order.image.{suffix}",
            "CELERY_QUEUE": f"oms.image.{suffix}",
            "WORKER_CONCURRENCY": "2",
        }
        running = Containers(f"oms-test-{suffix}", env)
        try:
            yield running
        finally:
            await asyncio.to_thread(running.remove)
            redis.kill()
            await _delete_rabbitmq_names(env)


async def test_every_role_runs_from_the_image(image: str, containers: Containers) -> None:
    migrated = containers.run_once("migrate")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr

    api_port = free_port()  # not 8000: the health check must follow --port
    api = containers.start("api", "--host", "127.0.0.1", "--port", str(api_port))
    others = {
        role: containers.start(role, METRICS_PORT=str(free_port()))
        for role in ("relay", "consumer", "worker")
    }
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=10) as client:

        async def api_ready() -> bool:
            try:
                return (await client.get("/health/ready")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(api_ready, within=60, message=containers.describe)
        user = await register_and_login(client)
        created = await client.post("/orders/", json={"items": [ITEM]}, headers=user.headers)
        assert created.status_code == 201, created.text
        order_id = created.json()["id"]

        message = f"Order {order_id} processed"

        def worker_processed() -> bool:
            return any(r.get("event") == message for r in containers.records(others["worker"]))

        await eventually(worker_processed, within=60, message=containers.describe)
        order = (await client.get(f"/orders/{order_id}/", headers=user.headers)).json()
        assert order["processed_at"] is not None

    # The image's HEALTHCHECK command, run inside the API container, finds the API's port.
    health = _podman("exec", api, "oms", "probe", "--api")
    assert health.returncode == 0, health.stderr

    for name in (api, *others.values()):
        assert containers.running(name), containers.describe()
        users = containers.process_users(name)
        assert users, name
        assert all(user not in ("root", "0") for user in users), (name, users)
