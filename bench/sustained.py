"""Sustained pipeline benchmark: does processing keep up with orders arriving for minutes?

One `oms relay`, one `oms consumer` and one `oms worker` run as real processes with default
settings (only names, URLs and metrics ports are set) against PostgreSQL, RabbitMQ and Redis db 1,
on a fresh database and unique queue names. Orders are committed at `--rate` per second for
`--seconds` through the API's own service function (the statement `POST /orders/` runs; no HTTP
client burns the cores the pipeline needs). Reported:

- offered and processed orders per second, and how long after the last commit the last order
  was processed (keeping up means about the task's 2 s);
- commit -> consumer hand-off p50/p99 (`dispatched_at - created_at`) and commit -> processed
  p50/p99 (`processed_at - created_at`; the task sleeps 2 s by specification);
- the Celery queue's maximum depth, sampled every second;
- duplicate task runs per order: runs that found their order already processed (the worker's
  `oms_tasks_processed_total{outcome="already_processed"}`), and the sweeper's re-dispatches.

Usage:
    uv run python -m bench.sustained [--rate 200 --seconds 300] [--output FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import psycopg
import redis

from bench.pipeline import (
    CELERY_BROKER_URL,
    _delete_queues,
    create_database,
    create_orders,
    create_user,
    drop_database,
    percentile,
    pipeline_env,
    start,
)
from oms import migrate
from oms.config import Settings
from oms.worker.waiting import priority_lists, running_key, waiting_key

ALREADY_PROCESSED = 'oms_tasks_processed_total{outcome="already_processed"}'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def scrape(port: int, series: str) -> float:
    """The sum of every sample of `series` on a metrics endpoint (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    pattern = rf"^{re.escape(series)}(?:\{{[^}}]*\}})? (\S+)$"
    return sum(float(value) for value in re.findall(pattern, text, re.MULTILINE))


class QueueSampler(threading.Thread):
    """The Celery queue's depth, once a second, until stopped."""

    def __init__(self, queue: str) -> None:
        super().__init__(daemon=True)
        self._client = redis.Redis.from_url(CELERY_BROKER_URL, socket_timeout=2)
        self._lists = priority_lists(queue)
        self.samples: list[int] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(1.0):
            try:
                self.samples.append(sum(self._client.llen(name) for name in self._lists))
            except redis.RedisError:
                continue


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="orders per second")
    parser.add_argument("--seconds", type=float, default=300.0, help="how long orders arrive")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    count = max(1, int(args.rate * args.seconds))

    suffix = uuid.uuid4().hex[:10]
    db_name, db_url = create_database(suffix)
    env = pipeline_env(suffix, db_url)
    queue = env["CELERY_QUEUE"]
    settings = Settings(_env_file=None, **{k.lower(): v for k, v in env.items()})  # type: ignore[call-arg]
    ports = {role: free_port() for role in ("relay", "consumer", "worker")}
    processes: list[subprocess.Popen[bytes]] = []
    workdir = tempfile.mkdtemp()
    logs = Path(workdir)
    sampler = QueueSampler(queue)
    try:
        migrate.upgrade(db_url)
        with psycopg.connect(db_url, autocommit=True) as db:
            user_id = create_user(db)

            def unprocessed() -> int:
                row = db.execute("SELECT count(*) FROM orders WHERE processed_at IS NULL")
                return int(row.fetchone()[0])  # type: ignore[index]

            for role, port in ports.items():
                role_env = {**env, "METRICS_PORT": str(port)}
                processes.append(start(role, role_env, workdir, log=logs / f"{role}.log"))
            time.sleep(5)  # connected, consuming
            sampler.start()
            began = time.monotonic()
            asyncio.run(create_orders(settings, user_id, count, args.rate))
            committed_in = time.monotonic() - began
            deadline = time.monotonic() + 600
            while unprocessed() and time.monotonic() < deadline:
                time.sleep(0.5)
            sampler.stopped.set()
            left = unprocessed()
            time.sleep(1)  # the worker's last counters
            already = scrape(
                ports["worker"], 'oms_tasks_processed_total{outcome="already_processed"}'
            )
            redispatched = scrape(ports["relay"], "oms_orders_redispatched_total")
            rows = db.execute(
                "SELECT extract(epoch FROM dispatched_at - created_at)::float * 1000,"
                " extract(epoch FROM processed_at - created_at)::float * 1000"
                " FROM orders WHERE processed_at IS NOT NULL"
            ).fetchall()
            span = db.execute(
                "SELECT extract(epoch FROM max(processed_at) - min(processed_at))::float,"
                " extract(epoch FROM max(processed_at) - max(created_at))::float FROM orders"
            ).fetchone()
            assert span is not None
    finally:
        sampler.stopped.set()
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
        asyncio.run(_delete_queues(env))
        broker = redis.Redis.from_url(CELERY_BROKER_URL)
        broker.delete(*priority_lists(queue), waiting_key(settings), running_key(settings))
        drop_database(db_name)

    handoff = [row[0] for row in rows if row[0] is not None]
    processed = [row[1] for row in rows]
    offered = count / committed_in
    processed_rate = len(processed) / max(span[0] or 0.0, 1e-6)
    result = {
        "orders": count,
        "seconds": args.seconds,
        "offered_per_second": round(offered, 1),
        "processed_per_second": round(processed_rate, 1),
        "keeps_up": left == 0 and processed_rate >= 0.98 * offered,
        "unprocessed_at_end": left,
        "last_processed_after_last_commit_s": round(span[1] or 0.0, 2),
        "commit_to_handoff_ms": {
            "p50": round(percentile(handoff, 50), 1),
            "p99": round(percentile(handoff, 99), 1),
        },
        "commit_to_processed_ms": {
            "p50": round(percentile(processed, 50), 1),
            "p99": round(percentile(processed, 99), 1),
        },
        "max_queue_depth": max(sampler.samples, default=0),
        "duplicate_runs": int(already),
        "redispatched": int(redispatched),
        "duplicates_per_order": round(already / count, 4),
        # The watchdog restarting a worker that was only busy would be a false alarm.
        "worker_restarts": (logs / "worker.log").read_text().count("Worker stopped consuming"),
    }
    print(json.dumps(result, indent=2))
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
