"""Numbering store: resident_codes (住民票コード) and individual_numbers (個人番号).

Revision ID: 0002_numbering
Revises: 0001_base
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_numbering"
down_revision: str | Sequence[str] | None = "0001_base"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "resident_codes",
        sa.Column("code", sa.String(11), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retired_reason", sa.String(200), nullable=True),
        sa.Column("replaced_by", sa.String(11), nullable=True),
        sa.CheckConstraint("status IN ('issued', 'retired')", name=op.f("ck_resident_codes_status")),
        sa.ForeignKeyConstraint(
            ["replaced_by"],
            ["resident_codes.code"],
            name=op.f("fk_resident_codes_replaced_by_resident_codes"),
        ),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_resident_codes")),
    )
    op.create_index(op.f("ix_resident_codes_replaced_by"), "resident_codes", ["replaced_by"], unique=False)
    op.create_table(
        "individual_numbers",
        sa.Column("number", sa.String(12), nullable=False),
        sa.Column("resident_code", sa.String(11), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retired_reason", sa.String(200), nullable=True),
        sa.CheckConstraint("status IN ('active', 'retired')", name=op.f("ck_individual_numbers_status")),
        sa.CheckConstraint("generation >= 0", name=op.f("ck_individual_numbers_generation")),
        sa.ForeignKeyConstraint(
            ["resident_code"],
            ["resident_codes.code"],
            name=op.f("fk_individual_numbers_resident_code_resident_codes"),
        ),
        sa.PrimaryKeyConstraint("number", name=op.f("pk_individual_numbers")),
        sa.UniqueConstraint("resident_code", "generation", name=op.f("uq_individual_numbers_resident_code")),
    )
    op.create_index(
        "ix_individual_numbers_one_active",
        "individual_numbers",
        ["resident_code"],
        unique=True,
        sqlite_where=sa.text("status = 'active'"),
        postgresql_where=sa.text("status = 'active'"),
    )


def downgrade() -> None:
    op.drop_index("ix_individual_numbers_one_active", table_name="individual_numbers")
    op.drop_table("individual_numbers")
    op.drop_index(op.f("ix_resident_codes_replaced_by"), table_name="resident_codes")
    op.drop_table("resident_codes")
