"""The sweeper re-dispatches lost tasks only: a backlog is not a loss, and it shows (SPEC 5, 7)."""

from __future__ import annotations

import asyncio
import re
import subprocess

import httpx

from tests.events.conftest import Pipeline
from tests.support.processes import OMS, eventually, free_port

REDISPATCHED = "Re-dispatched orders still unprocessed after the timeout"


def _gauge(exposition: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", exposition, re.MULTILINE)
    assert match, f"{name} missing from the metrics"
    return float(match.group(1))


async def test_a_backlog_longer_than_the_timeout_yields_no_duplicate_task(
    pipeline: Pipeline,
) -> None:
    # 4 slots and 2 s per task: 40 orders take 20 s, four times the processing timeout, so most
    # orders wait in the queue long past it while the sweeper runs every second. (The timeout
    # stays above a task's own 2 s, as it must: a task running longer than it counts as lost.)
    overrides = {
        "WORKER_CONCURRENCY": "4",
        "PROCESSING_TIMEOUT_SECONDS": "5",
        "SWEEPER_INTERVAL_SECONDS": "1",
    }
    metrics_port = free_port()
    worker = pipeline.start("worker", **overrides)
    consumer = pipeline.start("consumer", **overrides)
    relay = pipeline.start("relay", **overrides, METRICS_PORT=str(metrics_port))
    await eventually(lambda: consumer.events("Consumer started"), 30, pipeline.logs)
    order_ids = await pipeline.create_orders(40)

    # The backlog is visible to an operator: the relay's gauges and `oms check`.
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{metrics_port}", timeout=5) as http:

        async def backlog_gauges() -> tuple[float, float] | None:
            exposition = (await http.get("/metrics")).text
            depth = _gauge(exposition, "oms_celery_queue_depth")
            age = _gauge(exposition, "oms_oldest_unprocessed_order_age_seconds")
            return (depth, age) if depth >= 10 and age >= 3 else None

        await eventually(backlog_gauges, 20, pipeline.logs)
    check = await asyncio.to_thread(
        subprocess.run,
        [OMS, "check"],
        env={**pipeline.env, **overrides},
        cwd=pipeline.workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    waiting = re.search(r"(\d+) tasks waiting, (\d+) running, 0 re-dispatched", check.stdout)
    assert waiting, check.stdout
    assert int(waiting.group(1)) > 0
    assert int(waiting.group(2)) == 4
    assert re.search(r"[1-9]\d* orders unprocessed \(oldest [1-9]\d* s old\)", check.stdout)

    await pipeline.wait_processed(order_ids, 90)
    pipeline.assert_processed_exactly_once(order_ids)
    assert relay.events(REDISPATCHED) == []
    # Every task the worker took was a first run: none found its order already processed.
    assert len(worker.events("Processing order")) == 40
    assert worker.events("Order already processed; nothing to do") == []
