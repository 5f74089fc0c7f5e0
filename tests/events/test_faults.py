"""Whatever dies when, every order is processed exactly once (SPEC 5)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import aio_pika

from tests.events.conftest import PROCESSED, RABBITMQ_URL, Pipeline
from tests.support.processes import OmsProcess, eventually
from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import TcpProxy

HANDED_OFF = "Event handed off to process_order"


async def test_rabbitmq_outage_delays_events_but_loses_none(pipeline: Pipeline) -> None:
    # RabbitMQ "stops" for the relay and the consumer: a proxy we cut, the shared broker stays up.
    proxy = TcpProxy("127.0.0.1", 5672)
    await proxy.start()
    via_proxy = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
    pipeline.start("worker")
    consumer = pipeline.start("consumer", RABBITMQ_URL=via_proxy)
    relay = pipeline.start("relay", RABBITMQ_URL=via_proxy)
    await eventually(
        lambda: consumer.events("Consumer started") and relay.events("Connected to RabbitMQ"),
        30,
        pipeline.logs,
    )

    await proxy.stop()
    order_ids = await pipeline.create_orders(50)  # every one a 201
    await eventually(lambda: relay.events("Publishing failed; backing off"), 20, pipeline.logs)
    assert pipeline.query("SELECT count(*) FROM outbox WHERE published_at IS NULL") == [(50,)]
    # Every waiting row records the failed attempts and why.
    await eventually(
        lambda: (
            pipeline.query("SELECT bool_and(attempts > 0 AND last_error IS NOT NULL) FROM outbox")
            == [(True,)]
        ),
        20,
    )

    await proxy.start()
    await pipeline.wait_processed(order_ids, 90)
    pipeline.assert_processed_exactly_once(order_ids)
    assert relay.events("Publishing works again")
    assert [process.stop() for process in pipeline.processes] == [0, 0, 0]
    await proxy.stop()


async def test_consumer_killed_mid_stream_loses_and_duplicates_nothing(
    pipeline: Pipeline,
) -> None:
    pipeline.start("worker")
    pipeline.start("relay")
    consumer = pipeline.start("consumer", CONSUMER_PREFETCH="4")
    creating = asyncio.create_task(pipeline.create_orders(60, concurrency=4))
    await eventually(lambda: len(consumer.events(HANDED_OFF)) >= 5, 30, pipeline.logs)
    consumer.kill()

    order_ids = await creating
    pipeline.start("consumer")
    await pipeline.wait_processed(order_ids, 90)
    pipeline.assert_processed_exactly_once(order_ids)


async def test_worker_killed_during_the_sleep_runs_the_task_again_once(
    pipeline: Pipeline,
) -> None:
    # Only the broker's redelivery of the unacked task can bring it back here: the sweeper's
    # timeout is far beyond the test.
    overrides = {"CELERY_VISIBILITY_TIMEOUT_SECONDS": "3", "PROCESSING_TIMEOUT_SECONDS": "600"}
    first = pipeline.start("worker", **overrides)
    pipeline.start("consumer", **overrides)
    pipeline.start("relay", **overrides)
    [order_id] = await pipeline.create_orders(1)
    await eventually(lambda: first.events("Processing order"), 30, pipeline.logs)
    first.kill()
    assert pipeline.unprocessed([order_id]) == [order_id]

    second = pipeline.start("worker", **overrides)
    await eventually(lambda: second.events(PROCESSED.format(order_id)), 60, pipeline.logs)
    await pipeline.wait_processed([order_id], 10)
    pipeline.assert_processed_exactly_once([order_id])


async def test_redis_restart_drops_queued_tasks_and_the_sweeper_recovers_them(
    pipeline: Pipeline, redis_server: RedisServer
) -> None:
    overrides = {"PROCESSING_TIMEOUT_SECONDS": "8", "WORKER_CONCURRENCY": "16"}
    worker = pipeline.start("worker", **overrides)
    consumer = pipeline.start("consumer", **overrides)
    relay = pipeline.start("relay", **overrides)
    await eventually(lambda: consumer.events("Consumer started"), 30, pipeline.logs)
    order_ids = await pipeline.create_orders(50)
    await eventually(lambda: len(consumer.events(HANDED_OFF)) == 50, 30, pipeline.logs)

    redis_server.restart()  # no persistence: the tasks still queued are gone

    await pipeline.wait_processed(order_ids, 120)
    pipeline.assert_processed_exactly_once(order_ids)
    assert relay.events("Re-dispatched orders still unprocessed after the timeout")
    # The same worker process went on consuming after Redis came back.
    assert worker.running
    assert len(worker.events("Processing order")) > 16


async def test_a_duplicate_event_is_dropped_and_a_malformed_one_dead_lettered(
    pipeline: Pipeline,
) -> None:
    pipeline.start("worker")
    consumer = pipeline.start("consumer")
    pipeline.start("relay")
    [order_id] = await pipeline.create_orders(1)
    await pipeline.wait_processed([order_id], 30)

    [(event_id, payload)] = pipeline.query("SELECT event_id::text, payload::text FROM outbox")
    connection = await aio_pika.connect(RABBITMQ_URL, timeout=5)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange(pipeline.env["RABBITMQ_EXCHANGE"])
        again = aio_pika.Message(payload.encode(), message_id=event_id, type="new_order")
        await exchange.publish(again, routing_key="new_order")
        await eventually(lambda: consumer.events("Duplicate event dropped"), 30, pipeline.logs)

        garbage = aio_pika.Message(b'{"event_id": "not a uuid"', message_id="garbage")
        await exchange.publish(garbage, routing_key="new_order")
        dlq = await channel.get_queue(pipeline.env["NEW_ORDER_QUEUE"] + ".dlq")

        async def dead_lettered() -> aio_pika.abc.AbstractIncomingMessage | None:
            return await dlq.get(no_ack=True, fail=False)

        message = await eventually(dead_lettered, 30, pipeline.logs)
        assert message.body == b'{"event_id": "not a uuid"'
        assert message.message_id == "garbage"

    pipeline.assert_processed_exactly_once([order_id])
    assert len(consumer.events(HANDED_OFF)) == 1


async def test_worker_heals_after_its_redis_stops_while_it_holds_tasks(
    pipeline: Pipeline, redis_server: RedisServer
) -> None:
    # 8 slots for 40 orders: some tasks sleep in the worker, the rest wait in the queue when
    # Redis goes away. Their acks then fail, and Celery/kombu alone never take a task again.
    worker = await _start_with_eight_slots(pipeline)
    order_ids = await pipeline.create_orders(40)
    await eventually(lambda: _started(worker) >= 8, 30, pipeline.logs)

    redis_server.shutdown()  # SHUTDOWN NOSAVE while 8 tasks are in their sleep
    await asyncio.sleep(2)
    # Back once the sleeping tasks' acks have failed (the case Celery/kombu do not recover from;
    # redis-py retries an ack for a few seconds), or a few seconds later whatever happened.
    with contextlib.suppress(AssertionError):
        await eventually(lambda: _ack_failed(worker) > 0, 6)
    redis_server.start()

    await _assert_healed(pipeline, worker, order_ids)


async def test_worker_heals_when_its_redis_stops_as_some_of_its_tasks_end(
    pipeline: Pipeline, redis_server: RedisServer
) -> None:
    # 6 of 8 slots start their task 1 s before the other 2. Redis is away when the 6 end, so
    # their acks fail and kombu counts their slots as taken for good, and back when the 2 end.
    # The worker still takes tasks, 2 at a time: it is not idle, yet it must be restarted.
    worker = await _start_with_eight_slots(pipeline)
    order_ids = await pipeline.create_orders(6)
    await eventually(lambda: _started(worker) >= 6, 30, pipeline.logs)
    await asyncio.sleep(1.2)
    order_ids += await pipeline.create_orders(34)
    await eventually(lambda: _started(worker) >= 8, 30, pipeline.logs)

    redis_server.shutdown()
    await eventually(lambda: _ack_failed(worker) >= 6, 10, pipeline.logs)
    redis_server.start()

    await _assert_healed(pipeline, worker, order_ids)
    [restart] = worker.events(STALLED)
    # Restarted for its lost slots while it still took tasks, not for taking none.
    assert 0 < restart["slots_stranded"] < 8, pipeline.logs()
    assert restart["idle_seconds"] < 5, pipeline.logs()


STALLED = "Worker stopped consuming: tasks wait while slots are free; restarting it"


async def _start_with_eight_slots(pipeline: Pipeline) -> OmsProcess:
    """A worker with 8 slots, a consumer and a relay; the worker, once events are consumed."""
    worker = pipeline.start("worker", WORKER_CONCURRENCY="8")
    consumer = pipeline.start("consumer")
    pipeline.start("relay")
    await eventually(lambda: consumer.events("Consumer started"), 30, pipeline.logs)
    return worker


def _started(worker: OmsProcess) -> int:
    """How many tasks the worker has begun."""
    return len(worker.events("Processing order"))


async def _assert_healed(pipeline: Pipeline, worker: OmsProcess, order_ids: list[str]) -> None:
    await pipeline.wait_processed(order_ids, 60)
    pipeline.assert_processed_exactly_once(order_ids)
    # No manual step: the same `oms worker` is still up, and stops cleanly.
    assert worker.running
    assert worker.stop() == 0
    # Errors are single JSON lines, never raw tracebacks.
    assert [line for line in worker.lines if not line.startswith("{")] == [], pipeline.logs()


def _ack_failed(worker: OmsProcess) -> int:
    """How many acks the worker could not send."""
    return sum(str(record["event"]).startswith("Couldn't ack") for record in worker.records())


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has exited


async def test_the_worker_restarts_its_celery_process_and_leaves_no_orphan(
    pipeline: Pipeline,
) -> None:
    worker = pipeline.start("worker", WORKER_CONCURRENCY="4")
    pipeline.start("consumer")
    pipeline.start("relay")
    [first] = await eventually(lambda: worker.events("Celery worker started"), 30, pipeline.logs)
    await eventually(lambda: _ready(worker), 30, pipeline.logs)

    os.kill(first["pid"], signal.SIGKILL)  # the Celery process dies; `oms worker` goes on
    await eventually(lambda: len(worker.events("Celery worker started")) == 2, 30, pipeline.logs)
    order_ids = await pipeline.create_orders(5)
    await pipeline.wait_processed(order_ids, 60)
    pipeline.assert_processed_exactly_once(order_ids)

    second = worker.events("Celery worker started")[-1]["pid"]
    assert worker.stop() == 0  # SIGTERM: warm shutdown of the Celery process, then exit 0
    assert not _alive(second)

    # Killed outright, the parent takes its Celery process with it.
    again = pipeline.start("worker", WORKER_CONCURRENCY="4")
    [started] = await eventually(lambda: again.events("Celery worker started"), 30, pipeline.logs)
    again.kill()
    await eventually(lambda: not _alive(started["pid"]), 10, pipeline.logs)


def _ready(worker: OmsProcess) -> bool:
    """Celery's `<hostname> ready.` line: the worker consumes."""
    return any(
        record.get("logger") == "celery.apps.worker" and str(record["event"]).endswith(" ready.")
        for record in worker.records()
    )
