"""Domain events: transactional outbox, handlers' inbox, and failures (parked events).

Revision ID: 0003_events
Revises: 0001_base
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_events"
down_revision: str | Sequence[str] | None = "0001_base"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEQ_TYPE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "event_outbox",
        sa.Column("seq", SEQ_TYPE, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("source", sa.String(length=100), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_event_outbox")),
        sa.UniqueConstraint("event_id", name=op.f("uq_event_outbox_event_id")),
    )
    op.create_index("ix_event_outbox_key_seq", "event_outbox", ["key", "seq"], unique=False)
    op.create_index("ix_event_outbox_delivered_at_seq", "event_outbox", ["delivered_at", "seq"], unique=False)
    op.create_index("ix_event_outbox_published_at_seq", "event_outbox", ["published_at", "seq"], unique=False)

    op.create_table(
        "event_inbox",
        sa.Column("handler", sa.String(length=100), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("handled_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("handler", "event_id", name=op.f("pk_event_inbox")),
    )

    op.create_table(
        "event_failure",
        sa.Column("handler", sa.String(length=100), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("event", sa.JSON(), nullable=False),
        sa.Column("first_failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("parked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("handler", "event_id", name=op.f("pk_event_failure")),
    )
    op.create_index("ix_event_failure_parked_at", "event_failure", ["parked_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_event_failure_parked_at", table_name="event_failure")
    op.drop_table("event_failure")
    op.drop_table("event_inbox")
    op.drop_index("ix_event_outbox_published_at_seq", table_name="event_outbox")
    op.drop_index("ix_event_outbox_delivered_at_seq", table_name="event_outbox")
    op.drop_index("ix_event_outbox_key_seq", table_name="event_outbox")
    op.drop_table("event_outbox")
