"""Consumer hand-off benchmark: how fast one `oms consumer` drains a backlog of `new_order` events.

Preloads `--events` messages (each for a real order row) on a private queue of the shared
RabbitMQ, then starts one `oms consumer` process with a private `redis-server` as the Celery
broker and a fresh PostgreSQL database, and times the drain:

- events/s: N / (last inbox row - first inbox row), the steady hand-off rate;
- wall events/s: N / (process start → last inbox row), startup included;
- CPU %: the consumer's user + system time over that wall time (100 % = one core).

Every message is handed off exactly once (inbox rows = N, Celery queue length = N) or the run
fails. Usage:
    uv run python -m bench.consumer [--events 20000] [--repeat 1] [--env KEY=VALUE ...]
    uv run python -m bench.consumer --events 2000 --rate 200   # publish -> hand-off p50/p99
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import psycopg
import redis
from tests.support.redis_server import RedisServer
from tests.support.services import fresh_postgres_database

from oms import migrate
from oms.config import Settings
from oms.events.rabbitmq import dead_letter_queue_name, declare_topology
from oms.events.schemas import NEW_ORDER

RABBITMQ_URL = os.environ.get("OMS_BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def seed_orders(db_url: str, count: int) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """`count` orders and their event ids, inserted in one statement."""
    pairs = [(uuid.uuid4(), uuid.uuid4()) for _ in range(count)]
    with psycopg.connect(db_url, autocommit=True) as db:
        user_id = db.execute(
            "INSERT INTO users (email, hashed_password, created_at) "
            "VALUES ('bench@example.com', 'x', now()) RETURNING id"
        ).fetchone()[0]  # type: ignore[index]
        db.execute(
            "INSERT INTO orders (id, user_id, items, total_price, status, version,"
            " created_at, updated_at)"
            ' SELECT id, %s, \'[{"product_id": "SKU-1", "quantity": 1, "price": "9.99"}]\','
            " 9.99, 'PENDING', 1, now(), now() FROM unnest(%s::uuid[]) AS id",
            (user_id, [order_id for order_id, _ in pairs]),
        )
    return pairs


async def preload(
    settings: Settings, pairs: list[tuple[uuid.UUID, uuid.UUID]], rate: float | None = None
) -> dict[uuid.UUID, datetime]:
    """Publish one event per (order, event id), confirmed; at `rate` per second if given (one
    at a time), else in confirmed groups of 1 000. Returns when each order's event was sent."""
    sent: dict[uuid.UUID, datetime] = {}
    connection = await aio_pika.connect(RABBITMQ_URL, timeout=5)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        topology = await declare_topology(connection, channel, settings)
        occurred = datetime.now(UTC).isoformat()
        step = 1 if rate else 1000
        began = time.monotonic()
        for start in range(0, len(pairs), step):
            if rate:
                await asyncio.sleep(max(0.0, began + start / rate - time.monotonic()))
            messages = []
            for index, (order_id, event_id) in enumerate(pairs[start : start + step], start):
                sent[order_id] = datetime.now(UTC)
                body = json.dumps(
                    {
                        "event_id": str(event_id),
                        "event_type": NEW_ORDER,
                        "occurred_at": occurred,
                        "order_id": str(order_id),
                        "user_id": 1,
                        "total_price": "9.99",
                        "items": [{"product_id": "SKU-1", "quantity": 1, "price": "9.99"}],
                    }
                ).encode()
                messages.append(
                    aio_pika.Message(
                        body,
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        message_id=str(event_id),
                        type=NEW_ORDER,
                        headers={"request_id": f"bench-{index}"},
                    )
                )
            await asyncio.gather(
                *(topology.exchange.publish(m, routing_key=NEW_ORDER) for m in messages)
            )
    return sent


async def delete_queues(settings: Settings) -> None:
    connection = await aio_pika.connect(RABBITMQ_URL, timeout=5)
    async with connection:
        channel = await connection.channel()
        for name in (settings.new_order_queue, dead_letter_queue_name(settings.new_order_queue)):
            await channel.queue_delete(name)
        await channel.exchange_delete(settings.rabbitmq_exchange)


def run_once(events: int, overrides: dict[str, str], rate: float | None) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:10]
    workdir = Path(tempfile.mkdtemp())
    redis_server = RedisServer(workdir).start()
    try:
        with fresh_postgres_database("oms_bench_consumer") as db_url:
            migrate.upgrade(db_url)
            env = {
                "APP_ENV": "test",
                "SECRET_KEY": secrets.token_urlsafe(48),
                "LOG_FORMAT": "json",
                "DATABASE_URL": db_url,
                "RABBITMQ_URL": RABBITMQ_URL,
                "CELERY_BROKER_URL": redis_server.url(1),
                "CELERY_QUEUE": f"oms.bench.{suffix}",
                "RABBITMQ_EXCHANGE": f"oms.bench.{suffix}",
                "NEW_ORDER_QUEUE": f"new_order.bench.{suffix}",
                **overrides,
            }
            settings = Settings(_env_file=None, **{k.lower(): v for k, v in env.items()})  # type: ignore[call-arg]
            pairs = seed_orders(db_url, events)
            try:
                if rate:
                    return live(env, db_url, settings, pairs, rate, str(workdir))
                asyncio.run(preload(settings, pairs))
                return drain(env, db_url, redis_server, settings, events, str(workdir))
            finally:
                asyncio.run(delete_queues(settings))
    finally:
        redis_server.kill()


def drain(
    env: dict[str, str],
    db_url: str,
    redis_server: RedisServer,
    settings: Settings,
    events: int,
    cwd: str,
) -> dict[str, Any]:
    log_path = Path(cwd) / "consumer.log"
    with log_path.open("wb") as log_file:
        started_at = datetime.now(UTC)
        began = time.monotonic()
        # OMS_BENCH_PROFILE=stacks.txt: sample the consumer with py-spy (collapsed stacks).
        profile = os.environ.get("OMS_BENCH_PROFILE")
        spy = ["py-spy", "record", "-r", "250", "-f", "raw", "-o", profile, "--"] if profile else []
        process = subprocess.Popen(  # noqa: S603 - our own CLI, optionally under py-spy
            [*spy, sys.executable, "-m", "oms.cli", "consumer"],
            env={"PATH": os.environ.get("PATH", ""), **env},
            cwd=cwd,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        cpu = 0.0
        try:
            with psycopg.connect(db_url, autocommit=True) as db:
                deadline = began + 55
                while True:
                    cpu = cpu_seconds(process.pid)
                    done = db.execute("SELECT count(*) FROM inbox").fetchone()[0]  # type: ignore[index]
                    if done >= events:
                        break
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise RuntimeError(f"drained {done}/{events}; see {log_path}")
                    time.sleep(0.05)
                first, last = db.execute(
                    "SELECT min(received_at), max(received_at) FROM inbox"
                ).fetchone()  # type: ignore[misc]
                dispatched = db.execute(
                    "SELECT count(*) FROM orders WHERE dispatched_at IS NOT NULL"
                ).fetchone()[0]  # type: ignore[index]
        finally:
            if profile:
                process.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            else:
                process.terminate()
            process.wait(30)
    queued = redis.Redis.from_url(redis_server.url(1)).llen(settings.celery_queue)
    if not (dispatched == queued == events):
        raise RuntimeError(f"dispatched {dispatched}, queued {queued}, expected {events}")
    wall = (last - started_at).total_seconds()
    return {
        "events": events,
        "events_per_second": round(events / max((last - first).total_seconds(), 1e-6)),
        "wall_events_per_second": round(events / wall),
        "cpu_percent": round(100 * cpu / (time.monotonic() - began)),
        "overrides": {k: v for k, v in env.items() if k.startswith("CONSUMER_")},
    }


def live(
    env: dict[str, str],
    db_url: str,
    settings: Settings,
    pairs: list[tuple[uuid.UUID, uuid.UUID]],
    rate: float,
    cwd: str,
) -> dict[str, Any]:
    """Events arriving at `rate` per second: publish -> hand-off latency (`dispatched_at`)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "oms.cli", "consumer"],
        env={"PATH": os.environ.get("PATH", ""), **env},
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(3)  # connected and consuming
        sent = asyncio.run(preload(settings, pairs, rate))
        with psycopg.connect(db_url, autocommit=True) as db:
            deadline = time.monotonic() + 30
            query = "SELECT id, dispatched_at FROM orders WHERE dispatched_at IS NOT NULL"
            while len(rows := db.execute(query).fetchall()) < len(pairs):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"handed off {len(rows)}/{len(pairs)}")
                time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(30)
    latencies = sorted((at - sent[order_id]).total_seconds() * 1000 for order_id, at in rows)
    return {
        "events": len(pairs),
        "rate": rate,
        "handoff_ms_p50": round(statistics.median(latencies), 1),
        "handoff_ms_p99": round(latencies[int(0.99 * (len(latencies) - 1))], 1),
        "overrides": {k: v for k, v in env.items() if k.startswith("CONSUMER_")},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--rate", type=float, help="publish at this rate with the consumer running: latency"
    )
    parser.add_argument("--env", nargs="*", default=[], help="KEY=VALUE for the consumer")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.env)
    for _ in range(args.repeat):
        print(json.dumps(run_once(args.events, overrides, args.rate)), flush=True)


if __name__ == "__main__":
    main()
