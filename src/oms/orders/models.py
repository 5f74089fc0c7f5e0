from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import Enum, ForeignKey, Index, Integer, Numeric, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from oms.db import Base, JSONDocument, UTCDateTime, utcnow


class OrderStatus(StrEnum):
    PENDING = "PENDING"
    PAID = "PAID"
    SHIPPED = "SHIPPED"
    CANCELED = "CANCELED"


order_status_type = Enum(
    OrderStatus,
    name="order_status",
    values_callable=lambda statuses: [status.value for status in statuses],
    validate_strings=True,
)


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    items: Mapped[list[dict[str, Any]]] = mapped_column(JSONDocument)
    total_price: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    status: Mapped[OrderStatus] = mapped_column(order_status_type, default=OrderStatus.PENDING)
    # Bumped on every change: the cache compares it so an older value never replaces a newer one.
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # When the order was last handed to the task queue; the sweeper re-dispatches from it.
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


# A user's list is read newest first.
Index("ix_orders_user_id_created_at", Order.user_id, Order.created_at.desc())
# The sweeper only ever scans orders the worker has not processed yet.
Index(
    "ix_orders_unprocessed",
    Order.created_at,
    postgresql_where=Order.processed_at.is_(None),
    sqlite_where=Order.processed_at.is_(None),
)


class IdempotencyKey(Base):
    """A client's `Idempotency-Key`, stored in the transaction that created its order."""

    __tablename__ = "idempotency_keys"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    order_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
