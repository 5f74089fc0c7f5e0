from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer

from oms.auth.models import User
from oms.auth.passwords import PasswordHasher
from oms.auth.tokens import INVALID_TOKEN, user_id_from_token
from oms.db import DbSession
from oms.dependencies import AppSettings
from oms.exceptions import AuthenticationError

# auto_error=False: a missing token goes through the one error mapping like any other 401.
bearer_token = OAuth2PasswordBearer(tokenUrl="/token/", auto_error=False)


def get_password_hasher(request: Request) -> PasswordHasher:
    hasher: PasswordHasher = request.app.state.password_hasher
    return hasher


Hasher = Annotated[PasswordHasher, Depends(get_password_hasher)]


async def get_current_user(
    token: Annotated[str | None, Depends(bearer_token)],
    settings: AppSettings,
    session: DbSession,
) -> User:
    if not token:
        raise AuthenticationError("Not authenticated")
    user = await session.get(User, user_id_from_token(token, settings))
    if user is None:  # deleted since the token was issued
        raise AuthenticationError(INVALID_TOKEN)
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]
