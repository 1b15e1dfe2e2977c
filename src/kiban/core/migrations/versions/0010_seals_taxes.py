"""Seal registrations (印鑑登録) and inhabitant-tax assessments (課税情報).

Revision ID: 0010_seals_taxes
Revises: 0007_foundation_merge
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from kiban.core.database import UTCDateTime

revision: str = "0010_seals_taxes"
down_revision: str | Sequence[str] | None = "0007_foundation_merge"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ACTIVE = "status = 'active'"


def upgrade() -> None:
    op.create_table(
        "seal_registrations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("municipality_code", sa.String(6), nullable=False),
        sa.Column("resident_id", sa.Uuid(), nullable=False),
        sa.Column("resident_code", sa.String(11), nullable=False),
        sa.Column("card_number", sa.String(12), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("image_png", sa.LargeBinary(), nullable=False),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("source_format", sa.String(8), nullable=False),
        sa.Column("registered_on", sa.Date(), nullable=False),
        sa.Column("registered_at", UTCDateTime(), nullable=False),
        sa.Column("registered_by", sa.String(64), nullable=False),
        sa.Column("abolished_on", sa.Date(), nullable=True),
        sa.Column("abolished_at", UTCDateTime(), nullable=True),
        sa.Column("abolished_by", sa.String(64), nullable=True),
        sa.Column("abolition_cause", sa.String(20), nullable=True),
        sa.Column("abolition_reason", sa.Text(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.CheckConstraint("status IN ('active', 'abolished')", name="ck_seal_registrations_status"),
        sa.CheckConstraint(
            "(status = 'active' AND abolished_on IS NULL) "
            "OR (status = 'abolished' AND abolished_on IS NOT NULL)",
            name="ck_seal_registrations_abolished_has_date",
        ),
        sa.CheckConstraint("width > 0 AND height > 0", name="ck_seal_registrations_dimensions"),
        sa.ForeignKeyConstraint(
            ["resident_id"], ["residents.id"], name="fk_seal_registrations_resident_id_residents"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_seal_registrations"),
        sa.UniqueConstraint("municipality_code", "card_number", name="uq_seal_registrations_card"),
    )
    op.create_index("ix_seal_registrations_resident_id", "seal_registrations", ["resident_id"])
    op.create_index(
        "uq_seal_registrations_active_resident",
        "seal_registrations",
        ["resident_id"],
        unique=True,
        sqlite_where=sa.text(_ACTIVE),
        postgresql_where=sa.text(_ACTIVE),
    )

    op.create_table(
        "tax_assessments",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("municipality_code", sa.String(6), nullable=False),
        sa.Column("resident_id", sa.Uuid(), nullable=False),
        sa.Column("resident_code", sa.String(11), nullable=False),
        sa.Column("fiscal_year", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("income_total", sa.BigInteger(), nullable=False),
        sa.Column("taxable_income", sa.BigInteger(), nullable=False),
        sa.Column("tax_amount", sa.BigInteger(), nullable=False),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
        sa.Column("recorded_by", sa.String(64), nullable=False),
        sa.CheckConstraint("version >= 1", name="ck_tax_assessments_version"),
        sa.CheckConstraint(
            "income_total >= 0 AND taxable_income >= 0 AND tax_amount >= 0",
            name="ck_tax_assessments_non_negative",
        ),
        sa.CheckConstraint("taxable_income <= income_total", name="ck_tax_assessments_taxable_within_total"),
        sa.CheckConstraint("tax_amount <= income_total", name="ck_tax_assessments_tax_within_income"),
        sa.ForeignKeyConstraint(
            ["resident_id"], ["residents.id"], name="fk_tax_assessments_resident_id_residents"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_tax_assessments"),
        sa.UniqueConstraint("resident_id", "fiscal_year", "version", name="uq_tax_assessments_version"),
    )
    op.create_index("ix_tax_assessments_municipality_code", "tax_assessments", ["municipality_code"])
    op.create_index("ix_tax_assessments_resident_id", "tax_assessments", ["resident_id"])


def downgrade() -> None:
    op.drop_table("tax_assessments")
    op.drop_index("uq_seal_registrations_active_resident", table_name="seal_registrations")
    op.drop_index("ix_seal_registrations_resident_id", table_name="seal_registrations")
    op.drop_table("seal_registrations")
