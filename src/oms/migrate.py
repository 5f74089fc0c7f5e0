"""Running the Alembic migrations (`oms migrate`)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

import oms

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
