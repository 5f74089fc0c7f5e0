"""The relay over a publisher that fails for a while (SQLite: polling, one relay)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel
from sqlalchemy import insert, select

from oms import migrate
from oms.db import create_engine, create_sessionmaker
from oms.events.bus import OutgoingEvent
from oms.events.models import OutboxEvent
from oms.events.outbox import outbox_row
from oms.events.relay import Relay
from tests.conftest import make_settings
from tests.support.processes import eventually


class Body(BaseModel):
    n: int


@dataclass
class FlakyPublisher:
    down: bool = True
    published: list[OutgoingEvent] = field(default_factory=list)

    async def publish_batch(self, events: Sequence[OutgoingEvent]) -> list[BaseException | None]:
        if self.down:
            return [ConnectionError("broker unreachable")] * len(events)
        self.published.extend(events)
        return [None] * len(events)


async def test_relay_records_failures_and_drains_the_backlog_once_the_broker_is_back(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'relay.db'}"
    await asyncio.to_thread(migrate.upgrade, url)
    settings = make_settings(
        url, relay_batch_size=7, relay_poll_interval_seconds=0.05, relay_max_backoff_seconds=0.2
    )
    engine = create_engine(settings)
    sessionmaker = create_sessionmaker(engine)
    event_ids = [uuid.uuid4() for _ in range(20)]
    async with sessionmaker.begin() as session:
        for n, event_id in enumerate(event_ids):
            row = outbox_row(event_id, "new_order", Body(n=n))
            await session.execute(insert(OutboxEvent).values(row))

    publisher = FlakyPublisher()
    relay = Relay(settings, sessionmaker, publisher)
    failed = await relay.publish_round()
    assert (failed.published, failed.failed) == (0, 7)

    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))
    await asyncio.sleep(0.3)  # a few backed-off rounds while the broker is down
    publisher.down = False
    await eventually(lambda: len(publisher.published) == 20, 10)
    stop.set()
    await running

    # In outbox order, each once, with the request's body.
    assert [event.event_id for event in publisher.published] == event_ids
    assert publisher.published[3].body == b'{"n":3}'
    async with sessionmaker() as session:
        rows = (await session.scalars(select(OutboxEvent).order_by(OutboxEvent.id))).all()
    assert all(row.published_at is not None for row in rows)
    assert rows[0].attempts >= 2  # the failed rounds were counted
    assert rows[0].last_error is None
    await engine.dispose()
