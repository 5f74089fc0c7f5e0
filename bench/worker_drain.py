"""Worker capacity: how fast one `oms worker` drains a preloaded Celery queue, and at what CPU.

A private `redis-server` (the broker and the cache), a fresh PostgreSQL database with `--tasks`
unprocessed orders, and `--tasks` `process_order` tasks queued before the worker starts. Then one
`oms worker` (default settings unless `--concurrency` / `--pool` say otherwise) drains the queue.
Reported: tasks/s over the drain (first to last `processed_at`, plus the 2 s sleep of the first
task), the peak number of tasks in flight (the worker's `running` marks), the CPU% of the
worker's whole process tree over the drain (100 % = one core) and its peak resident memory.

Usage:
    uv run python -m bench.worker_drain [--tasks 3000] [--concurrency N] [--pool threads]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import redis
from psycopg import sql

from oms import migrate
from oms.config import Settings

ADMIN_DSN = os.environ.get("OMS_BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of a process and its descendants (Linux /proc)."""
    total, pending = 0.0, [root]
    while pending:
        pid = pending.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        pending += [int(child) for child in children]
    return total


def tree_rss_mib(root: int) -> float:
    """Resident memory of a process and its descendants (Linux /proc)."""
    total, pending = 0, [root]
    while pending:
        pid = pending.pop()
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        pending += [int(child) for child in children]
    return total / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=None, help="default: the setting's")
    parser.add_argument("--pool", default=None, help="default: the setting's")
    parser.add_argument("--workers", type=int, default=1, help="`oms worker` processes")
    parser.add_argument("--log-level", default=None, help="default: the setting's (INFO)")
    parser.add_argument("--timeout", type=float, default=55.0, help="give up after this long")
    args = parser.parse_args()

    suffix = uuid.uuid4().hex[:10]
    db_name = f"oms_bench_worker_{suffix}"
    workdir = tempfile.mkdtemp()
    port = free_port()
    redis_process = subprocess.Popen(  # noqa: S603 - a local redis-server
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
         "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db_name)))
    db_url = ADMIN_DSN.rsplit("/", 1)[0] + f"/{db_name}"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "APP_ENV": "test",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "LOG_FORMAT": "json",
        "DATABASE_URL": db_url,
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{port}/1",
        "REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "CELERY_QUEUE": f"oms.bench.{suffix}",
        "PROCESSING_TIMEOUT_SECONDS": "3600",
    }
    if args.concurrency:
        env["WORKER_CONCURRENCY"] = str(args.concurrency)
    if args.log_level:
        env["LOG_LEVEL"] = args.log_level
    if args.pool:
        env["WORKER_POOL"] = args.pool
    workers: list[subprocess.Popen[bytes]] = []
    try:
        migrate.upgrade(db_url)
        with psycopg.connect(db_url, autocommit=True) as db:
            user_id = db.execute(
                "INSERT INTO users (email, hashed_password, created_at) "
                "VALUES ('bench@example.com', 'x', now()) RETURNING id"
            ).fetchone()[0]  # type: ignore[index]
            order_ids = [
                row[0]
                for row in db.execute(
                    "INSERT INTO orders (id, user_id, items, total_price, status, version, "
                    "created_at, updated_at) SELECT gen_random_uuid(), %s, '[]'::jsonb, 1, "
                    "'PENDING', 1, now(), now() FROM generate_series(1, %s) RETURNING id",
                    (user_id, args.tasks),
                ).fetchall()
            ]

            # Queue the tasks the way the consumer does, before any worker runs.
            settings = Settings(_env_file=None, **{k.lower(): v for k, v in env.items()})  # type: ignore[call-arg]
            from oms.worker.celery_app import configure_celery
            from oms.worker.tasks import process_order

            configure_celery(settings)
            for order_id in order_ids:
                process_order.apply_async(args=(str(order_id),), kwargs={"request_id": None})
            broker = redis.Redis.from_url(env["CELERY_BROKER_URL"], socket_timeout=5)
            queued = broker.llen(env["CELERY_QUEUE"])

            workers = [
                subprocess.Popen(
                    [sys.executable, "-m", "oms.cli", "worker"],
                    env=env,
                    cwd=workdir,
                    stdout=subprocess.DEVNULL,
                )
                for _ in range(args.workers)
            ]
            started = time.monotonic()
            cpu_at_first: float | None = None
            first_at: float | None = None
            peak_in_flight = 0
            peak_rss = 0.0
            done = 0
            while done < args.tasks and time.monotonic() - started < args.timeout:
                time.sleep(0.25)
                in_flight = int(broker.zcard(f"{env['CELERY_QUEUE']}:running"))
                peak_in_flight = max(peak_in_flight, in_flight)
                peak_rss = max(peak_rss, sum(tree_rss_mib(worker.pid) for worker in workers))
                if first_at is None and in_flight:
                    first_at, cpu_at_first = (
                        time.monotonic(),
                        sum(tree_cpu_seconds(worker.pid) for worker in workers),
                    )
                done = int(
                    db.execute(
                        "SELECT count(*) FROM orders WHERE processed_at IS NOT NULL"
                    ).fetchone()[0]  # type: ignore[index]
                )
            ended = time.monotonic()
            cpu = sum(tree_cpu_seconds(worker.pid) for worker in workers)
            (span,) = db.execute(
                "SELECT extract(epoch FROM max(processed_at) - min(processed_at)) FROM orders"
            ).fetchone()  # type: ignore[misc]
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
        redis_process.kill()
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db_name))
            )
        shutil.rmtree(workdir, ignore_errors=True)

    drain_seconds = float(span or 0) + 2.0  # the first task's own sleep
    busy = ended - (first_at or started)
    result = {
        "tasks": args.tasks,
        "queued_before_start": queued,
        "processed": done,
        "concurrency": args.concurrency or "default",
        "pool": args.pool or "default",
        "workers": args.workers,
        "drain_seconds": round(drain_seconds, 2),
        "tasks_per_second": round(done / drain_seconds, 1),
        "peak_in_flight": peak_in_flight,
        "peak_rss_mib": round(peak_rss, 1),
        "worker_cpu_percent": round(100 * (cpu - (cpu_at_first or 0)) / busy, 1) if busy else None,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
