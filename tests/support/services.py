"""Reaching the real services the integration tests need."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
import redis
from psycopg import sql

IN_CI = os.environ.get("CI", "").lower() == "true"
POSTGRES_ADMIN_DSN = os.environ.get(
    "OMS_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_TEST_SERVER = os.environ.get("OMS_TEST_REDIS_URL", "redis://127.0.0.1:6379")
# Test runs use Redis databases 2-15 (db 0 is the service's default, db 1 Celery's broker).
REDIS_TEST_DATABASES = range(2, 16)
REDIS_CLAIM_KEY = "oms-test-run:claim"
REDIS_CLAIM_SECONDS = 3600


def service_unavailable(name: str, error: Exception) -> None:
    """In CI a missing service fails the run; on a laptop it skips that backend."""
    message = f"{name} is not reachable: {error}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@contextmanager
def fresh_postgres_database(prefix: str = "oms_test") -> Iterator[str]:
    """A new, empty database for this run; dropped afterwards. Yields its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        service_unavailable("PostgreSQL", error)
        raise
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextmanager
def claimed_redis_database() -> Iterator[str]:
    """A Redis database no other test run is using, emptied; yields its URL and empties it
    again afterwards. Runs claim a database with a key (SET NX), so parallel runs on one
    server do not collide."""
    run_id = uuid.uuid4().hex
    try:
        for db in random.sample(REDIS_TEST_DATABASES, len(REDIS_TEST_DATABASES)):
            client = redis.Redis.from_url(
                f"{REDIS_TEST_SERVER}/{db}", socket_connect_timeout=3, socket_timeout=3
            )
            if client.set(REDIS_CLAIM_KEY, run_id, nx=True, ex=REDIS_CLAIM_SECONDS):
                break
            client.close()
        else:
            raise RuntimeError(f"every Redis test database {REDIS_TEST_DATABASES} is in use")
    except redis.RedisError as error:
        service_unavailable("Redis", error)
        raise
    with client:
        # A run that crashed may have left keys behind; its claim has expired since.
        with client.pipeline(transaction=True) as pipe:
            pipe.flushdb().set(REDIS_CLAIM_KEY, run_id, ex=REDIS_CLAIM_SECONDS).execute()
        try:
            yield f"{REDIS_TEST_SERVER}/{db}"
        finally:
            client.flushdb()
