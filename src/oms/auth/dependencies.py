from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer

from oms.auth.passwords import PasswordHasher
from oms.auth.service import user_exists
from oms.auth.tokens import INVALID_TOKEN, user_id_from_token
from oms.dependencies import AppSettings
from oms.exceptions import AuthenticationError
from oms.ratelimit import TOKEN_SUBJECT_STATE_KEY

# auto_error=False: a missing token goes through the one error mapping like any other 401.
bearer_token = OAuth2PasswordBearer(tokenUrl="/token/", auto_error=False)


async def get_password_hasher(request: Request) -> PasswordHasher:
    hasher: PasswordHasher = request.app.state.password_hasher
    return hasher


Hasher = Annotated[PasswordHasher, Depends(get_password_hasher)]


@dataclass(frozen=True, slots=True)
class AuthenticatedUser:
    """The caller: a valid token whose user exists (checked on every request)."""

    id: int


async def get_current_user(
    request: Request,
    token: Annotated[str | None, Depends(bearer_token)],
    settings: AppSettings,
) -> AuthenticatedUser:
    if not token:
        raise AuthenticationError("Not authenticated")
    # The rate limiter has usually verified this very token already (it limits per subject).
    verified: tuple[str, int] | None = getattr(request.state, TOKEN_SUBJECT_STATE_KEY, None)
    if verified is not None and verified[0] == token:
        user_id = verified[1]
    else:
        user_id = user_id_from_token(token, settings)
    # Every request, cache hit or not: a token outlives a deleted user (SPEC 2.4: 401).
    if not await user_exists(request.app.state.engine, user_id):
        raise AuthenticationError(INVALID_TOKEN)
    return AuthenticatedUser(user_id)


CurrentUser = Annotated[AuthenticatedUser, Depends(get_current_user)]
