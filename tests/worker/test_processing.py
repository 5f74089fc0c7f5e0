"""process_order's effect happens once, however many runs of it overlap."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy.orm import Session

from oms.auth.models import User
from oms.db import utcnow
from oms.orders.models import Order, OrderStatus
from oms.worker.database import create_sync_engine
from oms.worker.processing import OrderProcessor, Outcome
from tests.conftest import make_settings


@dataclass
class RecordingCache:
    writes: list[tuple[uuid.UUID, int]] = field(default_factory=list)

    def write(self, order_id: uuid.UUID, body: bytes, version: int) -> None:
        self.writes.append((order_id, version))


def test_concurrent_runs_of_one_order_process_it_once(postgres_url: str) -> None:
    settings = make_settings(postgres_url)
    engine = create_sync_engine(settings, pool_size=4)
    now = utcnow()
    order_id = uuid.uuid4()
    with Session(engine) as session, session.begin():
        user = User(email=f"{order_id}@example.com", hashed_password="x", created_at=now)
        session.add(user)
        session.flush()
        session.add(
            Order(id=order_id, user_id=user.id, items=[], total_price=Decimal("1.00"),
                  status=OrderStatus.PENDING, version=1, created_at=now, updated_at=now)
        )  # fmt: skip
    cache = RecordingCache()
    processor = OrderProcessor(engine, cache)

    with ThreadPoolExecutor(3) as pool:
        outcomes = sorted(pool.map(processor.process, [order_id] * 3))

    assert outcomes == [Outcome.ALREADY_PROCESSED, Outcome.ALREADY_PROCESSED, Outcome.PROCESSED]
    assert cache.writes == [(order_id, 2)]
    # A later run (a redelivery, a re-dispatch) finds it done.
    assert processor.process(order_id) is Outcome.ALREADY_PROCESSED
    assert processor.process(uuid.uuid4()) is Outcome.NOT_FOUND
    with Session(engine) as session:
        order = session.get(Order, order_id)
        assert order is not None
        assert order.version == 2
        assert order.processed_at is not None
    engine.dispose()
