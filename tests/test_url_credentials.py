"""Passwords holding URL delimiters (`@ : / % #`) reach PostgreSQL and RabbitMQ intact, given on
their own (DATABASE_URL_PASSWORD, RABBITMQ_URL_PASSWORD: what docker-compose.yml passes) or
percent-escaped inside the URL."""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml
from sqlalchemy import make_url

from oms.config import Settings
from tests.support.processes import OMS, oms_env
from tests.support.services import fresh_postgres_database, service_unavailable

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "p@ss:w/o%rd#1"
RABBITMQ = "127.0.0.1:5672"


def _rabbitmqctl(*args: str) -> None:
    binary = shutil.which("rabbitmqctl")
    if binary is None:
        service_unavailable("rabbitmqctl", FileNotFoundError("rabbitmqctl is not installed"))
    assert binary is not None
    subprocess.run([binary, *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def rabbitmq_user() -> Iterator[str]:
    """A RabbitMQ user whose password is PASSWORD (the broker checks it, unlike trust auth)."""
    name = f"oms_test_{uuid.uuid4().hex[:10]}"
    _rabbitmqctl("add_user", name, PASSWORD)
    try:
        _rabbitmqctl("set_permissions", "-p", "/", name, ".*", ".*", ".*")
        yield name
    finally:
        _rabbitmqctl("delete_user", name)


def check_rows(tmp_path: Path, **settings: str) -> dict[str, list[str]]:
    env = oms_env(new_order_queue=f"oms_url_{uuid.uuid4().hex[:10]}", **settings)
    result = subprocess.run(
        [OMS, "check"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert PASSWORD not in result.stdout + result.stderr
    assert quote(PASSWORD, safe="") not in result.stdout + result.stderr
    rows = [re.split(r"\s{2,}", line.strip()) for line in result.stdout.splitlines()[1:]]
    return {row[0]: row[1:] for row in rows}


def test_a_password_given_on_its_own_reaches_the_broker(rabbitmq_user: str, tmp_path: Path) -> None:
    rows = check_rows(
        tmp_path,
        rabbitmq_url=f"amqp://{rabbitmq_user}@{RABBITMQ}/",
        rabbitmq_url_password=PASSWORD,
    )
    assert rows["rabbitmq"][0] == "ok", rows


def test_a_percent_escaped_password_in_the_url_reaches_the_broker(
    rabbitmq_user: str, tmp_path: Path
) -> None:
    escaped = quote(PASSWORD, safe="")
    rows = check_rows(tmp_path, rabbitmq_url=f"amqp://{rabbitmq_user}:{escaped}@{RABBITMQ}/")
    assert rows["rabbitmq"][0] == "ok", rows
    wrong = check_rows(tmp_path, rabbitmq_url=f"amqp://{rabbitmq_user}:wrong@{RABBITMQ}/")
    assert wrong["rabbitmq"][0] == "unreachable"  # the broker does check the password


def test_a_database_password_is_escaped_into_the_url(tmp_path: Path) -> None:
    with fresh_postgres_database("oms_url") as url:
        parts = make_url(url)
        assert parts.password is None
        rows = check_rows(tmp_path, database_url=url, database_url_password=PASSWORD)
        # Reached (not "unreachable": host, port and database survived the password).
        assert rows["database"][0] == "not migrated", rows
    settings = Settings(_env_file=None, database_url=url, database_url_password=PASSWORD)  # type: ignore[call-arg]
    assert make_url(settings.database_url).password == PASSWORD
    assert make_url(settings.database_url).database == parts.database


def test_compose_passes_the_passwords_outside_the_urls() -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        service_unavailable("docker-compose", FileNotFoundError("docker-compose is not installed"))
    assert compose is not None
    result = subprocess.run(
        [compose, "-f", "docker-compose.yml", "config"],
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "OMS_ENV_FILE": ".env.example",
            "POSTGRES_PASSWORD": PASSWORD,
            "RABBITMQ_PASSWORD": PASSWORD,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    environment = yaml.safe_load(result.stdout)["services"]["api"]["environment"]
    # What the container's Settings make of that environment.
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=environment["DATABASE_URL"],
        database_url_password=environment["DATABASE_URL_PASSWORD"],
        rabbitmq_url=environment["RABBITMQ_URL"],
        rabbitmq_url_password=environment["RABBITMQ_URL_PASSWORD"],
    )
    database = make_url(settings.database_url)
    assert (database.username, database.password, database.host) == ("oms", PASSWORD, "postgres")
    assert settings.rabbitmq_url == f"amqp://oms:{quote(PASSWORD, safe='')}@rabbitmq:5672/"
