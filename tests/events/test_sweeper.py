"""The sweeper re-dispatches lost tasks only: a backlog is not a loss, and it shows (SPEC 5, 7)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess

import httpx
import kombu
import redis

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


async def test_a_task_a_dying_worker_took_off_the_queue_is_dispatched_again(
    pipeline: Pipeline,
) -> None:
    # kombu's Redis transport takes a message off the list (BRPOP) before it records it as
    # unacked: a worker killed in between loses the task, while the order's waiting mark stays.
    # A message a live worker holds (recorded as unacked, not acked yet) is not lost.
    overrides = {"PROCESSING_TIMEOUT_SECONDS": "5"}
    queue = pipeline.env["CELERY_QUEUE"]
    broker = redis.Redis.from_url(pipeline.env["CELERY_BROKER_URL"], socket_timeout=5)
    consumer = pipeline.start("consumer", **overrides)
    relay = pipeline.start("relay", **overrides)
    await eventually(lambda: consumer.events("Consumer started"), 30, pipeline.logs)
    order_ids = await pipeline.create_orders(2)
    await eventually(lambda: broker.llen(queue) == 2, 30, pipeline.logs)

    lost = _order_of_task(broker.rpop(queue))  # the dying worker's BRPOP, never recorded
    with kombu.Connection(
        pipeline.env["CELERY_BROKER_URL"], transport_options={"socket_timeout": 5}
    ) as slow_worker:
        held = slow_worker.default_channel.basic_get(queue, no_ack=False)
        assert held is not None
        held_order = _order_of_task(held.body)
        assert {lost, held_order} == set(order_ids)

        def redispatched() -> int:
            return sum(int(record["count"]) for record in relay.events(REDISPATCHED))

        await eventually(redispatched, 60, pipeline.logs)
        await asyncio.sleep(3)  # three more sweeps: the held task is still not taken for lost
        assert redispatched() == 1
        assert broker.llen(queue) == 1  # the lost order's new task
        worker = pipeline.start("worker", **overrides)
        await pipeline.wait_processed([lost], 30)
    # The slow worker goes away without acking: kombu puts its message back in the queue.
    await pipeline.wait_processed(order_ids, 30)
    pipeline.assert_processed_exactly_once(order_ids)
    assert worker.events("Order already processed; nothing to do") == []
    broker.close()


def _order_of_task(body: bytes | str | None) -> str:
    """The order id in a raw task message from the queue, or a decoded task body."""
    assert body is not None
    message = json.loads(body)
    if isinstance(message, dict):  # the transport's envelope: the task body is base64
        message = json.loads(base64.b64decode(message["body"]))
    order_id: str = message[0][0]
    return order_id
