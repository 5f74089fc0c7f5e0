from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from alembic.script import ScriptDirectory

from oms import migrate
from tests.support.services import fresh_postgres_database

PG_TABLES = "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
ENUM = "SELECT count(*) FROM pg_type WHERE typname = 'order_status'"
HEAD = ScriptDirectory.from_config(migrate.alembic_config("sqlite://")).get_current_head()


def _pg(url: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as connection:
        return connection.execute(query).fetchall()


def test_postgres_upgrade_downgrade_upgrade() -> None:
    with fresh_postgres_database("oms_migrations") as url:
        migrate.upgrade(url)
        tables = [row[0] for row in _pg(url, PG_TABLES)]
        assert tables == [
            "alembic_version", "idempotency_keys", "inbox", "orders", "outbox", "users",
        ]  # fmt: skip
        assert _pg(url, ENUM) == [(1,)]

        migrate.downgrade(url, "base")
        assert [row[0] for row in _pg(url, PG_TABLES)] == ["alembic_version"]
        assert _pg(url, ENUM) == [(0,)]

        migrate.upgrade(url)
        assert len(_pg(url, PG_TABLES)) == 6


def test_sqlite_upgrade_downgrade_upgrade(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "oms.db"
    url = f"sqlite:///{path}"
    query = "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY 1"
    migrate.upgrade(url)
    with sqlite3.connect(path) as db:
        assert [r[0] for r in db.execute(query)] == [
            "alembic_version", "idempotency_keys", "inbox", "orders", "outbox", "users",
        ]  # fmt: skip
    migrate.downgrade(url, "base")
    with sqlite3.connect(path) as db:
        assert [r[0] for r in db.execute(query)] == ["alembic_version"]
    migrate.upgrade(url)


@pytest.mark.parametrize("runs", [3])
def test_concurrent_migrate_commands_all_succeed(runs: int) -> None:
    with fresh_postgres_database("oms_migrations") as url:
        env = {"DATABASE_URL": url, "PATH": str(Path(sys.executable).parent)}
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "oms.cli", "migrate"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for _ in range(runs)
        ]
        outputs = [process.communicate(timeout=60)[0].decode() for process in processes]
        assert [p.returncode for p in processes] == [0] * runs, outputs
        assert _pg(url, "SELECT version_num FROM alembic_version") == [(HEAD,)]


def test_event_pipeline_migration_downgrades_to_the_initial_schema(tmp_path: Path) -> None:
    """0002 on its own, both ways, on both backends: the previous schema comes back intact."""
    import sqlite3

    path = tmp_path / "oms.db"
    migrate.upgrade(f"sqlite:///{path}")
    migrate.downgrade(f"sqlite:///{path}", "0001")
    with sqlite3.connect(path) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(orders)")]
        indexes = [row[1] for row in db.execute("PRAGMA index_list(orders)")]
    assert "dispatched_at" not in columns
    assert "ix_orders_user_id_created_at" in indexes
    migrate.upgrade(f"sqlite:///{path}")

    with fresh_postgres_database("oms_migrations") as url:
        migrate.upgrade(url)
        migrate.downgrade(url, "0001")
        assert "inbox" not in [row[0] for row in _pg(url, PG_TABLES)]
        migrate.upgrade(url)
        columns = _pg(
            url, "SELECT column_name FROM information_schema.columns WHERE table_name = 'orders'"
        )
        assert ("dispatched_at",) in columns
