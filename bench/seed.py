"""A fresh PostgreSQL database for one bench run, seeded in bulk through SQLAlchemy core."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import insert

from oms import migrate
from oms.auth.models import User
from oms.config import Settings
from oms.db import create_engine, utcnow
from oms.orders.models import Order, OrderStatus

BATCH = 5_000
ITEMS: list[dict[str, Any]] = [
    {"product_id": "SKU-1", "name": "Widget", "quantity": 2, "price": 9.99},
    {"product_id": "SKU-2", "name": None, "quantity": 1, "price": 120.5},
]
TOTAL = Decimal("140.48")


@contextmanager
def fresh_database(admin_dsn: str, name: str) -> Iterator[str]:
    """Creates database `name`, migrates it, yields its SQLAlchemy URL, drops it afterwards."""
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base = admin_dsn.rsplit("/", 1)[0]
    url = f"{base.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{name}"
    try:
        migrate.upgrade(url)
        yield url
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@dataclass
class Seeded:
    """Ids the scenarios use; orders are (user_id, order_id) pairs."""

    users: list[int] = field(default_factory=list)
    read_orders: list[tuple[int, uuid.UUID]] = field(default_factory=list)
    patch_orders: dict[str, list[tuple[int, uuid.UUID]]] = field(default_factory=dict)
    list_users: list[int] = field(default_factory=list)
    sized_users: dict[int, int] = field(default_factory=dict)  # order count -> user id


async def seed(
    settings: Settings,
    *,
    users: int,
    reads_per_user: int,
    patch_sets: Sequence[str],
    patches_per_set: int,
    list_users: int,
    list_size: int,
    sized_lists: Sequence[int],
    password_hash: str,
) -> Seeded:
    engine = create_engine(settings)
    seeded = Seeded()
    now = utcnow()
    clock = itertools.count()

    def order_row(user_id: int) -> dict[str, Any]:
        created = now - timedelta(milliseconds=next(clock))
        return {
            "id": uuid.uuid4(),
            "user_id": user_id,
            "items": json.loads(json.dumps(ITEMS)),
            "total_price": TOTAL,
            "status": OrderStatus.PENDING,
            "version": 1,
            "created_at": created,
            "updated_at": created,
            "processed_at": None,
        }

    try:
        async with engine.begin() as connection:
            rows = [
                {"email": f"bench-{i}@example.com", "hashed_password": password_hash}
                for i in range(users + list_users + len(sized_lists))
            ]
            result = await connection.execute(
                insert(User).returning(User.id, sort_by_parameter_order=True), rows
            )
            ids = list(result.scalars())
        seeded.users = ids[:users]
        seeded.list_users = ids[users : users + list_users]
        seeded.sized_users = dict(zip(sized_lists, ids[users + list_users :], strict=True))

        plan: list[tuple[str, int, int]] = []  # (purpose, user id, count)
        plan += [("read", user_id, reads_per_user) for user_id in seeded.users]
        plan += [("list", user_id, list_size) for user_id in seeded.list_users]
        plan += [("sized", user_id, size) for size, user_id in seeded.sized_users.items()]
        for name in patch_sets:
            spread = itertools.cycle(seeded.users)
            plan += [(f"patch:{name}", next(spread), 1) for _ in range(patches_per_set)]

        batch: list[dict[str, Any]] = []
        async with engine.begin() as connection:
            for purpose, user_id, count in plan:
                for _ in range(count):
                    row = order_row(user_id)
                    batch.append(row)
                    if purpose == "read":
                        seeded.read_orders.append((user_id, row["id"]))
                    elif purpose.startswith("patch:"):
                        seeded.patch_orders.setdefault(purpose[6:], []).append((user_id, row["id"]))
                    if len(batch) >= BATCH:
                        await connection.execute(insert(Order), batch)
                        batch = []
            if batch:
                await connection.execute(insert(Order), batch)
            await connection.exec_driver_sql("ANALYZE")
    finally:
        await engine.dispose()
    return seeded
