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
