"""The event bus seam: what the relay publishes to and what the consumer reads from.

Two transports implement it: RabbitMQ (`oms.events.rabbitmq`) and an in-process queue for the
embedded mode (below). The relay and the consumer hold the same logic whichever is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

# Header carrying how many times the consumer has tried this message (1 on first delivery).
ATTEMPT_HEADER = "x-oms-attempt"
REQUEST_ID_HEADER = "request_id"

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class OutgoingEvent:
    """An outbox row as it leaves for the bus."""

    event_id: uuid.UUID
    event_type: str
    body: bytes
    headers: Mapping[str, str]


class EventPublisher(Protocol):
    async def publish_batch(self, events: Sequence[OutgoingEvent]) -> list[BaseException | None]:
        """Publish every event and wait for the broker to confirm them together.

        Returns one entry per event: None when confirmed, else the error. Never raises for a
        broker failure, so the caller can record which rows went out.
        """


class Delivery(Protocol):
    """One message received from the bus, to be settled exactly once."""

    @property
    def body(self) -> bytes: ...

    @property
    def message_id(self) -> str | None: ...

    @property
    def headers(self) -> Mapping[str, Any]: ...

    async def ack(self) -> None:
        """Done with it: the bus forgets the message."""

    async def dead_letter(self, reason: str) -> None:
        """Move it to the dead-letter queue."""

    async def retry(self) -> None:
        """Put a copy back at the end of the queue with the attempt count raised, drop this one."""


DeliveryHandler = Callable[[Delivery], Awaitable[None]]


class EventSource(Protocol):
    async def start_consuming(self, handler: DeliveryHandler) -> None: ...

    async def stop_consuming(self) -> None:
        """Stop taking new messages and wait for the ones in progress."""


def attempt_of(delivery: Delivery) -> int:
    """How many times this message has been tried, counting the current delivery."""
    value = delivery.headers.get(ATTEMPT_HEADER)
    try:
        return max(1, int(value)) if value is not None else 1
    except (TypeError, ValueError):
        return 1


@dataclass(slots=True)
class InProcessMessage:
    body: bytes
    message_id: str | None
    headers: dict[str, Any] = field(default_factory=dict)


class _InProcessDelivery:
    def __init__(self, bus: InProcessBus, message: InProcessMessage) -> None:
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
        return self._message.headers

    async def ack(self) -> None:
        return None

    async def dead_letter(self, reason: str) -> None:
        self._bus.dead_letters.append(self._message)

    async def retry(self) -> None:
        headers = {**self._message.headers, ATTEMPT_HEADER: attempt_of(self) + 1}
        await self._bus.put(InProcessMessage(self.body, self.message_id, headers))


class InProcessBus:
    """Embedded mode: a bounded asyncio queue standing in for RabbitMQ, within one process.

    Messages live only in memory; the outbox row is already marked published, so an event in
    this queue is lost if the process dies, and the sweeper (which works from the database)
    dispatches its order after `PROCESSING_TIMEOUT_SECONDS`.
    """

    def __init__(self, prefetch: int, max_size: int = 10_000) -> None:
        self._queue: asyncio.Queue[InProcessMessage] = asyncio.Queue(max_size)
        self._prefetch = prefetch
        self._workers: list[asyncio.Task[None]] = []
        self._in_flight: set[asyncio.Future[None]] = set()
        self.dead_letters: list[InProcessMessage] = []

    async def put(self, message: InProcessMessage) -> None:
        self._queue.put_nowait(message)

    async def publish_batch(self, events: Sequence[OutgoingEvent]) -> list[BaseException | None]:
        results: list[BaseException | None] = []
        for event in events:
            try:
                self._queue.put_nowait(
                    InProcessMessage(event.body, str(event.event_id), dict(event.headers))
                )
                results.append(None)
            except asyncio.QueueFull as error:
                results.append(error)
        return results

    async def start_consuming(self, handler: DeliveryHandler) -> None:
        for _ in range(self._prefetch):
            self._workers.append(asyncio.create_task(self._work(handler)))

    async def _work(self, handler: DeliveryHandler) -> None:
        while True:
            message = await self._queue.get()
            task = asyncio.ensure_future(handler(_InProcessDelivery(self, message)))
            self._in_flight.add(task)
            try:
                # Shielded: stopping waits for the message in progress instead of abandoning it.
                await asyncio.shield(task)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Event handler failed")
            finally:
                self._in_flight.discard(task)

    async def stop_consuming(self) -> None:
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._workers.clear()
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def close(self) -> None:
        await self.stop_consuming()
