"""`oms check`: every configured dependency tried, a table, an exit code a script can use."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import pytest

from oms import migrate
from oms.check import State, _migration_heads, exit_code, format_table, run_checks
from oms.events.rabbitmq import dead_letter_queue_name, queue_arguments
from tests.conftest import make_settings
from tests.support.processes import OMS, free_port, oms_env
from tests.support.services import fresh_postgres_database, service_unavailable

REDIS_URL = "redis://127.0.0.1:6379/0"
CELERY_BROKER_URL = "redis://127.0.0.1:6379/1"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"


def _rows(table: str) -> dict[str, list[str]]:
    """The table's rows by dependency name: [state, latency, details]."""
    lines = table.splitlines()
    header = lines[0]
    starts = [header.index(title) for title in ("STATE", "LATENCY MS", "DETAILS")]
    rows = {}
    for line in lines[1:]:
        cells = [line[: starts[0]], line[starts[0] : starts[1]], line[starts[1] : starts[2]]]
        rows[cells[0].strip()] = [cell.strip() for cell in (*cells[1:], line[starts[2] :])]
    return rows


@pytest.fixture(scope="module")
def migrated_database() -> Iterator[str]:
    with fresh_postgres_database("oms_check") as url:
        migrate.upgrade(url)
        yield url


HEAD = "".join(_migration_heads("sqlite://"))


def test_all_dependencies_up_exits_zero(migrated_database: str, tmp_path: Path) -> None:
    env = oms_env(
        database_url=migrated_database,
        redis_url=REDIS_URL,
        celery_broker_url=CELERY_BROKER_URL,
        rabbitmq_url=RABBITMQ_URL,
    )
    result = subprocess.run(
        [OMS, "check"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )

    rows = _rows(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(rows) == ["database", "redis (cache)", "celery broker", "rabbitmq"]
    assert {row[0] for row in rows.values()} == {"ok"}
    assert f"schema at head {HEAD}" in rows["database"][2]
    assert "db 0" in rows["redis (cache)"][2]
    assert "db 1" in rows["celery broker"][2]
    assert "queue new_order" in rows["rabbitmq"][2]
    assert all(float(row[1]) >= 0 for row in rows.values())


def test_closed_ports_fail_and_say_which(tmp_path: Path) -> None:
    port = free_port()
    env = oms_env(
        database_url=f"postgresql://postgres:pg-pass@127.0.0.1:{port}/oms",
        redis_url=f"redis://127.0.0.1:{port}/0",
        rabbitmq_url=f"amqp://guest:rabbit-pass@127.0.0.1:{port}/",
    )
    result = subprocess.run(
        [OMS, "check", "--timeout", "2"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    rows = _rows(result.stdout)
    assert result.returncode == 1
    assert rows["database"][0] == "unreachable"
    assert rows["redis (cache)"][0] == "unreachable"
    assert rows["rabbitmq"][0] == "unreachable"
    assert rows["celery broker"][0] == "not configured"
    assert f"127.0.0.1:{port}" in rows["rabbitmq"][2]
    assert "pg-pass" not in result.stdout + result.stderr
    assert "rabbit-pass" not in result.stdout + result.stderr


async def test_embedded_defaults_are_listed_as_not_configured(tmp_path: Path) -> None:
    database = tmp_path / "oms.db"
    await asyncio.to_thread(migrate.upgrade, f"sqlite:///{database}")

    results = await run_checks(make_settings(f"sqlite:///{database}"), timeout_seconds=2)

    assert [(result.dependency, result.state) for result in results] == [
        ("database", State.OK),
        ("redis (cache)", State.NOT_CONFIGURED),
        ("celery broker", State.NOT_CONFIGURED),
        ("rabbitmq", State.NOT_CONFIGURED),
    ]
    assert exit_code(results) == 0
    assert _rows(format_table(results))["redis (cache)"] == [
        "not configured",
        "-",
        "embedded replacement in use",
    ]


async def test_a_database_without_the_schema_fails(tmp_path: Path) -> None:
    missing_file = await run_checks(
        make_settings(f"sqlite:///{tmp_path / 'absent.db'}"), timeout_seconds=2
    )
    with fresh_postgres_database("oms_check_empty") as url:
        empty_postgres = await run_checks(make_settings(url), timeout_seconds=2)

    assert missing_file[0].state == State.NOT_MIGRATED
    assert not (tmp_path / "absent.db").exists()
    assert empty_postgres[0].state == State.NOT_MIGRATED
    assert "run `oms migrate`" in empty_postgres[0].details
    assert exit_code(empty_postgres) == 1


async def test_an_older_schema_is_reported_as_outdated(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'oms.db'}"
    await asyncio.to_thread(migrate.upgrade, database)
    await asyncio.to_thread(migrate.downgrade, database, "base")

    [result, *_] = await run_checks(make_settings(database), timeout_seconds=2)

    assert result.state == State.OUTDATED
    assert f"schema at nothing, code expects {HEAD}" in result.details


@pytest.fixture
async def queue_with_two_messages() -> AsyncIterator[str]:
    name = f"oms_check_{uuid.uuid4().hex[:12]}"
    try:
        connection = await aio_pika.connect(RABBITMQ_URL, timeout=3)
    except Exception as error:
        service_unavailable("RabbitMQ", error)
        raise
    async with connection:
        channel = await connection.channel()
        # Declared the way the relay declares NEW_ORDER_QUEUE (a quorum queue and its DLQ).
        settings = make_settings("sqlite://", new_order_queue=name)
        dlq = await channel.declare_queue(
            dead_letter_queue_name(name),
            durable=True,
            arguments=queue_arguments(settings, dead_letter_queue_name(name)),
        )
        queue = await channel.declare_queue(
            name, durable=True, arguments=queue_arguments(settings, name)
        )
        for body in (b"1", b"2"):
            await channel.default_exchange.publish(aio_pika.Message(body), routing_key=name)
        try:
            yield name
        finally:
            await queue.delete(if_unused=False, if_empty=False)
            await dlq.delete(if_unused=False, if_empty=False)


async def test_rabbitmq_row_reports_queue_depth_and_consumers(
    queue_with_two_messages: str, migrated_database: str
) -> None:
    missing_queue = f"oms_check_missing_{uuid.uuid4().hex[:12]}"
    settings = make_settings(migrated_database, rabbitmq_url=RABBITMQ_URL)

    existing = await run_checks(settings, timeout_seconds=3, queue=queue_with_two_messages)
    missing = await run_checks(settings, timeout_seconds=3, queue=missing_queue)

    assert existing[3].state == State.OK
    assert f"quorum queue {queue_with_two_messages}: 2 messages, 0 consumers" in existing[3].details
    assert "nothing consumes it" in existing[3].details
    assert missing[3].state == State.OK
    assert f"queue {missing_queue} does not exist yet" in missing[3].details
