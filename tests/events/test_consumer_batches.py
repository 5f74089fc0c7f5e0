"""The consumer hands off in batches and still exactly once (SPEC 5), as a real process.

The events are published here straight from the outbox rows (no relay), so the test decides
which copies reach the queue and in what order; the Celery queue in the test's own Redis shows
what was really handed to `process_order`.
"""

from __future__ import annotations

import base64
import collections
import json
from typing import Any

import aio_pika
import redis

from tests.events.conftest import RABBITMQ_URL, Pipeline
from tests.support.processes import eventually
from tests.support.redis_server import RedisServer

HANDED_OFF = "Event handed off to process_order"
BATCH = "Batch handed off to process_order"


def outbox_events(pipeline: Pipeline) -> list[tuple[str, str, dict[str, str]]]:
    rows = pipeline.query("SELECT event_id::text, payload::text, headers FROM outbox ORDER BY id")
    return [(event_id, payload, headers) for event_id, payload, headers in rows]


async def publish(pipeline: Pipeline, events: list[tuple[str, str, dict[str, str]]]) -> None:
    """Publish the events in this order, confirmed, as the relay would (SPEC 5 wire form)."""
    connection = await aio_pika.connect(RABBITMQ_URL, timeout=5)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        # The queue and its binding are the consumer's: declared by it, so it must be up.
        exchange = await channel.get_exchange(pipeline.env["RABBITMQ_EXCHANGE"])
        for event_id, payload, headers in events:
            message = aio_pika.Message(
                payload.encode(),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=event_id,
                type="new_order",
                headers=dict(headers),
            )
            await exchange.publish(message, routing_key="new_order", mandatory=True)


def queued_tasks(pipeline: Pipeline, redis_server: RedisServer) -> collections.Counter[str]:
    """How many `process_order` tasks wait in the Celery queue for each order id."""
    client = redis.Redis.from_url(redis_server.url(1))
    counts: collections.Counter[str] = collections.Counter()
    for raw in client.lrange(pipeline.env["CELERY_QUEUE"], 0, -1):
        message: dict[str, Any] = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        counts[args[0]] += 1
    client.close()
    return counts


async def test_copies_within_a_batch_and_across_batches_are_handed_off_once(
    pipeline: Pipeline, redis_server: RedisServer
) -> None:
    consumer = pipeline.start("consumer", CONSUMER_BATCH_SIZE="64", CONSUMER_PREFETCH="128")
    await eventually(lambda: consumer.events("Consumer started"), 30, pipeline.logs)
    order_ids = await pipeline.create_orders(200)
    events = outbox_events(pipeline)
    assert len(events) == 200
    # Every 4th event twice in a row (the same batch), then the first 50 again (later batches).
    stream = []
    for index, event in enumerate(events):
        stream += [event, event] if index % 4 == 0 else [event]
    stream += events[:50]
    await publish(pipeline, stream)

    await eventually(
        lambda: len(consumer.events("Duplicate event dropped")) == 100, 60, pipeline.logs
    )
    assert queued_tasks(pipeline, redis_server) == collections.Counter(dict.fromkeys(order_ids, 1))
    assert pipeline.query("SELECT count(*) FROM inbox") == [(200,)]
    assert pipeline.query("SELECT count(*) FROM orders WHERE dispatched_at IS NULL") == [(0,)]
    handed_off = [record["event_id"] for record in consumer.events(HANDED_OFF)]
    assert sorted(handed_off) == sorted(event_id for event_id, _, _ in events)
    # The request id still follows each event, and every batch says what it did.
    assert {record["request_id"] for record in consumer.events(HANDED_OFF)} == {
        f"test-request-{index}" for index in range(200)
    }
    batches = consumer.events(BATCH)
    assert sum(batch["handed_off"] for batch in batches) == 200
    assert sum(batch["duplicates"] for batch in batches) == 100
    assert max(batch["events"] for batch in batches) <= 64
    assert all("request_id" not in batch for batch in batches)  # no one event's id
    assert consumer.stop() == 0


async def test_a_consumer_killed_mid_batch_loses_nothing_and_processes_nothing_twice(
    pipeline: Pipeline, redis_server: RedisServer
) -> None:
    # Batches of at most 10 that wait 0.1 s to fill: the backlog takes seconds to hand off, so
    # the kill lands in the middle of it.
    slow = {
        "CONSUMER_BATCH_SIZE": "20",
        "CONSUMER_PREFETCH": "10",
        "CONSUMER_BATCH_WAIT_SECONDS": "0.1",
    }
    first = pipeline.start("consumer", **slow)
    await eventually(lambda: first.events("Consumer started"), 30, pipeline.logs)
    order_ids = await pipeline.create_orders(300)
    events = outbox_events(pipeline)
    await publish(pipeline, events)
    await eventually(lambda: len(first.events(BATCH)) >= 5, 30, pipeline.logs)
    first.kill()
    [(recorded,)] = pipeline.query("SELECT count(*) FROM inbox")
    assert recorded < 300

    second = pipeline.start("consumer")
    await eventually(
        lambda: pipeline.query("SELECT count(*) FROM inbox") == [(300,)], 60, pipeline.logs
    )
    # Nothing lost: every order has a task. A batch published but not committed when the kill
    # came is published again after its redelivery: at most one batch of second tasks, which
    # the worker recognises (processed once, below).
    tasks = queued_tasks(pipeline, redis_server)
    assert set(tasks) == set(order_ids)
    assert sum(tasks.values()) - len(order_ids) <= 10
    # No event was recorded as handed off twice (one killed after its commit but before its
    # log lines has fewer lines: its redeliveries are dropped as duplicates).
    handed_off = [r["event_id"] for c in (first, second) for r in c.events(HANDED_OFF)]
    assert len(handed_off) == len(set(handed_off))

    pipeline.start("worker", "--concurrency", "100")
    await pipeline.wait_processed(order_ids, 90)
    pipeline.assert_processed_exactly_once(order_ids)
