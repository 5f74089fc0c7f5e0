"""Running the Alembic migrations (`oms migrate`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import column, literal, make_url, select, table, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

import oms
from oms.config import async_database_url

# Inside a built wheel the scripts ship as `oms/_migrations`; in a checkout they sit at the root.
_CANDIDATES = (
    Path(oms.__file__).resolve().parent / "_migrations",
    Path(oms.__file__).resolve().parents[2] / "migrations",
)


def alembic_config(database_url: str) -> Config:
    script_location = next((path for path in _CANDIDATES if path.is_dir()), None)
    if script_location is None:
        raise RuntimeError("Alembic migration scripts not found")
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrate up; concurrent callers on PostgreSQL wait for each other (advisory lock)."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


def create_database_if_missing(database_url: str) -> bool:
    """Create the PostgreSQL database the URL names, if it does not exist (SQLite creates its
    file by itself). Returns True when it was created."""
    url = make_url(async_database_url(database_url))
    if url.get_backend_name() != "postgresql" or not url.database:
        return False
    return asyncio.run(_create_postgres_database(database_url, url.database))


async def _create_postgres_database(database_url: str, name: str) -> bool:
    maintenance = make_url(async_database_url(database_url)).set(database="postgres")
    engine = create_async_engine(maintenance, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            databases = table("pg_database", column("datname"))
            exists = await connection.scalar(
                select(literal(1)).select_from(databases).where(databases.c.datname == name)
            )
            if exists:
                return False
            # DDL has no bound parameters: the name goes in as a quoted identifier.
            quoted = connection.dialect.identifier_preparer.quote_identifier(name)
            await connection.execute(text(f"CREATE DATABASE {quoted}"))
            return True
    finally:
        await engine.dispose()
