"""Registration and login rules."""

from __future__ import annotations

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
