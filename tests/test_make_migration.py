"""`make migration m="..."`: autogenerate against a scratch database, on a copy of migrations/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest

from oms import migrate
from tests.support.services import POSTGRES_ADMIN_DSN, fresh_postgres_database

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = "SELECT datname FROM pg_database WHERE datname LIKE 'oms_migration_scratch_%'"


@pytest.fixture
def migrations_copy(tmp_path: Path) -> Path:
    """The repository's migrations/, copied: generated revisions never land in the checkout."""
    copy = tmp_path / "migrations"
    shutil.copytree(ROOT / "migrations", copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def scratch_databases() -> list[str]:
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
        return [row[0] for row in admin.execute(SCRATCH).fetchall()]


def columns(url: str, table: str) -> list[str]:
    query = "SELECT column_name FROM information_schema.columns WHERE table_name = %s"
    with psycopg.connect(url) as connection:
        return [row[0] for row in connection.execute(query, (table,)).fetchall()]


def test_a_model_change_becomes_the_next_revision_which_upgrades_and_downgrades(
    migrations_copy: Path,
) -> None:
    before = set(scratch_databases())
    versions = migrations_copy / "versions"
    existing = sorted(path.name for path in versions.glob("[0-9]*.py"))
    # A new nullable column on users, added to the models in a separate process only.
    program = textwrap.dedent(f"""
        import sqlalchemy as sa
        from pathlib import Path
        from oms.auth.models import User
        from oms import migrate
        User.__table__.append_column(sa.Column("nickname", sa.String(40), nullable=True))
        print(migrate.new_revision(
            "users nickname", {POSTGRES_ADMIN_DSN!r}, Path({str(migrations_copy)!r})
        ))
    """)
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    written = Path(result.stdout.strip().splitlines()[-1])
    number = f"{int(existing[-1][:4]) + 1:04d}"
    assert written.parent == versions
    assert written.name == f"{number}_users_nickname.py"
    source = written.read_text()
    assert f'revision: str = "{number}"' in source
    assert f'down_revision: str | None = "{existing[-1][:4]}"' in source
    assert 'op.add_column("users", sa.Column("nickname", sa.String(length=40), nullable=True))' in (
        source
    )
    assert 'op.drop_column("users", "nickname")' in source
    lint = subprocess.run(
        [str(Path(sys.executable).with_name("ruff")), "format", "--check", str(written)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert lint.returncode == 0, lint.stdout  # make lint covers migrations/
    assert set(scratch_databases()) == before  # the scratch database was dropped

    with fresh_postgres_database("oms_migrations") as url:
        config = migrate.alembic_config(url)
        config.set_main_option("script_location", str(migrations_copy))
        from alembic import command

        command.upgrade(config, "head")
        assert "nickname" in columns(url, "users")
        command.downgrade(config, "-1")
        assert "nickname" not in columns(url, "users")
        command.upgrade(config, "head")


def test_no_model_change_writes_nothing_and_exits_1(migrations_copy: Path) -> None:
    before = sorted((migrations_copy / "versions").iterdir())
    with pytest.raises(migrate.NoSchemaChange):
        migrate.new_revision("nothing", POSTGRES_ADMIN_DSN, migrations_copy)
    assert sorted((migrations_copy / "versions").iterdir()) == before

    result = subprocess.run(
        ["make", "--no-print-directory", "migration", "m=nothing"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "MIGRATION_DATABASE_URL": POSTGRES_ADMIN_DSN},
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "the models match the schema at head: no revision written" in result.stderr


def test_make_migration_without_a_message_is_a_usage_error() -> None:
    result = subprocess.run(
        ["make", "--no-print-directory", "migration"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert 'usage: make migration m="what the revision changes"' in result.stderr
