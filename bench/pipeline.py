"""Event pipeline benchmark: commit → hand-off and → processed latency, relay and consumer rates.

Runs `oms relay`, `oms consumer` and (phase 3) `oms worker` as real processes against
PostgreSQL, RabbitMQ and Redis (db 1, a queue of its own, deleted afterwards), on a fresh
database and unique queue names:

1. live: `--rate` orders per second for `--seconds` are committed while the relay and
   `--consumers` consumers run; each latency is `orders.dispatched_at - orders.created_at`
   (a consumer stamps `dispatched_at` right after `apply_async` returned, in the inbox
   transaction);
2. backlog: with the relay stopped, the same number of orders pile up in the outbox; the relay
   is started and the drain rate is N / (last `published_at` - relay start); the consumer's
   likewise from the last `dispatched_at`;
3. processed: with a worker of `--worker-concurrency` threads, `--processed-orders` orders at
   `--processed-rate` per second (the workers are not saturated); each latency is
   `processed_at - created_at` (the task sleeps 2 s by specification);
4. relay drain: `--drain` backlogs (default 10 000 and 100 000 rows, bulk-inserted) published
   by one relay with nothing consuming; events per second from relay start to the last row.

Usage:
    uv run python bench/pipeline.py [--rate 200 --seconds 30] [--drain 10000 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aio_pika
import psycopg
import redis
from psycopg import sql

from oms import migrate
from oms.config import Settings
from oms.db import create_engine, create_statement_engine
from oms.orders.schemas import OrderCreate, OrderItem
from oms.orders.service import create_order

ADMIN_DSN = os.environ.get(
    "OMS_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
RABBITMQ_URL = os.environ.get("OMS_BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
CELERY_BROKER_URL = os.environ.get("OMS_BENCH_CELERY_BROKER_URL", "redis://127.0.0.1:6379/1")


def create_database(suffix: str) -> tuple[str, str]:
    """A fresh database for one bench run: its name and URL (drop it with `drop_database`)."""
    name = f"oms_bench_{suffix}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name, ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"


def drop_database(name: str) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def pipeline_env(suffix: str, database_url: str) -> dict[str, str]:
    """Settings of every role of a bench run: its own database, queue names and Celery queue."""
    return {
        "APP_ENV": "test",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "WARNING",
        "DATABASE_URL": database_url,
        "RABBITMQ_URL": RABBITMQ_URL,
        "CELERY_BROKER_URL": CELERY_BROKER_URL,
        "CELERY_QUEUE": f"oms.bench.{suffix}",
        "RABBITMQ_EXCHANGE": f"oms.bench.{suffix}",
        "NEW_ORDER_QUEUE": f"new_order.bench.{suffix}",
    }


def create_user(db: psycopg.Connection[Any]) -> int:
    row = db.execute(
        "INSERT INTO users (email, hashed_password, created_at) "
        "VALUES ('bench@example.com', 'x', now()) RETURNING id"
    ).fetchone()
    assert row is not None
    return int(row[0])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def start(
    role: str, env: dict[str, str], cwd: str, *args: str, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """`oms <role>`; its output goes to `log` when given, else nowhere."""
    with log.open("wb") if log else open(os.devnull, "wb") as output:  # the child keeps its copy
        return subprocess.Popen(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "oms.cli", role, *args],
            env={"PATH": os.environ.get("PATH", ""), **env},
            cwd=cwd,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


async def create_orders(
    settings: Settings, user_id: int, count: int, rate: float | None = None
) -> None:
    """Commit `count` orders, as fast as possible or paced at `rate` per second."""
    engine = create_engine(settings)
    statements = create_statement_engine(engine)
    semaphore = asyncio.Semaphore(8)
    data = OrderCreate(items=[OrderItem(product_id="SKU-1", quantity=1, price=Decimal("9.99"))])

    async def one(index: int) -> None:
        if rate:
            await asyncio.sleep(index / rate)
        async with semaphore, statements.connect() as connection:
            await create_order(connection, user_id, data, None)

    await asyncio.gather(*(one(i) for i in range(count)))
    await engine.dispose()


def wait_until(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the pipeline did not catch up")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=200.0, help="live phase orders per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="live phase duration")
    parser.add_argument("--processed-orders", type=int, default=100)
    parser.add_argument("--processed-rate", type=float, default=20.0)
    parser.add_argument("--worker-concurrency", type=int, default=64)
    parser.add_argument("--consumers", type=int, default=1, help="consumer processes")
    parser.add_argument("--drain", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    n = max(1, int(args.rate * args.seconds))

    suffix = uuid.uuid4().hex[:10]
    db_name, db_url = create_database(suffix)
    env = {**pipeline_env(suffix, db_url), "PROCESSING_TIMEOUT_SECONDS": "3600"}
    settings = Settings(_env_file=None, **{k.lower(): v for k, v in env.items()})  # type: ignore[call-arg]
    processes: list[subprocess.Popen[bytes]] = []
    workdir = tempfile.mkdtemp()
    try:
        migrate.upgrade(db_url)
        with psycopg.connect(db_url, autocommit=True) as db:
            user_id = create_user(db)

            def count(query: str, *params: object) -> int:
                return int(db.execute(query, params).fetchone()[0])  # type: ignore[index]

            consumers = [start("consumer", env, workdir) for _ in range(args.consumers)]
            relay = start("relay", env, workdir)
            processes += [*consumers, relay]
            time.sleep(3)  # both connected and consuming

            # 1. Live: commit → hand-off.
            began = time.monotonic()
            asyncio.run(create_orders(settings, user_id, n, args.rate))
            committed_in = time.monotonic() - began
            wait_until(
                lambda: count("SELECT count(*) FROM orders WHERE dispatched_at IS NOT NULL") >= n,
                120,
            )
            stages = db.execute(
                "SELECT extract(epoch FROM o.dispatched_at - o.created_at)::float * 1000,"
                " extract(epoch FROM x.published_at - o.created_at)::float * 1000"
                " FROM orders o JOIN outbox x ON x.payload->>'order_id' = o.id::text"
            ).fetchall()
            latencies = [row[0] for row in stages]
            to_published = [row[1] for row in stages]

            # 2. Backlog: the relay drains N waiting events.
            relay.terminate()
            relay.wait(30)
            asyncio.run(create_orders(settings, user_id, n))
            relay_started = datetime.now(UTC)
            relay = start("relay", env, workdir)
            processes.append(relay)
            wait_until(
                lambda: count("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0, 120
            )
            first, last = db.execute(
                "SELECT min(published_at), max(published_at) FROM outbox WHERE published_at > %s",
                (relay_started,),
            ).fetchone()  # type: ignore[misc]
            batch = int(os.environ.get("RELAY_BATCH_SIZE", "200"))
            # From the first batch's commit to the last's: the steady publishing rate.
            steady_rate = (n - batch) / max((last - first).total_seconds(), 1e-6)
            drain_seconds = (last - relay_started).total_seconds()
            wait_until(
                lambda: count("SELECT count(*) FROM orders WHERE dispatched_at IS NULL") == 0, 300
            )
            handed = db.execute("SELECT max(dispatched_at) FROM orders").fetchone()[0]  # type: ignore[index]
            consumer_seconds = (handed - relay_started).total_seconds()

            # 3. Processed: commit -> the worker's processed mark, workers not saturated. The
            # tasks of phases 1 and 2 are dropped first, so they do not occupy the workers.
            redis.Redis.from_url(CELERY_BROKER_URL).delete(env["CELERY_QUEUE"])
            worker = start("worker", env, workdir, f"--concurrency={args.worker_concurrency}")
            processes.append(worker)
            time.sleep(3)  # connected to the broker
            marker = datetime.now(UTC)
            asyncio.run(
                create_orders(settings, user_id, args.processed_orders, args.processed_rate)
            )
            wait_until(
                lambda: (
                    count(
                        "SELECT count(*) FROM orders"
                        " WHERE processed_at IS NULL AND created_at > %s",
                        marker,
                    )
                    == 0
                ),
                180,
            )
            processed = [
                row[0]
                for row in db.execute(
                    "SELECT extract(epoch FROM processed_at - created_at)::float * 1000"
                    " FROM orders WHERE created_at > %s",
                    (marker,),
                ).fetchall()
            ]
            worker.terminate()
            worker.wait(60)
            for role in (*consumers, relay):
                role.terminate()
                role.wait(30)

            # 4. Relay drain of large backlogs, nothing consuming.
            drains = {
                size: drain_backlog(db, env, workdir, processes, user_id, size)
                for size in args.drain
            }
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait(30)
        asyncio.run(_delete_queues(env))
        redis.Redis.from_url(CELERY_BROKER_URL).delete(env["CELERY_QUEUE"])
        drop_database(db_name)

    result = {
        "orders": n,
        "commit_to_handoff_ms": {
            "p50": round(percentile(latencies, 50), 1),
            "p99": round(percentile(latencies, 99), 1),
            "mean": round(statistics.fmean(latencies), 1),
            "max": round(max(latencies), 1),
        },
        "commit_to_published_ms": {
            "p50": round(percentile(to_published, 50), 1),
            "p99": round(percentile(to_published, 99), 1),
        },
        "orders_committed_per_second": round(n / committed_in, 1),
        "relay_backlog_drain_events_per_second": round(n / drain_seconds, 1),
        "relay_backlog_drain_seconds": round(drain_seconds, 2),
        "relay_steady_events_per_second": round(steady_rate, 1),
        "consumers": args.consumers,
        "consumer_backlog_drain_events_per_second": round(n / consumer_seconds, 1),
        "commit_to_processed_ms": {
            "orders": len(processed),
            "rate": args.processed_rate,
            "worker_concurrency": args.worker_concurrency,
            "p50": round(percentile(processed, 50), 1),
            "p99": round(percentile(processed, 99), 1),
        },
        "relay_drain": drains,
        "note": "relay drain times include process start, connect and topology declaration",
    }
    print(json.dumps(result, indent=2))
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")


BULK_BACKLOG = """
WITH new_orders AS (
    INSERT INTO orders (id, user_id, items, total_price, status, version, created_at, updated_at)
    SELECT gen_random_uuid(), %(user_id)s, '[{"product_id": "SKU-1", "name": null,
            "quantity": 1, "price": 9.99}]'::jsonb, 9.99, 'PENDING', 1, now(), now()
    FROM generate_series(1, %(size)s)
    RETURNING id, user_id, created_at
)
INSERT INTO outbox (event_id, event_type, payload, headers, created_at, attempts)
SELECT event_id, 'new_order', jsonb_build_object(
        'event_id', event_id, 'event_type', 'new_order', 'occurred_at', created_at,
        'order_id', id, 'user_id', user_id, 'total_price', 9.99,
        'items', '[{"product_id": "SKU-1", "name": null, "quantity": 1, "price": 9.99}]'::jsonb),
    '{}'::jsonb, created_at, 0
FROM (SELECT gen_random_uuid() AS event_id, * FROM new_orders) AS events
"""


def drain_backlog(
    db: psycopg.Connection[Any],
    env: dict[str, str],
    workdir: str,
    processes: list[subprocess.Popen[bytes]],
    user_id: int,
    size: int,
) -> dict[str, float]:
    """Bulk-insert `size` orders with their outbox rows, then time one relay publishing them."""
    db.execute(BULK_BACKLOG, {"user_id": user_id, "size": size})
    started = datetime.now(UTC)
    relay = start("relay", env, workdir)
    processes.append(relay)
    wait_until(
        lambda: (
            int(
                db.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetchone()[0]  # type: ignore[index]
            )
            == 0
        ),
        900,
    )
    last = db.execute("SELECT max(published_at) FROM outbox").fetchone()[0]  # type: ignore[index]
    relay.terminate()
    relay.wait(30)
    asyncio.run(_purge_queue(env))
    seconds = (last - started).total_seconds()
    return {"seconds": round(seconds, 2), "events_per_second": round(size / seconds, 1)}


async def _purge_queue(env: dict[str, str]) -> None:
    connection = await aio_pika.connect(RABBITMQ_URL, timeout=5)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(env["NEW_ORDER_QUEUE"])
        await queue.purge()


async def _delete_queues(env: dict[str, str]) -> None:
    connection = await aio_pika.connect(RABBITMQ_URL, timeout=5)
    async with connection:
        channel = await connection.channel()
        for name in (env["NEW_ORDER_QUEUE"], env["NEW_ORDER_QUEUE"] + ".dlq"):
            await channel.queue_delete(name)
        await channel.exchange_delete(env["RABBITMQ_EXCHANGE"])


if __name__ == "__main__":
    main()
