"""Event pipeline: the consumer's inbox and the order's hand-off time.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
UNPROCESSED = sa.text("processed_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "inbox",
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("received_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_inbox")),
    )
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("dispatched_at", TIMESTAMP, nullable=True))
    op.create_index(
        "ix_orders_unprocessed",
        "orders",
        ["created_at"],
        postgresql_where=UNPROCESSED,
        sqlite_where=UNPROCESSED,
    )


def downgrade() -> None:
    op.drop_index("ix_orders_unprocessed", table_name="orders")
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("dispatched_at")
    op.drop_table("inbox")
