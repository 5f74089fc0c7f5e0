"""Event bodies as they travel on the bus."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from oms.orders.schemas import Money, OrderItem

NEW_ORDER: Literal["new_order"] = "new_order"


class NewOrderEvent(BaseModel):
    model_config = ConfigDict(extra="ignore")

    event_id: uuid.UUID
    event_type: Literal["new_order"] = "new_order"
    occurred_at: datetime
    order_id: uuid.UUID
    user_id: int
    total_price: Money
    items: list[OrderItem]
