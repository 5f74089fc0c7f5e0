"""The whole pipeline with real processes: API → outbox → relay → RabbitMQ → consumer → Celery."""

from __future__ import annotations

from tests.events.conftest import PROCESSED, Pipeline
from tests.support.processes import eventually


async def test_order_is_processed_by_the_worker_with_the_request_id(pipeline: Pipeline) -> None:
    worker = pipeline.start("worker")
    consumer = pipeline.start("consumer")
    pipeline.start("relay")

    [order_id] = await pipeline.create_orders(1)

    line = await eventually(lambda: worker.events(PROCESSED.format(order_id)), 30, pipeline.logs)
    assert line[0]["level"] == "info"
    assert line[0]["request_id"] == "test-request-0"
    handed_off = consumer.events("Event handed off to process_order")
    assert [r["request_id"] for r in handed_off] == ["test-request-0"]
    await pipeline.wait_processed([order_id], 10)
    pipeline.assert_processed_exactly_once([order_id])

    # The worker refreshed the cache: the API serves the processed order.
    response = await pipeline.client.get(f"/orders/{order_id}/", headers=pipeline.user.headers)
    assert response.json()["processed_at"] is not None


async def test_each_role_exits_cleanly_on_sigterm(pipeline: Pipeline) -> None:
    processes = [pipeline.start(role) for role in ("worker", "consumer", "relay")]
    await eventually(
        lambda: all(p.records() for p in processes) and processes[1].events("Consumer started"),
        30,
        pipeline.logs,
    )
    [order_id] = await pipeline.create_orders(1)
    worker = processes[0]
    await eventually(lambda: worker.events("Processing order"), 30, pipeline.logs)

    # The worker's warm shutdown finishes the task it is sleeping in before exiting.
    assert [process.stop() for process in processes] == [0, 0, 0], pipeline.logs()
    pipeline.assert_processed_exactly_once([order_id])
