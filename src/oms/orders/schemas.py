"""Order shapes at the edge; `OrderOut` and its serialiser are the one JSON form of an order."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    WithJsonSchema,
    model_validator,
)
from typing_extensions import TypedDict

from oms.orders.models import Order, OrderStatus
from oms.validation import (
    MAX_SAFE_NUMBER,
    TRIMMED,
    VISIBLE_TEXT,
    Amount,
    PositiveAmount,
    number_as_string,
    text_constraints,
    whole_number,
)

MAX_TOTAL = Decimal("99999999.99")  # NUMERIC(10,2)
MAX_ITEMS = 100

# Money is exact in Python and a JSON number (at most 2 decimals) on the wire.
_MONEY_DIGITS = Field(max_digits=10, decimal_places=2)
_AS_NUMBER = PlainSerializer(float, return_type=float, when_used="json")
Money = Annotated[Decimal, _MONEY_DIGITS, _AS_NUMBER]

ProductId = Annotated[
    str,
    text_constraints(64),
    TRIMMED,
    BeforeValidator(number_as_string),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "minLength": 1, "maxLength": 64, "pattern": VISIBLE_TEXT},
                {"type": "number", "minimum": -MAX_SAFE_NUMBER, "maximum": MAX_SAFE_NUMBER},
            ],
            "description": "A string, or a JSON number, stored as its text",
            "examples": ["SKU-1"],
        },
        mode="validation",
    ),
]


class OrderItem(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        # "An item needs a product_id or a name", in the schema too.
        json_schema_extra={
            "anyOf": [
                {
                    "required": ["product_id"],
                    "properties": {"product_id": {"not": {"type": "null"}}},
                },
                {"required": ["name"], "properties": {"name": {"not": {"type": "null"}}}},
            ]
        },
    )

    product_id: ProductId | None = None
    name: Annotated[str, text_constraints(200, examples=["Widget"]), TRIMMED] | None = None
    quantity: Annotated[int, Field(ge=1, le=10_000, examples=[2]), BeforeValidator(whole_number)]
    price: Annotated[PositiveAmount, _MONEY_DIGITS, _AS_NUMBER, Field(examples=[9.99])]

    @model_validator(mode="after")
    def _identified(self) -> Self:
        if self.product_id is None and self.name is None:
            raise ValueError("an item needs a product_id or a name")
        return self

    @property
    def subtotal(self) -> Decimal:
        return self.price * self.quantity


class OrderCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[OrderItem] = Field(min_length=1, max_length=MAX_ITEMS)
    total_price: Annotated[Amount, _MONEY_DIGITS, _AS_NUMBER] | None = Field(
        default=None, description="Optional; must equal the sum of quantity x price if given."
    )

    @model_validator(mode="after")
    def _total_matches(self) -> Self:
        computed = self.computed_total
        if computed > MAX_TOTAL:
            raise ValueError(f"order total {computed} exceeds the maximum of {MAX_TOTAL}")
        if self.total_price is not None and self.total_price != computed:
            raise ValueError(
                f"total_price {self.total_price} does not match the sum of the items {computed}"
            )
        return self

    @property
    def computed_total(self) -> Decimal:
        return sum((item.subtotal for item in self.items), Decimal("0.00"))


class OrderStatusUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: OrderStatus


class OrderOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    user_id: int
    items: list[OrderItem]
    total_price: Money
    status: OrderStatus
    created_at: datetime
    updated_at: datetime
    processed_at: datetime | None


class _OrderDocument(TypedDict):
    """`OrderOut` for serialising only: stored items, already validated when they were
    accepted, are written as they are instead of being validated again; the bytes are the same
    (tests compare them)."""

    id: uuid.UUID
    user_id: int
    items: list[dict[str, Any]]
    total_price: Money
    status: OrderStatus
    created_at: datetime
    updated_at: datetime
    processed_at: datetime | None


# Typed loosely: they are given rows as dicts, which serialise like the TypedDict they match.
_order_document: TypeAdapter[Any] = TypeAdapter(_OrderDocument)
_order_documents: TypeAdapter[Any] = TypeAdapter(list[_OrderDocument])


def stored_items(items: list[OrderItem]) -> list[dict[str, Any]]:
    """Items as they are stored in the database and sent in events."""
    return [item.model_dump(mode="json") for item in items]


def order_json(order: Order | dict[str, Any]) -> bytes:
    """The order's JSON, from the ORM object or a row's mapping: the same bytes for the API,
    the cache and anything else."""
    return _order_document.dump_json(_document(order))


def orders_json(orders: Sequence[dict[str, Any]]) -> bytes:
    """A page of orders from rows' mappings, serialised in one pass (no Python per row)."""
    return _order_documents.dump_json(orders)


def _document(order: Order | dict[str, Any]) -> dict[str, Any]:
    if not isinstance(order, Order):
        return order  # extra columns (version, dispatched_at) are left out by the serialiser
    return {name: getattr(order, name) for name in _OrderDocument.__annotations__}
