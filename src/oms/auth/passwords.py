"""Argon2id hashing off the event loop, in a bounded thread pool."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from oms.config import Settings

R = TypeVar("R")


class PasswordHasher:
    def __init__(self, settings: Settings) -> None:
        self._hash = PasswordHash(
            (
                Argon2Hasher(
                    memory_cost=settings.argon2_memory_cost_kib,
                    time_cost=settings.argon2_time_cost,
                    parallelism=settings.argon2_parallelism,
                ),
            )
        )
        self._pool = ThreadPoolExecutor(
            max_workers=settings.password_hash_workers, thread_name_prefix="argon2"
        )
        # Verified against when the email is unknown, so timing does not tell which exist.
        self._dummy_hash = self._hash.hash("dummy password for timing equalisation")

    async def hash(self, password: str) -> str:
        return await self._run(self._hash.hash, password)

    async def verify_and_update(self, password: str, hashed: str) -> tuple[bool, str | None]:
        """Check a password; the second value is a new hash when the parameters changed."""
        return await self._run(self._hash.verify_and_update, password, hashed)

    async def burn_verification(self, password: str) -> None:
        """Spend the same time as a real verification, for an unknown user."""
        await self._run(self._hash.verify, password, self._dummy_hash)

    async def _run(self, fn: Callable[..., R], *args: str) -> R:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
