"""Card lifecycle: application forms, cards, transitions, batches, queue, expiry notices.

Revision ID: 0018_cards
Revises: 0015_network
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from kiban.core.database import UTCDateTime

revision: str = "0018_cards"
down_revision: str | Sequence[str] | None = "0015_network"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "cards_forms",
        sa.Column("application_id", sa.String(23), primary_key=True),
        sa.Column("resident_code", sa.String(11), nullable=False),
        sa.Column("municipality_code", sa.String(6), nullable=False),
        sa.Column("issued_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_cards_forms_resident_code", "cards_forms", ["resident_code"])
    op.create_table(
        "cards_cards",
        sa.Column("card_id", sa.String(12), primary_key=True),
        sa.Column("application_id", sa.String(23), nullable=False),
        sa.Column("resident_code", sa.String(11), nullable=False),
        sa.Column("municipality_code", sa.String(6), nullable=False),
        sa.Column("channel", sa.String(8), nullable=False),
        sa.Column("employer", sa.Text(), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("state_since", UTCDateTime(), nullable=False),
        sa.Column("applied_on", sa.Date(), nullable=False),
        sa.Column("defect_code", sa.String(32), nullable=True),
        sa.Column("express", sa.Boolean(), nullable=False),
        sa.Column("express_reason", sa.String(16), nullable=True),
        sa.Column("express_due", sa.Date(), nullable=True),
        sa.Column("batch_id", sa.Uuid(), nullable=True),
        sa.Column("issued_on", sa.Date(), nullable=True),
        sa.Column("expires_on", sa.Date(), nullable=True),
        sa.Column("overseas", sa.Boolean(), nullable=False),
        sa.Column("user_auth_key", sa.Text(), nullable=True),
        sa.Column("signature_key", sa.Text(), nullable=True),
        sa.Column("user_auth_serial", sa.String(40), nullable=True),
        sa.Column("signature_serial", sa.String(40), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_cards_cards_application_id", "cards_cards", ["application_id"], unique=True)
    op.create_index("ix_cards_cards_resident_code", "cards_cards", ["resident_code"])
    op.create_index("ix_cards_cards_state", "cards_cards", ["state", "municipality_code"])
    op.create_index("ix_cards_cards_batch_id", "cards_cards", ["batch_id"])
    op.create_table(
        "cards_transitions",
        sa.Column("id", SEQ, primary_key=True, autoincrement=True),
        sa.Column("card_id", sa.String(12), nullable=False),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("request_id", sa.String(64), nullable=True),
    )
    op.create_index("ix_cards_transitions_card_id", "cards_transitions", ["card_id", "id"])
    op.create_index("ix_cards_transitions_request_id", "cards_transitions", ["request_id"], unique=True)
    op.create_table(
        "cards_batches",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("manufacturer", sa.String(32), nullable=False),
        sa.Column("ordered_at", UTCDateTime(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("express", sa.Boolean(), nullable=False),
    )
    op.create_table(
        "cards_queue",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("queue", sa.String(32), nullable=False),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("enqueued_at", UTCDateTime(), nullable=False),
        sa.Column("consumed_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_cards_queue_message_id", "cards_queue", ["message_id"], unique=True)
    op.create_index("ix_cards_queue_pending", "cards_queue", ["queue", "consumed_at", "seq"])
    op.create_table(
        "cards_expiry_notices",
        sa.Column("id", SEQ, primary_key=True, autoincrement=True),
        sa.Column("card_id", sa.String(12), nullable=False),
        sa.Column("subject", sa.String(16), nullable=False),
        sa.Column("expires_on", sa.Date(), nullable=False),
        sa.Column("channel", sa.String(8), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index(
        "ix_cards_expiry_notices_once",
        "cards_expiry_notices",
        ["card_id", "subject", "expires_on"],
        unique=True,
    )
    op.create_table(
        "cards_calls",
        sa.Column("id", SEQ, primary_key=True, autoincrement=True),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("answered_at", UTCDateTime(), nullable=True),
        sa.Column("abandoned_at", UTCDateTime(), nullable=True),
        sa.Column("agent", sa.String(64), nullable=True),
        sa.Column("card_id", sa.String(12), nullable=True),
        sa.Column("identified", sa.Boolean(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=True),
    )
    op.create_index("ix_cards_calls_received_at", "cards_calls", ["received_at"])


def downgrade() -> None:
    for table in (
        "cards_calls",
        "cards_expiry_notices",
        "cards_queue",
        "cards_batches",
        "cards_transitions",
        "cards_cards",
        "cards_forms",
    ):
        op.drop_table(table)
