"""Registration and login rules."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from oms.auth.models import User
from oms.auth.passwords import PasswordHasher
from oms.auth.tokens import INVALID_TOKEN
from oms.exceptions import AuthenticationError, ConflictError

EMAIL_TAKEN = "A user with this email already exists"
BAD_CREDENTIALS = "Incorrect email or password"


async def ensure_user_exists(db: AsyncSession | AsyncConnection, user_id: int) -> None:
    """AuthenticationError (401) if the token's user has been deleted since it was issued."""
    if await db.scalar(_USER_EXISTS, {"user_id": user_id}) is None:
        raise AuthenticationError(INVALID_TOKEN)


_USER_EXISTS = select(User.id).where(User.id == bindparam("user_id"))


class RecentlySeenUsers:
    """The users this process found in the database less than USER_RECHECK_SECONDS ago.

    SPEC 2.4 lets a deleted user's token work for that long, so a request served without the
    database (a cached order) asks this memory instead of PostgreSQL; once an entry is older, the
    next such request checks the database again. Bounded: the oldest entries go first.
    """

    def __init__(
        self,
        recheck_seconds: float,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._recheck = recheck_seconds
        self._max_entries = max_entries
        self._clock = clock
        self._seen_at: dict[int, float] = {}

    def recently_seen(self, user_id: int) -> bool:
        seen_at = self._seen_at.get(user_id)
        return seen_at is not None and self._clock() - seen_at < self._recheck

    def remember(self, user_id: int) -> None:
        self._seen_at.pop(user_id, None)  # re-inserted last: the dict's order is the age order
        if len(self._seen_at) >= self._max_entries:
            del self._seen_at[next(iter(self._seen_at))]
        self._seen_at[user_id] = self._clock()


def normalise_email(email: str) -> str:
    return email.strip().lower()


async def register_user(
    session: AsyncSession, hasher: PasswordHasher, email: str, password: str
) -> User:
    email = normalise_email(email)
    if await _find_by_email(session, email) is not None:
        raise ConflictError(EMAIL_TAKEN)
    user = User(email=email, hashed_password=await hasher.hash(password))
    session.add(user)
    try:
        await session.commit()
    except IntegrityError as exc:  # a concurrent registration of the same email won
        await session.rollback()
        raise ConflictError(EMAIL_TAKEN) from exc
    return user


async def authenticate(
    session: AsyncSession, hasher: PasswordHasher, email: str, password: str
) -> User:
    user = await _find_by_email(session, normalise_email(email))
    if user is None:
        await hasher.burn_verification(password)
        raise AuthenticationError(BAD_CREDENTIALS)
    valid, upgraded_hash = await hasher.verify_and_update(password, user.hashed_password)
    if not valid:
        raise AuthenticationError(BAD_CREDENTIALS)
    if upgraded_hash is not None:
        user.hashed_password = upgraded_hash
        await session.commit()
    return user


async def _find_by_email(session: AsyncSession, email: str) -> User | None:
    found: User | None = await session.scalar(select(User).where(User.email == email))
    return found
