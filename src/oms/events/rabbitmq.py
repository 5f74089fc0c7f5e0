"""RabbitMQ transport: one robust aio-pika connection per process.

The publish channel has publisher confirms and `on_return_raises`, and every publish is
`mandatory`, so an event is only counted as sent once the broker has routed and stored it.
Queues and channels are held by strong references: aio-pika's robust reconnect keeps them in a
WeakSet and would silently stop consuming after a reconnect otherwise.

`new_order` and its DLQ are quorum queues by default (RABBITMQ_QUEUE_TYPE): replicated over a
cluster's nodes, with a broker-side delivery limit and at-least-once dead-lettering. A queue
that already exists with other arguments (the classic `new_order` of earlier releases) cannot be
re-declared: the broker closes the channel with PRECONDITION_FAILED. Each process then reports
the mismatch and goes on with the queue as it exists, instead of failing at every restart;
`oms check` reports it too. README "Deploying" says how to move to quorum queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq.exceptions
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from oms.config import Settings
from oms.events.bus import ATTEMPT_HEADER, DeliveryHandler, OutgoingEvent, attempt_of
from oms.events.schemas import NEW_ORDER

log = structlog.get_logger(__name__)


def dead_letter_queue_name(queue: str) -> str:
    return f"{queue}.dlq"


def queue_arguments(settings: Settings, queue: str) -> dict[str, Any]:
    """The declare arguments of `queue` (NEW_ORDER_QUEUE or its DLQ) for RABBITMQ_QUEUE_TYPE."""
    arguments: dict[str, Any] = {}
    if settings.rabbitmq_queue_type == "quorum":
        arguments["x-queue-type"] = "quorum"
    if queue == settings.new_order_queue:
        # A rejected message is routed by the broker itself to the DLQ (via the default exchange).
        arguments["x-dead-letter-exchange"] = ""
        arguments["x-dead-letter-routing-key"] = dead_letter_queue_name(queue)
        if settings.rabbitmq_queue_type == "quorum":
            # A message redelivered this often (a consumer crashing on it, a handler bug's
            # requeue) is dead-lettered by the broker instead of coming back for ever.
            arguments["x-delivery-limit"] = settings.rabbitmq_delivery_limit
            # Dead-lettering confirmed by the DLQ before the message leaves the queue (classic
            # queues drop it if the DLQ is unavailable); it needs reject-publish overflow.
            arguments["x-dead-letter-strategy"] = "at-least-once"
            arguments["x-overflow"] = "reject-publish"
    return arguments


class QueueMismatch(Exception):
    """A queue exists with other arguments than this release declares (PRECONDITION_FAILED)."""

    def __init__(self, queue: str, broker_says: str) -> None:
        self.queue = queue
        self.broker_says = broker_says
        super().__init__(
            f"queue {queue} exists with other arguments than this release declares "
            f"({broker_says}): move it to the queue type RABBITMQ_QUEUE_TYPE names (README "
            "'Deploying', 'Quorum queues') or set RABBITMQ_QUEUE_TYPE to the type it has"
        )


async def find_queue_mismatch(
    connection: AbstractConnection, queue: str, arguments: Mapping[str, Any]
) -> QueueMismatch | None:
    """Declare `queue` on a channel of its own, to learn whether the broker accepts `arguments`.

    AMQP gives no way to read a queue's arguments; a refused declare closes its channel, so the
    try runs on a throwaway (non-robust) channel and never on one the process works with.
    """
    transport = connection.transport
    if transport is None:
        raise RuntimeError("not connected")
    channel = await transport.connection.channel()
    try:
        await channel.queue_declare(queue, durable=True, arguments=dict(arguments))
    except aiormq.exceptions.ChannelPreconditionFailed as error:
        return QueueMismatch(queue, _broker_reason(error))
    finally:
        if not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.close()
    return None


def _broker_reason(error: BaseException) -> str:
    # aiormq's message is the broker's reply text, e.g. "PRECONDITION_FAILED - inequivalent
    # arg 'x-queue-type' for queue 'new_order' ...: received 'quorum' but current is none".
    text = " ".join(str(part) for part in error.args) if error.args else str(error)
    return text.strip() or type(error).__name__


@dataclass(frozen=True, slots=True)
class Topology:
    exchange: AbstractExchange
    queue: AbstractQueue
    dead_letter_queue: AbstractQueue
    # Queues used as they exist because their arguments differ (empty when all is as declared).
    mismatches: tuple[QueueMismatch, ...] = ()


async def declare_topology(
    connection: AbstractConnection, channel: AbstractChannel, settings: Settings
) -> Topology:
    """Declare the exchange, `new_order` and its DLQ; safe for every process to repeat."""
    exchange = await channel.declare_exchange(
        settings.rabbitmq_exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    dlq_name = dead_letter_queue_name(settings.new_order_queue)
    dead_letter_queue, dlq_mismatch = await declare_queue(connection, channel, settings, dlq_name)
    queue, mismatch = await declare_event_queue(connection, channel, settings)
    await queue.bind(exchange, routing_key=NEW_ORDER)
    found = tuple(m for m in (mismatch, dlq_mismatch) if m is not None)
    return Topology(exchange, queue, dead_letter_queue, found)


async def declare_event_queue(
    connection: AbstractConnection, channel: AbstractChannel, settings: Settings
) -> tuple[AbstractQueue, QueueMismatch | None]:
    return await declare_queue(connection, channel, settings, settings.new_order_queue)


async def declare_queue(
    connection: AbstractConnection, channel: AbstractChannel, settings: Settings, name: str
) -> tuple[AbstractQueue, QueueMismatch | None]:
    """Declare `name` with this release's arguments or, when it exists with others, use it as
    it is (passively) and say so once: a restart would meet the same queue again."""
    arguments = queue_arguments(settings, name)
    mismatch = await find_queue_mismatch(connection, name, arguments)
    if mismatch is None:
        return await channel.declare_queue(name, durable=True, arguments=arguments), None
    log.error(
        "RabbitMQ queue mismatch: using the queue as it exists", queue=name, problem=str(mismatch)
    )
    return await channel.declare_queue(name, passive=True), mismatch


def to_message(event: OutgoingEvent) -> aio_pika.Message:
    """The wire form of SPEC 5: persistent JSON, message id = event id, type = event type."""
    return aio_pika.Message(
        body=event.body,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=str(event.event_id),
        type=event.event_type,
        headers=dict(event.headers),
    )


class _RabbitDelivery:
    def __init__(self, bus: RabbitBus, message: AbstractIncomingMessage) -> None:
        self._bus = bus
        self._message = message

    @property
    def body(self) -> bytes:
        return self._message.body

    @property
    def message_id(self) -> str | None:
        return self._message.message_id

    @property
    def headers(self) -> Mapping[str, Any]:
        return self._message.headers or {}

    async def ack(self) -> None:
        await self._message.ack()

    async def dead_letter(self, reason: str) -> None:
        # The queue's dead-letter arguments route it to the DLQ; `x-death` records why.
        await self._message.reject(requeue=False)

    async def retry(self) -> None:
        await self._bus.requeue_copy(self._message, attempt_of(self) + 1)
        await self._message.ack()


class RabbitBus:
    """Publisher and event source over one robust connection."""

    def __init__(self, settings: Settings) -> None:
        if not settings.rabbitmq_url:
            raise ValueError("RABBITMQ_URL is not set")
        self._settings = settings
        self._url = settings.rabbitmq_url
        self._publish_timeout = settings.rabbitmq_publish_timeout_seconds
        self._connect_lock = asyncio.Lock()
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractRobustChannel | None = None
        self._topology: Topology | None = None
        # Strong references: see the module docstring.
        self._consume_channel: AbstractRobustChannel | None = None
        self._consume_queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._handler: DeliveryHandler | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._down_since: float | None = None

    @property
    def connected(self) -> bool:
        return self._connection is not None and self._connection.connected.is_set()

    async def connect(self) -> Topology:
        """Connect and declare the topology once; later calls return at once."""
        async with self._connect_lock:
            if self._topology is not None:
                return self._topology
            connection = await aio_pika.connect_robust(
                self._url,
                timeout=self._settings.rabbitmq_connect_timeout_seconds,
                reconnect_interval=self._settings.rabbitmq_reconnect_interval_seconds,
                client_properties={"connection_name": "oms"},
            )
            try:
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                topology = await declare_topology(connection, channel, self._settings)
            except BaseException:
                await connection.close()
                raise
            self._connection, self._publish_channel, self._topology = (
                connection,
                channel,
                topology,
            )
            log.info(
                "Connected to RabbitMQ",
                queue=self._settings.new_order_queue,
                queue_type="mismatch"
                if topology.mismatches
                else self._settings.rabbitmq_queue_type,
            )
            return topology

    async def publish_batch(self, events: Sequence[OutgoingEvent]) -> list[BaseException | None]:
        try:
            topology = await asyncio.wait_for(
                self.connect(), self._settings.rabbitmq_connect_timeout_seconds
            )
        except Exception as error:
            return [error] * len(events)
        # Publish them all, then await the confirms together (about 4x the rate of one by one).
        results = await asyncio.gather(
            *(self._publish(topology.exchange, event) for event in events),
            return_exceptions=True,
        )
        return [result if isinstance(result, BaseException) else None for result in results]

    async def _publish(self, exchange: AbstractExchange, event: OutgoingEvent) -> None:
        await asyncio.wait_for(
            exchange.publish(
                to_message(event),
                routing_key=event.event_type,
                mandatory=True,
                timeout=self._publish_timeout,
            ),
            self._publish_timeout,
        )

    async def requeue_copy(self, message: AbstractIncomingMessage, attempt: int) -> None:
        """Publish a copy of a received message to the back of its queue, confirmed."""
        if self._publish_channel is None:
            raise RuntimeError("not connected")
        copy = aio_pika.Message(
            body=message.body,
            content_type=message.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message.message_id,
            type=message.type,
            headers={**(message.headers or {}), ATTEMPT_HEADER: attempt},
        )
        await asyncio.wait_for(
            self._publish_channel.default_exchange.publish(
                copy,
                routing_key=self._settings.new_order_queue,
                mandatory=True,
                timeout=self._publish_timeout,
            ),
            self._publish_timeout,
        )

    async def start_consuming(self, handler: DeliveryHandler) -> None:
        await self.connect()
        assert self._connection is not None
        channel = await self._connection.channel()
        # Bounded prefetch: at most this many unacked messages are handled at once.
        await channel.set_qos(prefetch_count=self._settings.consumer_prefetch)
        # Declared on this channel too, so the robust channel re-declares and re-consumes it
        # (passively, when the queue's arguments differ: connect() has reported that).
        queue, _ = await declare_event_queue(self._connection, channel, self._settings)
        self._handler = handler
        self._consume_channel, self._consume_queue = channel, queue
        self._consumer_tag = await queue.consume(self._on_message)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        assert self._handler is not None
        self._in_flight.add(task)
        try:
            await self._handler(_RabbitDelivery(self, message))
        except Exception:
            log.exception("Event handler failed; returning the message to the queue")
            # A pause first: a handler bug must not turn into a redelivery hot loop.
            await asyncio.sleep(1)
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
        finally:
            self._in_flight.discard(task)

    async def stop_consuming(self, grace_seconds: float = 30.0) -> None:
        if self._consume_queue is not None and self._consumer_tag is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self._consume_queue.cancel(self._consumer_tag), self._publish_timeout
                )
            self._consumer_tag = None
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=grace_seconds)

    async def wait_unrecoverable(self, check_interval: float = 1.0) -> None:
        """Return once the connection (or the consuming channel) has been down too long."""
        limit = self._settings.rabbitmq_resume_timeout_seconds
        while True:
            await asyncio.sleep(check_interval)
            healthy = self.connected and (
                self._consume_channel is None or not self._consume_channel.is_closed
            )
            now = time.monotonic()
            if healthy:
                if self._down_since is not None:
                    log.info("RabbitMQ connection resumed")
                self._down_since = None
                continue
            if self._down_since is None:
                log.warning("RabbitMQ connection lost; waiting for it to resume")
                self._down_since = now
            elif now - self._down_since > limit:
                return

    async def close(self) -> None:
        await self.stop_consuming()
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._connection.close(), self._publish_timeout)
        self._connection = None
        self._topology = None
