"""Order rules: totals, ownership, the status machine and idempotent creation."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import timedelta

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from oms.cache import OrderCache
from oms.db import open_session, utcnow
from oms.events.outbox import record_event
from oms.events.schemas import NEW_ORDER, NewOrderEvent
from oms.exceptions import ConflictError, NotFoundError, PermissionDeniedError, UnprocessableError
from oms.orders.models import IdempotencyKey, Order, OrderStatus
from oms.orders.schemas import OrderCreate, order_json, stored_items

ALLOWED_TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.PENDING: frozenset({OrderStatus.PAID, OrderStatus.CANCELED}),
    OrderStatus.PAID: frozenset({OrderStatus.SHIPPED, OrderStatus.CANCELED}),
    OrderStatus.SHIPPED: frozenset(),
    OrderStatus.CANCELED: frozenset(),
}
IDEMPOTENCY_WINDOW = timedelta(hours=24)
ORDER_NOT_FOUND = "Order not found"
NOT_YOUR_ORDER = "This order belongs to another user"


@dataclass(frozen=True, slots=True)
class CreatedOrder:
    order: Order
    replayed: bool


class _Owner(BaseModel):
    user_id: int


async def create_order(
    session: AsyncSession, user_id: int, data: OrderCreate, idempotency_key: str | None
) -> CreatedOrder:
    try:
        return await _create_order_once(session, user_id, data, idempotency_key)
    except IntegrityError:
        # Only a concurrent first use of the same key gets here (SQLite has no advisory
        # lock); that request has committed by now, so the retry replays it.
        await session.rollback()
        if idempotency_key is None:
            raise
        return await _create_order_once(session, user_id, data, idempotency_key)


async def _create_order_once(
    session: AsyncSession, user_id: int, data: OrderCreate, idempotency_key: str | None
) -> CreatedOrder:
    fingerprint = _fingerprint(data)
    if idempotency_key is not None:
        earlier = await _replay_or_claim(session, user_id, idempotency_key, fingerprint)
        if earlier is not None:
            await session.commit()
            return CreatedOrder(earlier, replayed=True)

    now = utcnow()
    total = data.computed_total
    order = Order(
        id=uuid.uuid4(),
        user_id=user_id,
        items=stored_items(data.items),
        total_price=total,
        status=OrderStatus.PENDING,
        version=1,
        created_at=now,
        updated_at=now,
        processed_at=None,
    )
    session.add(order)
    event_id = uuid.uuid4()
    record_event(
        session,
        event_id,
        NEW_ORDER,
        NewOrderEvent(
            event_id=event_id,
            occurred_at=now,
            order_id=order.id,
            user_id=user_id,
            total_price=total,
            items=data.items,
        ),
    )
    if idempotency_key is not None:
        session.add(
            IdempotencyKey(
                user_id=user_id,
                key=idempotency_key,
                fingerprint=fingerprint,
                order=order,
                created_at=now,
            )
        )
    await session.commit()
    return CreatedOrder(order, replayed=False)


async def _replay_or_claim(
    session: AsyncSession, user_id: int, key: str, fingerprint: str
) -> Order | None:
    """The order an earlier request with this key created, or None if this one goes ahead.

    A finished request is replayed without the in-flight lock, so any number of concurrent
    repeats of it all get the order; only a key with no stored request yet takes the lock
    (and looks again once it holds it: the first may have committed in between).
    """
    if session.get_bind().dialect.name == "postgresql":
        earlier = await session.get(IdempotencyKey, (user_id, key))
        if earlier is not None and earlier.created_at >= utcnow() - IDEMPOTENCY_WINDOW:
            return await _replay(session, earlier, fingerprint)
        locked = await session.scalar(
            select(func.pg_try_advisory_xact_lock(_advisory_lock_id(user_id, key)))
        )
        if not locked:
            raise ConflictError("A request with this Idempotency-Key is still in progress")
    # Under the lock (or SQLite's single writer): look again, the first may have committed.
    earlier = await session.get(IdempotencyKey, (user_id, key), populate_existing=True)
    if earlier is None:
        return None
    if earlier.created_at < utcnow() - IDEMPOTENCY_WINDOW:
        await session.delete(earlier)
        await session.flush()
        return None
    return await _replay(session, earlier, fingerprint)


async def _replay(session: AsyncSession, earlier: IdempotencyKey, fingerprint: str) -> Order | None:
    if earlier.fingerprint != fingerprint:
        raise UnprocessableError("This Idempotency-Key was already used with a different body")
    return await session.get(Order, earlier.order_id)


def _fingerprint(data: OrderCreate) -> str:
    """Two bodies that describe the same order have the same fingerprint."""
    canonical = OrderCreate(items=data.items, total_price=data.computed_total)
    return hashlib.sha256(canonical.model_dump_json().encode()).hexdigest()


def _advisory_lock_id(user_id: int, key: str) -> int:
    digest = hashlib.sha256(f"idempotency:{user_id}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def get_order_json(
    sessions: async_sessionmaker[AsyncSession],
    cache: OrderCache,
    user_id: int,
    order_id: uuid.UUID,
) -> bytes:
    """The order's JSON, from the cache when it holds it, else from the database (a session is
    opened only on a miss: a hit needs none)."""
    body = await cache.get(order_id)
    if body is not None:
        if _Owner.model_validate_json(body).user_id != user_id:
            raise PermissionDeniedError(NOT_YOUR_ORDER)
        return body
    async with open_session(sessions) as session:
        order = _owned(await session.get(Order, order_id), user_id)
    body = order_json(order)
    await cache.put(order.id, body, order.version)
    return body


async def change_status(
    session: AsyncSession,
    cache: OrderCache,
    user_id: int,
    order_id: uuid.UUID,
    new_status: OrderStatus,
) -> Order:
    # The row lock serialises concurrent changes of one order: none is lost.
    locked = select(Order).where(Order.id == order_id).with_for_update()
    order = _owned(await session.scalar(locked), user_id)
    if order.status == new_status:
        await session.commit()
        return order
    if new_status not in ALLOWED_TRANSITIONS[order.status]:
        raise ConflictError(f"Cannot change order status from {order.status} to {new_status}")
    order.status = new_status
    order.updated_at = utcnow()
    order.version += 1
    await session.commit()
    await cache.put(order.id, order_json(order), order.version)
    return order


async def list_orders(
    session: AsyncSession, user_id: int, limit: int, offset: int, status: OrderStatus | None
) -> tuple[list[Order], bool]:
    """A page of the user's orders, newest first, and whether more follow."""
    query = select(Order).where(Order.user_id == user_id)
    if status is not None:
        query = query.where(Order.status == status)
    query = query.order_by(Order.created_at.desc(), Order.id.desc()).limit(limit + 1)
    orders = list((await session.scalars(query.offset(offset))).all())
    return orders[:limit], len(orders) > limit


def _owned(order: Order | None, user_id: int) -> Order:
    if order is None:
        raise NotFoundError(ORDER_NOT_FOUND)
    if order.user_id != user_id:
        raise PermissionDeniedError(NOT_YOUR_ORDER)
    return order
