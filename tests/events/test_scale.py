"""Replicas: two relays and two consumers share the work without doing any of it twice."""

from __future__ import annotations

from tests.events.conftest import Pipeline
from tests.support.processes import eventually

HANDED_OFF = "Event handed off to process_order"
ORDERS = 500


async def test_two_relays_and_two_consumers_process_500_orders_exactly_once(
    pipeline: Pipeline,
) -> None:
    # The task sleeps 2 s as specified, so the worker gets enough threads to finish in ~20 s.
    pipeline.start("worker", "--concurrency", "50")
    consumers = [pipeline.start("consumer") for _ in range(2)]
    relays = [pipeline.start("relay", RELAY_BATCH_SIZE="50") for _ in range(2)]
    await eventually(
        lambda: (
            all(c.events("Consumer started") for c in consumers)
            and all(r.events("Connected to RabbitMQ") for r in relays)
        ),
        30,
        pipeline.logs,
    )

    order_ids = await pipeline.create_orders(ORDERS, concurrency=20)
    await pipeline.wait_processed(order_ids, 120)

    pipeline.assert_processed_exactly_once(order_ids)
    # Each event was published once and handed off once (SKIP LOCKED between the relays).
    handed_off = [r["event_id"] for c in consumers for r in c.events(HANDED_OFF)]
    assert len(handed_off) == len(set(handed_off)) == ORDERS
    assert all(c.events(HANDED_OFF) for c in consumers)
    assert pipeline.query("SELECT count(*), max(attempts) FROM outbox") == [(ORDERS, 1)]
    assert pipeline.query("SELECT count(*) FROM inbox") == [(ORDERS,)]
