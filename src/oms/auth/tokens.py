"""JWT access tokens (PyJWT), algorithm pinned on decode."""

from __future__ import annotations

from datetime import timedelta

import jwt

from oms.config import Settings
from oms.db import utcnow
from oms.exceptions import AuthenticationError

INVALID_TOKEN = "Invalid or expired token"  # noqa: S105 - a message


def create_access_token(user_id: int, settings: Settings) -> tuple[str, int]:
    """A signed token for the user and its lifetime in seconds."""
    lifetime = timedelta(minutes=settings.access_token_expire_minutes)
    now = utcnow()
    claims = {
        "sub": str(user_id),
        "iat": now,
        "exp": now + lifetime,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
    }
    token = jwt.encode(
        claims, settings.secret_key.get_secret_value(), algorithm=settings.jwt_algorithm
    )
    return token, int(lifetime.total_seconds())


def user_id_from_token(token: str, settings: Settings) -> int:
    try:
        claims = jwt.decode(
            token,
            settings.secret_key.get_secret_value(),
            algorithms=[settings.jwt_algorithm],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "iat", "sub", "iss", "aud"]},
        )
        return int(claims["sub"])
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise AuthenticationError(INVALID_TOKEN) from exc
