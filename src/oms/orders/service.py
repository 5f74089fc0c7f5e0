"""Order rules: totals, ownership, the status machine and idempotent creation."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from oms.auth.service import ensure_user_exists
from oms.cache import OrderCache
from oms.db import utcnow
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
_CLOCK_TICK = timedelta(microseconds=1)
IDEMPOTENCY_WINDOW = timedelta(hours=24)
# An order's columns as the statements below read them.
OrderRow = dict[str, Any]
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
        # The user was deleted since the token was issued (the order's foreign key), or a
        # concurrent first use of the same key won (SQLite has no advisory lock): that request
        # has committed by now, so the retry replays it.
        await session.rollback()
        await ensure_user_exists(session, user_id)
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
    connection: AsyncConnection, cache: OrderCache, user_id: int, order_id: uuid.UUID
) -> bytes:
    """The order's JSON, from the cache when it holds it, else from the database."""
    body = await cache.get(order_id)
    if body is not None:
        # A cached copy can outlive its owner's account: only the database knows.
        await ensure_user_exists(connection, user_id)
        if _Owner.model_validate_json(body).user_id != user_id:
            raise PermissionDeniedError(NOT_YOUR_ORDER)
        return body
    order = await _owned(connection, await _find(connection, order_id), user_id)
    body = order_json(order)
    await cache.put(order["id"], body, order["version"])
    return body


async def change_status(
    connection: AsyncConnection,
    cache: OrderCache,
    user_id: int,
    order_id: uuid.UUID,
    new_status: OrderStatus,
) -> OrderRow:
    """Reads the order, applies the status machine, and writes the change only if the order is
    still the version it read; if another change came first, it starts over from that one, so
    none is lost. Ends: each retry follows another change, and an order changes at most three
    times."""
    while True:
        order = await _owned(connection, await _find(connection, order_id), user_id)
        if order["status"] == new_status:
            return order
        if new_status not in ALLOWED_TRANSITIONS[order["status"]]:
            raise ConflictError(
                f"Cannot change order status from {order['status']} to {new_status}"
            )
        change = (
            update(Order)
            .where(Order.id == order_id, Order.version == order["version"])
            .values(
                status=new_status,
                # Never before the change it follows, whatever this host's clock says.
                updated_at=max(utcnow(), order["updated_at"] + _CLOCK_TICK),
                version=order["version"] + 1,
            )
            .returning(*Order.__table__.c)
        )
        row = (await connection.execute(change)).first()
        await connection.commit()
        if row is not None:
            changed = row._asdict()
            await cache.put(changed["id"], order_json(changed), changed["version"])
            return changed


async def list_orders(
    connection: AsyncConnection,
    user_id: int,
    limit: int,
    offset: int,
    status: OrderStatus | None,
) -> tuple[list[OrderRow], bool]:
    """A page of the user's orders, newest first, and whether more follow."""
    query = select(Order.__table__).where(Order.user_id == user_id)
    if status is not None:
        query = query.where(Order.status == status)
    query = query.order_by(Order.created_at.desc(), Order.id.desc()).limit(limit + 1)
    orders = [row._asdict() for row in await connection.execute(query.offset(offset))]
    if not orders:
        await ensure_user_exists(connection, user_id)
    return orders[:limit], len(orders) > limit


async def _find(connection: AsyncConnection, order_id: uuid.UUID) -> OrderRow | None:
    row = (await connection.execute(_ORDER_BY_ID, {"order_id": order_id})).first()
    return None if row is None else row._asdict()


_ORDER_BY_ID = select(Order.__table__).where(Order.id == bindparam("order_id"))


async def _owned(connection: AsyncConnection, order: OrderRow | None, user_id: int) -> OrderRow:
    """The order if the caller owns it (which proves the caller's account still exists)."""
    if order is not None and order["user_id"] == user_id:
        return order
    await ensure_user_exists(connection, user_id)
    if order is None:
        raise NotFoundError(ORDER_NOT_FOUND)
    raise PermissionDeniedError(NOT_YOUR_ORDER)
