"""Cards: renewal (更新) links a new card to the one it renews; the record of changes to an issued
card that are not state changes (在留期間 extension, certificate renewal).

Revision ID: 0024_cards_more
Revises: 0022_merge_wave
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from kiban.core.database import UTCDateTime

revision: str = "0024_cards_more"
down_revision: str | Sequence[str] | None = "0022_merge_wave"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("cards_cards") as batch:
        batch.add_column(sa.Column("renewal_of", sa.String(12), nullable=True))
    op.create_table(
        "cards_changes",
        sa.Column("id", SEQ, primary_key=True, autoincrement=True),
        sa.Column("card_id", sa.String(12), nullable=False),
        sa.Column("change", sa.String(32), nullable=False),
        sa.Column("old_value", sa.String(64), nullable=True),
        sa.Column("new_value", sa.String(64), nullable=True),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
    )
    op.create_index("ix_cards_changes_card_id", "cards_changes", ["card_id", "id"])


def downgrade() -> None:
    op.drop_table("cards_changes")
    with op.batch_alter_table("cards_cards") as batch:
        batch.drop_column("renewal_of")
