"""JWT access tokens (PyJWT), algorithm pinned on decode."""

from __future__ import annotations

import re
import time
from datetime import timedelta

import jwt

from oms.auth.models import MAX_USER_ID
from oms.config import Settings
from oms.db import utcnow
from oms.exceptions import AuthenticationError

INVALID_TOKEN = "Invalid or expired token"  # noqa: S105 - a message
# `sub` as create_access_token writes it: digits, no sign, no leading zero (int() would also take
# " 7", "+7" or "0_7").
_SUBJECT = re.compile(r"[1-9][0-9]{0,9}")


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


class TokenVerifier:
    """Verifies access tokens, remembering the ones it accepted until they expire.

    A client sends the same token with every request for the token's lifetime, so the signature
    is checked once per token rather than once per request (PyJWT's decode costs more than the
    rest of the authentication). Only accepted tokens are remembered, each until its `exp`; the
    memory is bounded and forgets the oldest entries first.
    """

    def __init__(self, settings: Settings, max_remembered: int = 10_000) -> None:
        self._settings = settings
        self._max_remembered = max_remembered
        self._accepted: dict[str, tuple[int, float]] = {}  # token -> (user id, exp)

    def user_id(self, token: str) -> int:
        """The token's user id; AuthenticationError if the token is not valid now."""
        accepted = self._accepted.get(token)
        if accepted is not None and time.time() < accepted[1]:
            return accepted[0]
        user_id, expires_at = _verify(token, self._settings)
        if len(self._accepted) >= self._max_remembered:
            del self._accepted[next(iter(self._accepted))]
        self._accepted[token] = (user_id, expires_at)
        return user_id


def _verify(token: str, settings: Settings) -> tuple[int, float]:
    try:
        claims = jwt.decode(
            token,
            settings.secret_key.get_secret_value(),
            algorithms=[settings.jwt_algorithm],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "iat", "sub", "iss", "aud"]},
        )
        return _user_id(claims["sub"]), float(claims["exp"])
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise AuthenticationError(INVALID_TOKEN) from exc


def _user_id(subject: object) -> int:
    """The user id a subject names, if it can be one: a correctly signed token with a subject
    outside the column's range (0, negative, 2147483648, 23 digits) is as invalid as a forged
    one, and must not reach a query (asyncpg refuses to encode it)."""
    if not isinstance(subject, str) or not _SUBJECT.fullmatch(subject):
        raise ValueError("subject is not a user id")
    user_id = int(subject)
    if user_id > MAX_USER_ID:
        raise ValueError("subject is outside the range of user ids")
    return user_id
