from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

from oms.validation import NO_NUL

# Domains reserved for special use (RFC 6761) that email-validator refuses; `.test` is not among
# them here: it is the one people use for test accounts, and this service sends no mail, so
# deliverability is no reason to refuse it. The schema states the rest (`pattern`).
_UNUSABLE_DOMAINS = ("arpa", "invalid", "local", "localhost", "onion")


def _case_insensitive(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" for c in word)


# The domain has a period (or is `test`) and is not under one of the unusable names.
# No display name or quoted part (none of RFC 5322's specials or spaces on either side).
_ADDRESS_CHAR = r"[^@ \t\r\n\"<>()\[\],;:\\]"
_EMAIL_PATTERN = (
    rf"^{_ADDRESS_CHAR}+@(?!(?:{_ADDRESS_CHAR}*\.)?(?:"
    + "|".join(_case_insensitive(domain) for domain in _UNUSABLE_DOMAINS)
    + rf")$)(?:{_ADDRESS_CHAR}*\.{_ADDRESS_CHAR}*|"
    + _case_insensitive("test")
    + ")$"
)


def _email(value: str) -> str:
    """An address as email-validator takes it (no display name, no quoted local part, no IP
    literal), without a deliverability check and with `.test` allowed."""
    try:
        return validate_email(value, check_deliverability=False, test_environment=True).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"value is not a valid email address: {exc}") from exc


Email = Annotated[
    str,
    Field(max_length=254),
    AfterValidator(_email),
    WithJsonSchema(
        {
            "type": "string",
            "format": "email",
            "maxLength": 254,
            "pattern": _EMAIL_PATTERN,
            "description": "An email address; `.test` is accepted, the domains reserved for "
            "other special uses (.arpa, .invalid, .local, .localhost, .onion) are not",
            "examples": ["alice@example.com"],
        },
        mode="validation",
    ),
]


class RegisterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Email
    password: str = Field(
        min_length=8, max_length=128, pattern=NO_NUL, examples=["correct horse battery"]
    )


class LoginForm(BaseModel):
    """The OAuth2 password grant's fields (other form fields, like `scope`, are ignored)."""

    username: str = Field(min_length=1, max_length=320, pattern=NO_NUL, description="The email")
    password: str = Field(min_length=1, max_length=128, pattern=NO_NUL)


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    email: str
    created_at: datetime


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth2 token type
    expires_in: int = Field(description="Lifetime of the token in seconds")
