"""Numbering: the record of 個人番号通知書 produced (one letter per number, ever).

Revision ID: 0021_numbering_letters
Revises: 0015_network
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from kiban.core.database import UTCDateTime

revision: str = "0021_numbering_letters"
down_revision: str | Sequence[str] | None = "0015_network"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "numbering_letters",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("number", sa.String(12), nullable=False),
        sa.Column("resident_code", sa.String(11), nullable=False),
        sa.Column("municipality_code", sa.String(6), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("serial", sa.String(40), nullable=False),
        sa.Column("batch_id", sa.Uuid(), nullable=False),
        sa.Column("produced_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("kind IN ('assigned', 'changed')", name=op.f("ck_numbering_letters_kind")),
        sa.ForeignKeyConstraint(
            ["number"],
            ["individual_numbers.number"],
            name=op.f("fk_numbering_letters_number_individual_numbers"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_numbering_letters")),
        sa.UniqueConstraint("number", name=op.f("uq_numbering_letters_number")),
        sa.UniqueConstraint("serial", name=op.f("uq_numbering_letters_serial")),
    )
    op.create_index(op.f("ix_numbering_letters_resident_code"), "numbering_letters", ["resident_code"])
    op.create_index(op.f("ix_numbering_letters_batch_id"), "numbering_letters", ["batch_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_numbering_letters_batch_id"), table_name="numbering_letters")
    op.drop_index(op.f("ix_numbering_letters_resident_code"), table_name="numbering_letters")
    op.drop_table("numbering_letters")
