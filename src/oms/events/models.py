from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Identity, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from oms.db import Base, JSONDocument, UTCDateTime, utcnow

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
EventSequence = BigInteger().with_variant(Integer(), "sqlite")


class OutboxEvent(Base):
    """An event committed with the change that caused it, published later by the relay."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(EventSequence, Identity(), primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True, default=uuid.uuid4)
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    headers: Mapped[dict[str, str]] = mapped_column(JSONDocument, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)


# The relay only ever scans unpublished rows.
Index(
    "ix_outbox_unpublished",
    OutboxEvent.id,
    postgresql_where=OutboxEvent.published_at.is_(None),
    sqlite_where=OutboxEvent.published_at.is_(None),
)


class InboxEvent(Base):
    """An event the consumer has handed off; a redelivery of the same event id is dropped."""

    __tablename__ = "inbox"

    event_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    event_type: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
