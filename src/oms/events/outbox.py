"""Writing events: a row in the outbox, inside the caller's transaction.

PostgreSQL announces new rows with NOTIFY from a trigger (see the initial migration), so the
relay wakes at commit without an extra round trip here.
"""

from __future__ import annotations

import uuid

import structlog
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from oms.events.models import OutboxEvent

OUTBOX_CHANNEL = "oms_outbox"


def record_event(
    session: AsyncSession, event_id: uuid.UUID, event_type: str, body: BaseModel
) -> None:
    """Add the event to the session's transaction; it is published only if that commits."""
    headers = {}
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    if request_id:
        headers["request_id"] = str(request_id)
    session.add(
        OutboxEvent(
            event_id=event_id,
            event_type=event_type,
            payload=body.model_dump(mode="json"),
            headers=headers,
        )
    )
