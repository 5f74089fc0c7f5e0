from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer

from oms.auth.passwords import PasswordHasher
from oms.auth.tokens import INVALID_TOKEN, TokenVerifier
from oms.exceptions import AuthenticationError
from oms.ratelimit import limit_per_client
from oms.redis import SharedRead


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
    # The Redis value the route asked for (`BearerAuthentication(read_key=...)`), read in the
    # rate limit's round trip; None when it asked for none.
    shared_read: SharedRead | None = None


async def authenticate(
    request: Request, token: str | None, read_key: str | None = None
) -> AuthenticatedUser:
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
    return AuthenticatedUser(user_id, read)


class BearerAuthentication(OAuth2PasswordBearer):
    """The OAuth2 bearer scheme (as OpenAPI shows it) and the authentication, in one dependency
    level: FastAPI solves every level per request, and this one runs on every order route.

    `auto_error=False`: a missing token goes through the one error mapping like any other 401.
    `read_key`, given the request, names a Redis key to read along with the rate limit (or None).
    """

    def __init__(self, read_key: Callable[[Request], str | None] | None = None) -> None:
        super().__init__(tokenUrl="/token/", auto_error=False, scheme_name="OAuth2PasswordBearer")
        self._read_key = read_key

    async def __call__(self, request: Request) -> AuthenticatedUser:  # type: ignore[override]
        token = await super().__call__(request)
        key = self._read_key(request) if self._read_key is not None else None
        return await authenticate(request, token, key)


CurrentUser = Annotated[AuthenticatedUser, Depends(BearerAuthentication())]
