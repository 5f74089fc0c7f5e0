from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from oms.validation import NO_NUL


class RegisterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: EmailStr = Field(max_length=254, examples=["alice@example.com"])
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
