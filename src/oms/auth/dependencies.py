from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer

from oms.auth.passwords import PasswordHasher
from oms.auth.tokens import INVALID_TOKEN, TokenVerifier
from oms.exceptions import AuthenticationError
from oms.ratelimit import limit_per_client
from oms.redis import SharedRead

# auto_error=False: a missing token goes through the one error mapping like any other 401.
bearer_token = OAuth2PasswordBearer(tokenUrl="/token/", auto_error=False)


async def get_password_hasher(request: Request) -> PasswordHasher:
    hasher: PasswordHasher = request.app.state.password_hasher
    return hasher


Hasher = Annotated[PasswordHasher, Depends(get_password_hasher)]


@dataclass(frozen=True, slots=True)
class AuthenticatedUser:
    """The subject of a valid token, on a route whose rate limit it passed.

    A token can outlive its user, and a deleted user's token gets 401 (SPEC 2.4). Rather than a
    query of its own on every request, each operation proves the user exists with the queries it
    makes anyway: an order the caller owns proves it (deleting a user deletes their orders), so
    does a new order's foreign key; every other path calls `auth.service.ensure_user_exists`,
    except a cached read, which may trust `RecentlySeenUsers` for USER_RECHECK_SECONDS.
    """

    id: int


async def authenticate(
    request: Request, token: str | None, read_key: str | None = None
) -> tuple[AuthenticatedUser, SharedRead | None]:
    """Rate limits the request (per token subject, else per IP), then requires a valid token.
    With `read_key`, the Redis value under it comes back read in the rate limit's round trip."""
    verifier: TokenVerifier = request.app.state.token_verifier
    user_id: int | None = None
    if token:
        with contextlib.suppress(AuthenticationError):
            user_id = verifier.user_id(token)
    read = await limit_per_client(request, user_id, read_key)
    if user_id is None:
        raise AuthenticationError(INVALID_TOKEN if token else "Not authenticated")
    return AuthenticatedUser(user_id), read


async def get_current_user(
    request: Request, token: Annotated[str | None, Depends(bearer_token)]
) -> AuthenticatedUser:
    return (await authenticate(request, token))[0]


CurrentUser = Annotated[AuthenticatedUser, Depends(get_current_user)]
BearerToken = Annotated[str | None, Depends(bearer_token)]
