"""Order rules: totals, ownership, the status machine and idempotent creation."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import (
    Insert,
    Interval,
    Update,
    bindparam,
    delete,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from oms.auth.service import RecentlySeenUsers, ensure_user_exists
from oms.cache import OrderCache
from oms.db import Base, in_transaction, utcnow
from oms.events.models import OutboxEvent
from oms.events.outbox import outbox_row
from oms.events.schemas import NEW_ORDER, NewOrderEvent
from oms.exceptions import ConflictError, NotFoundError, PermissionDeniedError, UnprocessableError
from oms.orders.models import IdempotencyKey, Order, OrderStatus
from oms.orders.schemas import OrderCreate, order_json, stored_items
from oms.redis import SharedRead

ALLOWED_TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.PENDING: frozenset({OrderStatus.PAID, OrderStatus.CANCELED}),
    OrderStatus.PAID: frozenset({OrderStatus.SHIPPED, OrderStatus.CANCELED}),
    OrderStatus.SHIPPED: frozenset(),
    OrderStatus.CANCELED: frozenset(),
}
_CLOCK_TICK = timedelta(microseconds=1)
# The statuses each status can be reached from.
_ALLOWED_SOURCES: dict[OrderStatus, list[OrderStatus]] = {
    target: [source for source, targets in ALLOWED_TRANSITIONS.items() if target in targets]
    for target in OrderStatus
}
IDEMPOTENCY_WINDOW = timedelta(hours=24)
# An order's columns as the statements below read them.
OrderRow = dict[str, Any]
# Opens a database connection for the paths of a request that need one.
ConnectionOpener = Callable[[], AbstractAsyncContextManager[AsyncConnection]]
ORDER_NOT_FOUND = "Order not found"
NOT_YOUR_ORDER = "This order belongs to another user"


@dataclass(frozen=True, slots=True)
class CreatedOrder:
    id: uuid.UUID
    body: bytes  # the order's JSON
    replayed: bool


class _Owner(BaseModel):
    user_id: int


async def create_order(
    connection: AsyncConnection, user_id: int, data: OrderCreate, idempotency_key: str | None
) -> CreatedOrder:
    try:
        return await _create_order_once(connection, user_id, data, idempotency_key)
    except IntegrityError:
        # The user was deleted since the token was issued (the order's foreign key), or a
        # concurrent first use of the same key won (SQLite has no advisory lock): that request
        # has committed by now, so the retry replays it.
        await ensure_user_exists(connection, user_id)
        await connection.rollback()  # ends the check's transaction before the next begins
        if idempotency_key is None:
            raise
        return await _create_order_once(connection, user_id, data, idempotency_key)


async def _create_order_once(
    connection: AsyncConnection, user_id: int, data: OrderCreate, idempotency_key: str | None
) -> CreatedOrder:
    if idempotency_key is None:
        # Nothing to look up first: the inserts are the whole unit of work.
        async with connection.begin():
            order = await _insert_with_event(connection, user_id, data)
        return CreatedOrder(order["id"], order_json(order), replayed=False)

    # A transaction holds the key's lock, the lookup and the inserts together.
    fingerprint = _fingerprint(data)
    async with in_transaction(connection):
        earlier = await _replay_or_claim(connection, user_id, idempotency_key, fingerprint)
        if earlier is not None:
            return CreatedOrder(earlier["id"], order_json(earlier), replayed=True)
        order = await _insert_with_event(connection, user_id, data)
        await connection.execute(
            insert(IdempotencyKey).values(
                user_id=user_id,
                key=idempotency_key,
                fingerprint=fingerprint,
                order_id=order["id"],
                created_at=order["created_at"],
            )
        )
    return CreatedOrder(order["id"], order_json(order), replayed=False)


async def _insert_with_event(
    connection: AsyncConnection, user_id: int, data: OrderCreate
) -> OrderRow:
    """A new order and its `new_order` outbox row, atomically: one statement on PostgreSQL (a
    data-modifying CTE, atomic by itself), two in the caller's transaction on SQLite (which has
    no such CTE)."""
    now = utcnow()
    total = data.computed_total
    order: OrderRow = {
        "id": uuid.uuid4(),
        "user_id": user_id,
        "items": stored_items(data.items),
        "total_price": total,
        "status": OrderStatus.PENDING,
        "version": 1,
        "created_at": now,
        "updated_at": now,
        "processed_at": None,
    }
    event_id = uuid.uuid4()
    event = NewOrderEvent(
        event_id=event_id,
        occurred_at=now,
        order_id=order["id"],
        user_id=user_id,
        total_price=total,
        items=data.items,
    )
    order_values = {f"order_{name}": value for name, value in order.items()}
    event_row = outbox_row(event_id, NEW_ORDER, event)
    event_values = {f"event_{name}": value for name, value in event_row.items()}
    if connection.dialect.name == "postgresql":
        await connection.execute(_INSERT_ORDER_WITH_EVENT, order_values | event_values)
    else:
        await connection.execute(_INSERT_ORDER, order_values)
        await connection.execute(_INSERT_EVENT, event_values)
    return order


def _insert_with_parameters(model: type[Base], prefix: str, names: list[str]) -> Insert:
    """An INSERT of the named columns from parameters named `{prefix}{column}`: compiled once,
    whatever the values (an INSERT built with the values themselves, JSON included, is compiled
    anew each time)."""
    columns = model.__table__.c
    return insert(model).values(
        {name: bindparam(f"{prefix}{name}", type_=columns[name].type) for name in names}
    )


_ORDER_COLUMNS = [
    "id",
    "user_id",
    "items",
    "total_price",
    "status",
    "version",
    "created_at",
    "updated_at",
    "processed_at",
]
_EVENT_COLUMNS = ["event_id", "event_type", "payload", "headers", "created_at", "attempts"]
_INSERT_ORDER = _insert_with_parameters(Order, "order_", _ORDER_COLUMNS)
_INSERT_EVENT = _insert_with_parameters(OutboxEvent, "event_", _EVENT_COLUMNS)
_INSERT_ORDER_WITH_EVENT = _INSERT_EVENT.add_cte(_INSERT_ORDER.cte("new_order"))


async def _replay_or_claim(
    connection: AsyncConnection, user_id: int, key: str, fingerprint: str
) -> OrderRow | None:
    """The order an earlier request with this key created, or None if this one goes ahead.

    A finished request is replayed without the in-flight lock, so any number of concurrent
    repeats of it all get the order; only a key with no stored request yet takes the lock
    (and looks again once it holds it: the first may have committed in between).
    """
    if connection.dialect.name == "postgresql":
        earlier = await _stored_key(connection, user_id, key)
        if earlier is not None and earlier["created_at"] >= utcnow() - IDEMPOTENCY_WINDOW:
            return await _replay(connection, earlier, fingerprint)
        locked = await connection.scalar(
            select(func.pg_try_advisory_xact_lock(_advisory_lock_id(user_id, key)))
        )
        if not locked:
            raise ConflictError("A request with this Idempotency-Key is still in progress")
    # Under the lock (or SQLite's single writer): look again, the first may have committed.
    earlier = await _stored_key(connection, user_id, key)
    if earlier is None:
        return None
    if earlier["created_at"] < utcnow() - IDEMPOTENCY_WINDOW:
        await connection.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.user_id == user_id, IdempotencyKey.key == key
            )
        )
        return None
    return await _replay(connection, earlier, fingerprint)


async def _stored_key(connection: AsyncConnection, user_id: int, key: str) -> OrderRow | None:
    stored = select(IdempotencyKey.__table__).where(
        IdempotencyKey.user_id == user_id, IdempotencyKey.key == key
    )
    row = (await connection.execute(stored)).first()
    return None if row is None else row._asdict()


async def _replay(
    connection: AsyncConnection, earlier: OrderRow, fingerprint: str
) -> OrderRow | None:
    if earlier["fingerprint"] != fingerprint:
        raise UnprocessableError("This Idempotency-Key was already used with a different body")
    return await _find(connection, earlier["order_id"])


def _fingerprint(data: OrderCreate) -> str:
    """Two bodies that describe the same order have the same fingerprint."""
    canonical = OrderCreate(items=data.items, total_price=data.computed_total)
    return hashlib.sha256(canonical.model_dump_json().encode()).hexdigest()


def _advisory_lock_id(user_id: int, key: str) -> int:
    digest = hashlib.sha256(f"idempotency:{user_id}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def get_order_json(
    open_connection: ConnectionOpener,
    cache: OrderCache,
    users: RecentlySeenUsers,
    user_id: int,
    order_id: uuid.UUID,
    shared: SharedRead | None,
) -> bytes:
    """The order's JSON, from the cache when it holds it, else from the database.

    `shared` is the cached copy when the caller already read `cache.shared_key` (along with the
    rate limit): a hit then costs no further round trip, nor the database while the user is
    known to exist (SPEC 2.4: a process may remember that for USER_RECHECK_SECONDS).
    """
    body = await cache.get(order_id) if shared is None else cache.shared_read(shared)
    if body is not None:
        # A cached copy can outlive its owner's account.
        if not users.recently_seen(user_id):
            async with open_connection() as connection:
                await ensure_user_exists(connection, user_id)
            users.remember(user_id)
        if _Owner.model_validate_json(body).user_id != user_id:
            raise PermissionDeniedError(NOT_YOUR_ORDER)
        return body
    async with open_connection() as connection:
        order = await _owned(connection, await _find(connection, order_id), user_id)
    users.remember(user_id)  # an order they own proves it
    body = order_json(order)
    await cache.put(order["id"], body, order["version"])
    return body


async def change_status(
    connection: AsyncConnection,
    cache: OrderCache,
    user_id: int,
    order_id: uuid.UUID,
    new_status: OrderStatus,
) -> bytes:
    """The order's JSON after the change.

    One statement makes the change if the status machine allows it from the order's status at
    that moment: concurrent changes of one order queue on its row and each one sees the status the
    previous one left, so none is lost. When it changes nothing, a read says why: the order is
    missing, someone else's, already there (a no-op), or cannot get there (409)."""
    change = _CHANGE[connection.dialect.name == "postgresql", new_status]
    async with connection.begin():  # SQLite takes its write lock here, before the clock is read
        row = (
            await connection.execute(
                change,
                {
                    "order_id": order_id,
                    "owner_id": user_id,
                    "now": utcnow(),
                },
            )
        ).first()
    if row is not None:
        changed = row._asdict()
        body = order_json(changed)
        await cache.put(changed["id"], body, changed["version"])
        return body
    order = await _owned(connection, await _find(connection, order_id), user_id)
    if order["status"] != new_status:
        raise ConflictError(f"Cannot change order status from {order['status']} to {new_status}")
    return order_json(order)


async def list_orders(
    connection: AsyncConnection,
    user_id: int,
    limit: int,
    offset: int,
    status: OrderStatus | None,
) -> tuple[list[OrderRow], bool]:
    """A page of the user's orders, newest first, and whether more follow."""
    page = {"user_id": user_id, "status": status, "limit": limit + 1, "offset": offset}
    query = _PAGE if status is None else _PAGE_WITH_STATUS
    result = await connection.execute(query, page)
    columns = tuple(result.keys())
    orders = [dict(zip(columns, row, strict=True)) for row in result]  # 1/5 of Row._asdict
    if not orders:
        await ensure_user_exists(connection, user_id)
    return orders[:limit], len(orders) > limit


async def _find(connection: AsyncConnection, order_id: uuid.UUID) -> OrderRow | None:
    row = (await connection.execute(_ORDER_BY_ID, {"order_id": order_id})).first()
    return None if row is None else row._asdict()


# Built once: statements rebuilt per request cost more than running them.
_ORDER_BY_ID = select(Order.__table__).where(Order.id == bindparam("order_id"))


def _change_statement(concurrent_writers: bool, target: OrderStatus) -> Update:
    """The change to `target`, from the statuses allowed to reach it, written into the statement
    (an expanding `IN` parameter is rendered into the SQL anew on every execution)."""
    now = bindparam("now", type_=Order.__table__.c.updated_at.type)
    # Never before the change it follows, whatever this host's clock says: on PostgreSQL the
    # statement may have waited for another change of the row after `now` was read.
    tick = literal(_CLOCK_TICK, Interval())
    changed_at = func.greatest(now, Order.updated_at + tick) if concurrent_writers else now
    sources = _ALLOWED_SOURCES[target]
    return (
        update(Order)
        .where(
            Order.id == bindparam("order_id"),
            Order.user_id == bindparam("owner_id"),
            or_(*(Order.status == source for source in sources)) if sources else false(),
        )
        .values(status=target, updated_at=changed_at, version=Order.version + 1)
        .returning(*Order.__table__.c)
    )


# Keyed by (is this PostgreSQL, target status): SQLite's writers are serialised (change_status).
_CHANGE = {
    (concurrent, target): _change_statement(concurrent, target)
    for concurrent in (True, False)
    for target in OrderStatus
}
_PAGE = (
    select(Order.__table__)
    .where(Order.user_id == bindparam("user_id"))
    .order_by(Order.created_at.desc(), Order.id.desc())
    .limit(bindparam("limit"))
    .offset(bindparam("offset"))
)
_PAGE_WITH_STATUS = _PAGE.where(Order.status == bindparam("status"))


async def _owned(connection: AsyncConnection, order: OrderRow | None, user_id: int) -> OrderRow:
    """The order if the caller owns it (which proves the caller's account still exists)."""
    if order is not None and order["user_id"] == user_id:
        return order
    await ensure_user_exists(connection, user_id)
    if order is None:
        raise NotFoundError(ORDER_NOT_FOUND)
    raise PermissionDeniedError(NOT_YOUR_ORDER)
