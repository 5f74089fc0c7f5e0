"""Alembic environment: async engines, one migration run at a time on PostgreSQL."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import func, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from oms.config import async_database_url, get_settings
from oms.models import Base

# Any constant will do; it names the lock every `oms migrate` takes.
MIGRATION_LOCK_ID = 0x6F6D735F6D6967

config = context.config
target_metadata = Base.metadata


def _database_url() -> str:
    url = config.attributes.get("database_url")
    return async_database_url(str(url)) if url else get_settings().database_url


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = create_async_engine(_database_url(), poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            postgres = connection.dialect.name == "postgresql"
            if postgres:
                await connection.execute(select(func.pg_advisory_lock(MIGRATION_LOCK_ID)))
                await connection.commit()
            try:
                await connection.run_sync(_run)
                await connection.commit()
            finally:
                if postgres:
                    await connection.execute(select(func.pg_advisory_unlock(MIGRATION_LOCK_ID)))
                    await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
