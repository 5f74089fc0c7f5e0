"""The consumer's rules, over the in-process bus (the same handler runs over RabbitMQ)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from oms import migrate
from oms.config import Settings
from oms.db import create_engine, create_sessionmaker
from oms.events.bus import ATTEMPT_HEADER, InProcessBus, OutgoingEvent
from oms.events.consumer import NewOrderHandler
from oms.events.models import InboxEvent
from oms.events.schemas import NewOrderEvent
from oms.orders.schemas import OrderItem
from oms.worker.dispatch import DispatchError, dispatch_each
from tests.conftest import make_settings
from tests.support.processes import eventually


@dataclass
class FlakyDispatcher:
    """Fails the first `failures` hand-offs, like a Celery broker that is down for a while."""

    failures: int
    calls: list[tuple[uuid.UUID, str | None]] = field(default_factory=list)

    async def dispatch(self, order_id: uuid.UUID, request_id: str | None) -> None:
        self.calls.append((order_id, request_id))
        if len(self.calls) <= self.failures:
            raise DispatchError("Celery broker unreachable")

    async def dispatch_many(
        self,
        orders: Sequence[tuple[uuid.UUID, str | None]],
        trace_headers: Sequence[Mapping[str, str]] | None = None,
    ) -> list[DispatchError | None]:
        return await dispatch_each(self, orders)

    async def close(self) -> None:
        return None


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    url = f"sqlite:///{tmp_path / 'consumer.db'}"
    migrate.upgrade(url)
    return make_settings(url, consumer_retry_base_seconds=0.01, consumer_retry_max_seconds=0.02)


@dataclass
class Harness:
    bus: InProcessBus
    dispatcher: FlakyDispatcher
    sessionmaker: async_sessionmaker[AsyncSession]

    async def inbox(self) -> list[uuid.UUID]:
        async with self.sessionmaker() as session:
            return list((await session.scalars(select(InboxEvent.event_id))).all())


@pytest.fixture
def failures() -> int:
    return 0


@pytest.fixture
def prefetch() -> int:
    return 2


@pytest.fixture
async def harness(settings: Settings, failures: int, prefetch: int) -> AsyncIterator[Harness]:
    engine = create_engine(settings)
    sessionmaker = create_sessionmaker(engine)
    bus = InProcessBus(prefetch=prefetch)
    dispatcher = FlakyDispatcher(failures)
    await bus.start_consuming(NewOrderHandler(settings, sessionmaker, dispatcher).handle)
    yield Harness(bus, dispatcher, sessionmaker)
    await bus.close()
    await engine.dispose()


def new_order_event() -> OutgoingEvent:
    event = NewOrderEvent(
        event_id=uuid.uuid4(),
        occurred_at=datetime.now(UTC),
        order_id=uuid.uuid4(),
        user_id=1,
        total_price=Decimal("3.00"),
        items=[OrderItem(product_id="SKU-1", quantity=2, price=Decimal("1.50"))],
    )
    return OutgoingEvent(
        event.event_id, "new_order", event.model_dump_json().encode(), {"request_id": "req-1"}
    )


async def test_an_event_is_handed_off_once_with_its_request_id(harness: Harness) -> None:
    event = new_order_event()
    await harness.bus.publish_batch([event])
    await eventually(harness.inbox, 15)
    assert len(harness.dispatcher.calls) == 1
    assert harness.dispatcher.calls[0][1] == "req-1"
    assert await harness.inbox() == [event.event_id]


async def test_a_redelivered_event_is_dropped(harness: Harness) -> None:
    event = new_order_event()
    await harness.bus.publish_batch([event])
    await eventually(harness.inbox, 15)
    await harness.bus.publish_batch([event])
    await harness.bus.publish_batch([new_order_event()])  # a marker: processed after the copy
    await eventually(lambda: len(harness.dispatcher.calls) == 2, 15)
    order_id = NewOrderEvent.model_validate_json(event.body).order_id
    assert [call[0] for call in harness.dispatcher.calls].count(order_id) == 1


@pytest.mark.parametrize(
    "body", [b"not json", b"{}", b'{"event_id": "1", "order_id": "x"}', b"[1, 2]"]
)
async def test_a_malformed_message_goes_to_the_dead_letter_queue_at_once(
    harness: Harness, body: bytes
) -> None:
    await harness.bus.publish_batch([OutgoingEvent(uuid.uuid4(), "new_order", body, {})])
    await eventually(lambda: harness.bus.dead_letters, 15)
    assert harness.bus.dead_letters[0].body == body
    assert harness.dispatcher.calls == []


@pytest.mark.parametrize("failures", [2])
async def test_a_transient_failure_is_retried_until_the_hand_off_succeeds(
    harness: Harness,
) -> None:
    event = new_order_event()
    await harness.bus.publish_batch([event])
    await eventually(harness.inbox, 15)
    assert len(harness.dispatcher.calls) == 3
    assert harness.bus.dead_letters == []


@pytest.mark.parametrize("failures", [1000])
async def test_after_five_failed_attempts_the_message_is_dead_lettered(
    harness: Harness,
) -> None:
    await harness.bus.publish_batch([new_order_event()])
    await eventually(lambda: harness.bus.dead_letters, 15)
    assert len(harness.dispatcher.calls) == 5
    assert harness.bus.dead_letters[0].headers[ATTEMPT_HEADER] == 5
    assert await harness.inbox() == []


def order_of(event: OutgoingEvent) -> uuid.UUID:
    return NewOrderEvent.model_validate_json(event.body).order_id


@pytest.mark.parametrize("prefetch", [16])
async def test_copies_of_an_event_in_one_batch_are_handed_off_once(harness: Harness) -> None:
    event, other, marker = new_order_event(), new_order_event(), new_order_event()
    await harness.bus.publish_batch([event, event, other, event])
    await harness.bus.publish_batch([marker])  # handed off after the copies were settled
    await eventually(lambda: len(harness.dispatcher.calls) == 3, 15)
    await eventually(lambda: _count(harness.inbox, 3), 15)
    assert sorted(call[0] for call in harness.dispatcher.calls) == sorted(
        order_of(e) for e in (event, other, marker)
    )
    assert harness.bus.dead_letters == []


@pytest.mark.parametrize(("prefetch", "failures"), [(16, 1)])
async def test_a_failed_hand_off_in_a_batch_is_retried_alone(harness: Harness) -> None:
    events = [new_order_event() for _ in range(3)]
    await harness.bus.publish_batch(events)
    await eventually(lambda: _count(harness.inbox, 3), 15)
    # The first hand-off failed: its order was tried again, the two others once each.
    calls = [call[0] for call in harness.dispatcher.calls]
    assert len(calls) == 4
    assert calls.count(order_of(events[0])) == 2
    assert set(calls) == {order_of(e) for e in events}
    assert sorted(await harness.inbox()) == sorted(e.event_id for e in events)


async def _count(rows: Callable[[], Awaitable[list[uuid.UUID]]], expected: int) -> bool:
    return len(await rows()) == expected
