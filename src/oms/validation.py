"""Constraints shared by several request schemas.

Each rule is stated once, as the JSON Schema the OpenAPI document publishes, and the server
applies exactly that rule: what the schema calls valid is accepted, anything else is a 422
(schemathesis checks both directions, tests/test_fuzz.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

# PostgreSQL text and JSONB cannot hold U+0000: refuse it at the edge (422), not in the database.
NO_NUL = r"^[^\x00]*$"

# Unicode White_Space: what a text field is trimmed of. Spelled out rather than `\s`, whose
# meaning differs between the regex engines that read the schema (Python's `\s` also takes
# U+001C-U+001F).
_WHITESPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_WHITESPACE_CLASS = (
    r"\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"  # same, escaped
)
_STRIP = "".join(
    chr(code)
    for first, _, last in re.findall(r"(.)(-(.))?", _WHITESPACE)
    for code in range(ord(first), ord(last or first) + 1)
)
# No NUL, and something besides whitespace (the value is trimmed once accepted).
VISIBLE_TEXT = rf"^[^\x00]*[^\x00{_WHITESPACE_CLASS}][^\x00]*$"


def _trimmed(value: str) -> str:
    return value.strip(_STRIP)


# A text field, with `text_constraints(n)`: 1..n characters as sent, not only whitespace, no
# NUL; kept without its leading and trailing whitespace.
TRIMMED = AfterValidator(_trimmed)


def text_constraints(max_length: int, **field: Any) -> Any:
    return Field(min_length=1, max_length=max_length, pattern=VISIBLE_TEXT, **field)


# A JavaScript client cannot send a larger number exactly (Number.MAX_SAFE_INTEGER).
MAX_SAFE_NUMBER = 2**53 - 1


def number_as_string(value: object) -> object:
    """A JSON number where a string is expected is taken as its text (SPEC 2.1)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    if not math.isfinite(value) or abs(value) > MAX_SAFE_NUMBER:
        raise ValueError(f"a number here must be between -{MAX_SAFE_NUMBER} and {MAX_SAFE_NUMBER}")
    return str(value)


def whole_number(value: object) -> object:
    """A JSON integer; 2.0 is one too (JSON Schema's `integer`), "2" and 2.5 are not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


# --- Money: exact decimals with at most 2 places, as a JSON number or a string ---------------
MAX_MONEY = Decimal("99999999.99")  # NUMERIC(10,2)
_AMOUNT = r"(?:0|[1-9][0-9]{0,7})(?:\.[0-9]{1,2})?"
AMOUNT_PATTERN = rf"^{_AMOUNT}$"
POSITIVE_AMOUNT_PATTERN = rf"^(?!0(?:\.0{{1,2}})?$){_AMOUNT}$"


def _amount_validator(positive: bool) -> Callable[[object], Decimal]:
    """The amount rule, with pydantic's own error types (clients may rely on them)."""
    pattern = re.compile(POSITIVE_AMOUNT_PATTERN if positive else AMOUNT_PATTERN)

    def validate(value: object) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
            raise PydanticCustomError("decimal_type", "Input should be a number or a string")
        if isinstance(value, str):
            try:
                amount = Decimal(value)
            except ArithmeticError:
                raise PydanticCustomError(
                    "decimal_parsing", "Input should be a valid decimal"
                ) from None
        else:
            # A float's shortest text is what the client sent: 0.1 is "0.1", not
            # 0.1000000000000000055. (A Decimal comes from the service, e.g. a computed total.)
            amount = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        if not amount.is_finite():
            raise PydanticCustomError("finite_number", "Input should be a finite number")
        exponent = amount.as_tuple().exponent
        if isinstance(exponent, int) and exponent < -2:
            raise PydanticCustomError(
                "decimal_max_places", "Decimal input should have no more than 2 decimal places"
            )
        if amount > MAX_MONEY:
            raise PydanticCustomError("decimal_max_digits", f"Input should be at most {MAX_MONEY}")
        if positive and amount <= 0:
            raise PydanticCustomError("greater_than", "Input should be greater than 0")
        if amount < 0:
            raise PydanticCustomError("greater_than_equal", "Input should be at least 0")
        if isinstance(value, str) and not pattern.fullmatch(value):
            raise PydanticCustomError(
                "decimal_parsing", "A decimal string should look like 9.99 (digits, optional point)"
            )
        return amount

    return validate


def _amount_schema(positive: bool) -> WithJsonSchema:
    number: dict[str, Any] = {"type": "number", "maximum": float(MAX_MONEY), "multipleOf": 0.01}
    number["exclusiveMinimum" if positive else "minimum"] = 0
    string = {"type": "string", "pattern": POSITIVE_AMOUNT_PATTERN if positive else AMOUNT_PATTERN}
    return WithJsonSchema({"anyOf": [number, string]}, mode="validation")


# An amount sent by a client: a JSON number or a decimal string, at most 2 decimal places.
PositiveAmount = Annotated[
    Decimal, BeforeValidator(_amount_validator(positive=True)), _amount_schema(positive=True)
]
Amount = Annotated[
    Decimal, BeforeValidator(_amount_validator(positive=False)), _amount_schema(positive=False)
]
