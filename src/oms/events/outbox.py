"""Writing events: a row in the outbox, inside the caller's transaction.

PostgreSQL announces new rows with NOTIFY from a trigger (see the initial migration), so the
relay wakes at commit without an extra round trip here.
"""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from pydantic import BaseModel

from oms import tracing
from oms.db import utcnow

OUTBOX_CHANNEL = "oms_outbox"


def outbox_row(event_id: uuid.UUID, event_type: str, body: BaseModel) -> dict[str, Any]:
    """The outbox row of an event, for an INSERT in the transaction of the change it reports
    (it is published only if that commits)."""
    headers: dict[str, str] = {}
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    if request_id:
        headers["request_id"] = str(request_id)
    tracing.inject_into(headers)  # traceparent/tracestate of the request, when tracing is on
    # Every column: Python-side defaults are not applied inside a data-modifying CTE.
    return {
        "event_id": event_id,
        "event_type": event_type,
        "payload": body.model_dump(mode="json"),
        "headers": headers,
        "created_at": utcnow(),
        "attempts": 0,
    }
