"""Schemathesis hooks (SCHEMATHESIS_HOOKS=tests.support.fuzz_hooks): the two rules of
`POST /orders/` that JSON Schema cannot state, applied to generated valid requests so that
"schema-valid" means "acceptable". Invalid requests are sent as generated.

- `total_price`, when sent, must equal the sum of quantity x price, and that sum must fit
  NUMERIC(10,2) (SPEC 2.1): a valid body gets the total it implies, and items whose sum would
  not fit get quantity 1 and price 0.01.
- The same `Idempotency-Key` with another body is a 422 (SPEC 2.3): each valid request gets a
  key of its own.
"""

from __future__ import annotations

import math
import re
import uuid
from decimal import Decimal
from typing import Any

import schemathesis
from schemathesis import GenerationMode

from oms.validation import AMOUNT_PATTERN

MAX_TOTAL = Decimal("99999999.99")
# Only bodies whose parts are each valid are adjusted; the rest is sent as generated (coverage
# cases can mix valid and invalid parts).
_AMOUNT = re.compile(AMOUNT_PATTERN)
_KEY = re.compile(r"[\x21-\x7e]{1,255}")


def _amount(value: object) -> Decimal | None:
    if isinstance(value, str):
        return Decimal(value) if _AMOUNT.fullmatch(value) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    amount = Decimal(repr(value))
    return amount if 0 <= amount <= MAX_TOTAL and amount == round(amount, 2) else None


def _subtotal(item: object) -> Decimal | None:
    if not isinstance(item, dict):
        return None
    quantity, price = item.get("quantity"), _amount(item.get("price"))
    if isinstance(quantity, bool) or not isinstance(quantity, int | float) or price is None:
        return None
    if not (1 <= quantity <= 10_000 and float(quantity).is_integer()) or price == 0:
        return None
    return price * int(quantity)


@schemathesis.hook
def before_call(context: Any, case: schemathesis.Case, kwargs: dict[str, Any]) -> None:
    if (case.operation.method.upper(), case.operation.path) != ("POST", "/orders/"):
        return
    meta = case.meta
    if meta is None or meta.generation.mode != GenerationMode.POSITIVE:
        return
    body = case.body
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        return
    items = body["items"]
    subtotals = [_subtotal(item) for item in items]
    if None in subtotals:
        return
    key = (case.headers or {}).get("Idempotency-Key")
    if isinstance(key, str) and _KEY.fullmatch(key):
        case.headers["Idempotency-Key"] = uuid.uuid4().hex
    total = sum((subtotal for subtotal in subtotals if subtotal is not None), Decimal("0.00"))
    if total > MAX_TOTAL:
        for item in items:
            item["quantity"], item["price"] = 1, "0.01"
        total = Decimal("0.01") * len(items)
    if _amount(body.get("total_price")) is not None:
        body["total_price"] = str(total.quantize(Decimal("0.01")))
