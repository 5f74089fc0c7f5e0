"""The production topology on private stores: api, relay, consumer and worker as `oms` processes.

Like `make stack` (one process per role, the Procfile's commands), but against a PostgreSQL
cluster, a `redis-server` and a RabbitMQ node of its own, so drills can crash any of them while
other users of this machine keep the shared servers on 5432/6379/5672.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from tests.conftest import TEST_SECRET
from tests.support.postgres_server import PostgresCluster
from tests.support.processes import OmsProcess, free_port, oms_env
from tests.support.rabbitmq_node import RabbitMQNode
from tests.support.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[1]
PROCESSED_PREFIX, PROCESSED_SUFFIX = "Order ", " processed"

# Settings of every role in a drill. The sweeper timeout is shorter than SPEC's default (30 s)
# so a drill that loses queued tasks (Redis restart, worker SIGKILL) recovers in seconds; the
# rate limit leaves the load's users room and is small enough to be exhausted on purpose.
DRILL_SETTINGS = {
    "app_env": "test",
    "secret_key": TEST_SECRET,
    "log_format": "json",
    "rate_limit_times": "120",
    "rate_limit_seconds": "60",
    "auth_rate_limit": "1000/minute",
    "processing_timeout_seconds": "10",
    "sweeper_interval_seconds": "1",
    "relay_max_backoff_seconds": "1",
    "rabbitmq_reconnect_interval_seconds": "0.5",
}


@dataclass
class Topology:
    postgres: PostgresCluster
    redis: RedisServer
    rabbitmq: RabbitMQNode
    env: dict[str, str]
    workdir: Path
    rabbitmq_start_seconds: float
    roles: dict[str, list[OmsProcess]] = field(
        default_factory=lambda: collections.defaultdict(list)
    )
    history: list[OmsProcess] = field(default_factory=list)
    api_url_of: dict[OmsProcess, str] = field(default_factory=dict)

    @property
    def api_urls(self) -> list[str]:
        return [self.api_url_of[p] for p in self.roles["api"]]

    @property
    def database_url(self) -> str:
        return self.postgres.url("oms")

    # --- roles -------------------------------------------------------------------------------
    def start_role(self, role: str, **overrides: str) -> OmsProcess:
        args: tuple[str, ...] = ()
        if role == "api":
            port = free_port()
            args = ("--host", "127.0.0.1", "--port", str(port))
        env = {**self.env, **{key.upper(): value for key, value in overrides.items()}}
        process = OmsProcess(role, env, self.workdir, *args).start()
        if role == "api":
            self.api_url_of[process] = f"http://127.0.0.1:{port}"
        self.roles[role].append(process)
        self.history.append(process)
        return process

    def restart_role(self, role: str, signum: int = signal.SIGKILL) -> OmsProcess:
        """Stop the first process of `role` (SIGKILL by default) and start a fresh one."""
        process = self.roles[role].pop(0)
        if signum == signal.SIGKILL:
            process.kill()
        else:
            process.stop()
        return self.start_role(role)

    def pids(self) -> dict[str, int]:
        """Every process of the topology by name: the roles and the three stores."""
        out: dict[str, int] = {}
        for role, processes in self.roles.items():
            for index, process in enumerate(processes, 1):
                if process.process is not None and process.running:
                    out[f"{role}.{index}"] = process.process.pid
        for name, pid in (
            ("postgres", self.postgres.pid),
            ("redis", self.redis.pid),
            ("rabbitmq", self.rabbitmq.pid),
        ):
            if pid is not None:
                out[name] = pid
        return out

    # --- observations ------------------------------------------------------------------------
    def processed_lines(self) -> collections.Counter[str]:
        """How often each `Order <id> processed` line appeared, over every worker ever run."""
        counts: collections.Counter[str] = collections.Counter()
        for process in self.history:
            if process.role != "worker":
                continue
            for record in process.records():
                message = str(record.get("event", ""))
                if message.startswith(PROCESSED_PREFIX) and message.endswith(PROCESSED_SUFFIX):
                    order_id = message.removeprefix(PROCESSED_PREFIX).removesuffix(PROCESSED_SUFFIX)
                    counts[order_id] += 1
        return counts

    def events(self, role: str, message: str) -> list[dict[str, Any]]:
        return [r for p in self.history if p.role == role for r in p.events(message)]

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, connect_timeout=3) as connection:
            return connection.execute(sql, params).fetchall()  # type: ignore[arg-type]

    def logs(self, lines: int = 40) -> str:
        parts = []
        for process in self.history:
            tail = "\n".join(process.output().splitlines()[-lines:])
            parts.append(
                f"--- {process.role} (pid {process.process and process.process.pid})\n{tail}"
            )
        return "\n".join(parts)

    # --- readiness ---------------------------------------------------------------------------
    def wait_ready(self, within: float = 60) -> None:
        deadline = time.monotonic() + within
        pending = [p for processes in self.roles.values() for p in processes]
        while pending:
            for process in list(pending):
                if not process.running:
                    raise RuntimeError(f"{process.role} exited at start:\n{process.output()}")
                if _is_ready(process, self.api_url_of.get(process)):
                    pending.remove(process)
            if time.monotonic() > deadline:
                names = ", ".join(p.role for p in pending)
                raise RuntimeError(f"not ready within {within}s: {names}\n{self.logs()}")
            time.sleep(0.2)


def _is_ready(process: OmsProcess, api_url: str | None) -> bool:
    if api_url is not None:
        try:
            response = httpx.get(f"{api_url}/health/ready", timeout=1)
        except httpx.TransportError:
            return False
        return response.status_code == 200
    if process.role == "relay":
        return bool(process.events("Connected to RabbitMQ"))
    if process.role == "consumer":
        return bool(process.events("Consumer started"))
    # Celery announces readiness on its own logger once it consumes.
    return any("ready" in str(r.get("event", "")) for r in process.records())


@contextlib.contextmanager
def running_topology(
    apis: int = 1, relays: int = 1, consumers: int = 1, workers: int = 1, **overrides: str
) -> Iterator[Topology]:
    """Private stores, migrations, then the roles; everything torn down afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix="oms-chaos-"))
    postgres = PostgresCluster().init()
    redis = RedisServer(workdir)
    rabbitmq = RabbitMQNode()
    topology: Topology | None = None
    try:
        postgres.start()
        redis.start()
        rabbitmq_start_seconds = rabbitmq.start()
        env = oms_env(
            **{**DRILL_SETTINGS, **overrides},
            database_url=postgres.url("oms"),
            redis_url=redis.url(0),
            celery_broker_url=redis.url(1),
            rabbitmq_url=rabbitmq.url,
            path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        )
        subprocess.run(
            [sys.executable, "-m", "oms.cli", "migrate", "--create-database"],
            env=env,
            cwd=workdir,
            check=True,
            capture_output=True,
            timeout=120,
        )
        topology = Topology(postgres, redis, rabbitmq, env, workdir, rabbitmq_start_seconds)
        for role, count in (("api", apis), ("relay", relays), ("consumer", consumers)):
            for _ in range(count):
                topology.start_role(role)
        for _ in range(workers):
            topology.start_role("worker")
        topology.wait_ready()
        yield topology
    finally:
        if topology is not None:
            for processes in topology.roles.values():
                for process in processes:
                    with contextlib.suppress(Exception):
                        process.stop(timeout=20)
        rabbitmq.destroy()
        redis.kill()
        postgres.destroy()
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
