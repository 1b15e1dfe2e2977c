"""Resident register: households (世帯) and resident records (住民票).

Revision ID: 0005_register
Revises: 0001_base
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from kiban.core.database import UTCDateTime

revision: str = "0005_register"
down_revision: str | Sequence[str] | None = "0001_base"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "households",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("municipality_code", sa.String(6), nullable=False),
        sa.Column("head_resident_id", sa.Uuid(), nullable=True),
        sa.Column("postal_code", sa.String(7), nullable=True),
        sa.Column("prefecture", sa.Text(), nullable=False),
        sa.Column("municipality", sa.Text(), nullable=False),
        sa.Column("town", sa.Text(), nullable=False),
        sa.Column("banchi", sa.Text(), nullable=False),
        sa.Column("katagaki", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_households"),
    )
    op.create_index("ix_households_municipality_code", "households", ["municipality_code"])
    op.create_index("ix_households_head_resident_id", "households", ["head_resident_id"])

    op.create_table(
        "residents",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("municipality_code", sa.String(6), nullable=False),
        sa.Column("household_id", sa.Uuid(), nullable=False),
        sa.Column("resident_code", sa.String(11), nullable=False),
        sa.Column("individual_number", sa.String(12), nullable=True),
        sa.Column("family_name", sa.Text(), nullable=False),
        sa.Column("given_name", sa.Text(), nullable=False),
        sa.Column("family_name_kana", sa.Text(), nullable=False),
        sa.Column("given_name_kana", sa.Text(), nullable=False),
        sa.Column("old_family_name", sa.Text(), nullable=True),
        sa.Column("old_family_name_kana", sa.Text(), nullable=True),
        sa.Column("alias", sa.Text(), nullable=True),
        sa.Column("alias_kana", sa.Text(), nullable=True),
        sa.Column("romaji_name", sa.Text(), nullable=True),
        sa.Column("name_search_key", sa.Text(), nullable=False),
        sa.Column("kana_search_key", sa.Text(), nullable=False),
        sa.Column("birth_date", sa.Date(), nullable=False),
        sa.Column("sex", sa.SmallInteger(), nullable=False),
        sa.Column("relationship", sa.Text(), nullable=False),
        sa.Column("postal_code", sa.String(7), nullable=True),
        sa.Column("prefecture", sa.Text(), nullable=False),
        sa.Column("municipality", sa.Text(), nullable=False),
        sa.Column("town", sa.Text(), nullable=False),
        sa.Column("banchi", sa.Text(), nullable=False),
        sa.Column("katagaki", sa.Text(), nullable=True),
        sa.Column("address_since", sa.Date(), nullable=False),
        sa.Column("resident_since", sa.Date(), nullable=False),
        sa.Column("previous_address", sa.Text(), nullable=True),
        sa.Column("pre_move_address", sa.Text(), nullable=True),
        sa.Column("honseki", sa.Text(), nullable=True),
        sa.Column("hittousha", sa.Text(), nullable=True),
        sa.Column("nationality", sa.Text(), nullable=True),
        sa.Column("residence_status", sa.Text(), nullable=True),
        sa.Column("period_of_stay_end", sa.Date(), nullable=True),
        sa.Column("residence_card_number", sa.String(12), nullable=True),
        sa.Column("foreign_resident_since", sa.Date(), nullable=True),
        sa.Column("elector", sa.Boolean(), nullable=False),
        sa.Column("national_health_insurance", sa.Boolean(), nullable=False),
        sa.Column("national_pension", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("removed_reason", sa.Text(), nullable=True),
        sa.Column("removed_on", sa.Date(), nullable=True),
        sa.Column("removed_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.CheckConstraint("sex IN (1, 2)", name="ck_residents_sex"),
        sa.CheckConstraint("status IN ('active', 'removed')", name="ck_residents_status"),
        sa.CheckConstraint(
            "nationality IS NOT NULL OR residence_status IS NULL",
            name="ck_residents_status_needs_nationality",
        ),
        sa.CheckConstraint(
            "nationality IS NULL OR honseki IS NULL", name="ck_residents_honseki_for_nationals"
        ),
        sa.ForeignKeyConstraint(
            ["household_id"], ["households.id"], name="fk_residents_household_id_households"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_residents"),
        sa.UniqueConstraint("resident_code", name="uq_residents_resident_code"),
        sa.UniqueConstraint("individual_number", name="uq_residents_individual_number"),
    )
    op.create_index("ix_residents_household_id", "residents", ["household_id"])
    op.create_index(
        "ix_residents_municipality_name_key", "residents", ["municipality_code", "name_search_key"]
    )
    op.create_index(
        "ix_residents_municipality_kana_key", "residents", ["municipality_code", "kana_search_key"]
    )
    op.create_index("ix_residents_municipality_birth_date", "residents", ["municipality_code", "birth_date"])

    # The household -> head link closes a cycle, so it is added once both tables exist
    # (batch mode: SQLite cannot ALTER a constraint in).
    with op.batch_alter_table("households") as batch:
        batch.create_foreign_key(
            "fk_households_head_resident_id_residents",
            "residents",
            ["head_resident_id"],
            ["id"],
            deferrable=True,
            initially="DEFERRED",
        )


def downgrade() -> None:
    with op.batch_alter_table("households") as batch:
        batch.drop_constraint("fk_households_head_resident_id_residents", type_="foreignkey")
    op.drop_table("residents")
    op.drop_table("households")
