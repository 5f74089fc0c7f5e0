"""The connection pool: connections that died while idle are replaced before a request sees them."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from oms.db import create_engine
from tests.conftest import make_settings


@pytest.mark.parametrize("idle_seconds", [0.0, 0.2])
async def test_connection_killed_while_idle_is_replaced(
    postgres_url: str, idle_seconds: float
) -> None:
    settings = make_settings(postgres_url, db_pool_ping_idle_seconds=idle_seconds)
    engine, killer = create_engine(settings), create_engine(settings)
    try:
        async with engine.connect() as victim, engine.connect() as other:
            backend = await victim.scalar(text("SELECT pg_backend_pid()"))
            await other.scalar(text("SELECT 1"))
        async with killer.connect() as connection:
            await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
        await asyncio.sleep(idle_seconds + 0.1)

        # Both pooled connections are idle now; the killed one must not reach a query.
        async with engine.connect() as first, engine.connect() as second:
            pids = {
                await first.scalar(text("SELECT pg_backend_pid()")),
                await second.scalar(text("SELECT pg_backend_pid()")),
            }
        assert backend not in pids
    finally:
        await engine.dispose()
        await killer.dispose()
