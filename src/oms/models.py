"""Every table, imported in one place for Alembic and the tests."""

from oms.auth.models import User
from oms.db import Base
from oms.events.models import InboxEvent, OutboxEvent
from oms.orders.models import IdempotencyKey, Order

__all__ = ["Base", "IdempotencyKey", "InboxEvent", "Order", "OutboxEvent", "User"]
