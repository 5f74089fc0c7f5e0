"""The sweeper re-dispatches lost tasks only: a backlog is not a loss (SPEC 5)."""

from __future__ import annotations

from tests.events.conftest import Pipeline
from tests.support.processes import eventually

REDISPATCHED = "Re-dispatched orders still unprocessed after the timeout"


async def test_a_backlog_longer_than_the_timeout_yields_no_duplicate_task(
    pipeline: Pipeline,
) -> None:
    # 4 slots and 2 s per task: 40 orders take 20 s, ten times the processing timeout, so most
    # orders wait in the queue long past it while the sweeper runs every second.
    overrides = {
        "WORKER_CONCURRENCY": "4",
        "PROCESSING_TIMEOUT_SECONDS": "2",
        "SWEEPER_INTERVAL_SECONDS": "1",
    }
    worker = pipeline.start("worker", **overrides)
    consumer = pipeline.start("consumer", **overrides)
    relay = pipeline.start("relay", **overrides)
    await eventually(lambda: consumer.events("Consumer started"), 30, pipeline.logs)
    order_ids = await pipeline.create_orders(40)

    await pipeline.wait_processed(order_ids, 90)
    pipeline.assert_processed_exactly_once(order_ids)
    assert relay.events(REDISPATCHED) == []
    # Every task the worker took was a first run: none found its order already processed.
    assert len(worker.events("Processing order")) == 40
    assert worker.events("Order already processed; nothing to do") == []
