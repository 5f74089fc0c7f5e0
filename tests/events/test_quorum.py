"""Quorum queues: what the broker now does for us, and the way from the classic queues."""

from __future__ import annotations

import re
import subprocess

import aio_pika
import aiormq.exceptions
import pytest

from oms.events.rabbitmq import dead_letter_queue_name
from tests.events.conftest import RABBITMQ_URL, Pipeline
from tests.support.processes import OMS, eventually

CONNECTED = "Connected to RabbitMQ"
MISMATCH = "RabbitMQ queue mismatch: using the queue as it exists"


def classic(queue: str) -> dict[str, dict[str, str]]:
    """The classic queues of earlier releases: their arguments by name."""
    dlq = dead_letter_queue_name(queue)
    return {
        queue: {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq},
        dlq: {},
    }


def _rabbitmq_row(env: dict[str, str]) -> tuple[int, list[str]]:
    result = subprocess.run(
        [OMS, "check"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    [row] = [line for line in result.stdout.splitlines() if line.startswith("rabbitmq")]
    return result.returncode, re.split(r"\s{2,}", row.strip())


async def test_new_order_is_a_quorum_queue_that_dead_letters_after_the_delivery_limit(
    pipeline: Pipeline,
) -> None:
    queue = pipeline.env["NEW_ORDER_QUEUE"]
    relay = pipeline.start("relay", RABBITMQ_DELIVERY_LIMIT="2")
    await eventually(lambda: relay.events(CONNECTED), within=30, message=relay.output)

    connection = await aio_pika.connect(RABBITMQ_URL, timeout=5)
    async with connection:
        # The classic declaration of earlier releases is refused: these are quorum queues.
        for name in (queue, dead_letter_queue_name(queue)):
            channel = await connection.channel()
            with pytest.raises(
                aiormq.exceptions.ChannelPreconditionFailed, match="inequivalent arg"
            ):
                await channel.declare_queue(name, durable=True, arguments=classic(queue)[name])

        channel = await connection.channel()
        await channel.default_exchange.publish(
            aio_pika.Message(b"{}", message_id="poison"), routing_key=queue
        )
        source = await channel.declare_queue(queue, passive=True)
        dlq = await channel.declare_queue(dead_letter_queue_name(queue), passive=True)
        # A consumer that keeps returning the message (a crash, a handler bug): the broker
        # dead-letters it after RABBITMQ_DELIVERY_LIMIT redeliveries, no code of ours needed.
        deliveries = 0
        while (message := await source.get(timeout=5, fail=False)) is not None:
            deliveries += 1
            await message.nack(requeue=True)
            assert deliveries <= 10
        dead = await eventually(lambda: dlq.get(timeout=5, fail=False), within=10)
        assert dead.message_id == "poison"
        assert deliveries == 3  # the first delivery and 2 redeliveries
        await dead.ack()
    assert relay.running


async def test_an_existing_classic_queue_is_reported_and_used_as_it_is(
    pipeline: Pipeline,
) -> None:
    queue = pipeline.env["NEW_ORDER_QUEUE"]
    connection = await aio_pika.connect(RABBITMQ_URL, timeout=5)
    async with connection:
        # What earlier releases declared.
        channel = await connection.channel()
        for name in (dead_letter_queue_name(queue), queue):
            await channel.declare_queue(name, durable=True, arguments=classic(queue)[name])

    code, row = _rabbitmq_row(pipeline.env)
    assert code == 1
    assert row[1] == "queue mismatch"
    assert f"queue {queue} exists with other arguments" in row[-1]
    assert "PRECONDITION_FAILED" in row[-1]
    assert "RABBITMQ_QUEUE_TYPE" in row[-1]

    # The new release on the old queues: each process says so and works, no crash loop.
    processes = [pipeline.start(role) for role in ("relay", "consumer", "worker")]
    for process in processes[:2]:
        await eventually(lambda p=process: p.events(MISMATCH), within=30, message=process.output)
    [order_id] = await pipeline.create_orders(1)
    await pipeline.wait_processed([order_id], within=30)
    assert all(process.running for process in processes), pipeline.logs()

    # Until the queues are moved, RABBITMQ_QUEUE_TYPE=classic matches them.
    code, row = _rabbitmq_row({**pipeline.env, "RABBITMQ_QUEUE_TYPE": "classic"})
    assert row[1] == "ok"
    assert f"classic queue {queue}" in row[-1]
