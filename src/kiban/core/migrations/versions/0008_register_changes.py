"""Register change events: 異動履歴, 転出証明書情報, DV等支援措置; codes unique among active records.

Revision ID: 0008_register_changes
Revises: 0007_foundation_merge
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from kiban.core.database import UTCDateTime

revision: str = "0008_register_changes"
down_revision: str | Sequence[str] | None = "0007_foundation_merge"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEQ_TYPE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
ACTIVE = sa.text("status = 'active'")


def upgrade() -> None:
    # A person who moves keeps the 住民票コード (and 個人番号) on the new record while the old
    # municipality keeps the 除票: unique among active records only.
    with op.batch_alter_table("residents") as batch:
        batch.drop_constraint("uq_residents_resident_code", type_="unique")
        batch.drop_constraint("uq_residents_individual_number", type_="unique")
    op.create_index("ix_residents_resident_code", "residents", ["resident_code"])
    op.create_index("ix_residents_individual_number", "residents", ["individual_number"])
    op.create_index(
        "uq_residents_active_resident_code",
        "residents",
        ["resident_code"],
        unique=True,
        sqlite_where=ACTIVE,
        postgresql_where=ACTIVE,
    )
    op.create_index(
        "uq_residents_active_individual_number",
        "residents",
        ["individual_number"],
        unique=True,
        sqlite_where=ACTIVE,
        postgresql_where=ACTIVE,
    )

    op.create_table(
        "register_changes",
        sa.Column("seq", SEQ_TYPE, autoincrement=True, nullable=False),
        sa.Column("group_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("municipality_code", sa.String(6), nullable=False),
        sa.Column("resident_id", sa.Uuid(), nullable=False),
        sa.Column("resident_code", sa.String(11), nullable=False),
        sa.Column("household_id", sa.Uuid(), nullable=True),
        sa.Column("notified_on", sa.Date(), nullable=False),
        sa.Column("effective_on", sa.Date(), nullable=False),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("before", sa.JSON(), nullable=False),
        sa.Column("after", sa.JSON(), nullable=False),
        sa.Column("resident_version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["resident_id"], ["residents.id"], name="fk_register_changes_resident_id_residents"
        ),
        sa.PrimaryKeyConstraint("seq", name="pk_register_changes"),
    )
    op.create_index("ix_register_changes_group_id", "register_changes", ["group_id"])
    op.create_index("ix_register_changes_resident_code", "register_changes", ["resident_code"])
    op.create_index("ix_register_changes_resident_id_seq", "register_changes", ["resident_id", "seq"])
    op.create_index(
        "ix_register_changes_municipality_recorded", "register_changes", ["municipality_code", "recorded_at"]
    )

    op.create_table(
        "move_out_certificates",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("certificate_id", sa.Uuid(), nullable=False),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("holder_municipality_code", sa.String(6), nullable=False),
        sa.Column("from_municipality_code", sa.String(6), nullable=False),
        sa.Column("to_municipality_code", sa.String(6), nullable=False),
        sa.Column("resident_code", sa.String(11), nullable=False),
        sa.Column("planned_move_on", sa.Date(), nullable=False),
        sa.Column("notified_on", sa.Date(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("issued_at", UTCDateTime(), nullable=False),
        sa.Column("completed_at", UTCDateTime(), nullable=True),
        sa.Column("completed_on", sa.Date(), nullable=True),
        sa.CheckConstraint("role IN ('issued', 'received')", name="ck_move_out_certificates_role"),
        sa.CheckConstraint("status IN ('pending', 'completed')", name="ck_move_out_certificates_status"),
        sa.PrimaryKeyConstraint("id", name="pk_move_out_certificates"),
        sa.UniqueConstraint("certificate_id", "role", name="uq_move_out_certificates_certificate_role"),
    )
    op.create_index("ix_move_out_certificates_resident_code", "move_out_certificates", ["resident_code"])
    op.create_index(
        "ix_move_out_certificates_holder_status",
        "move_out_certificates",
        ["holder_municipality_code", "status"],
    )

    op.create_table(
        "register_restrictions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("resident_code", sa.String(11), nullable=False),
        sa.Column("municipality_code", sa.String(6), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("starts_on", sa.Date(), nullable=False),
        sa.Column("ends_on", sa.Date(), nullable=False),
        sa.Column("set_by", sa.Text(), nullable=False),
        sa.Column("set_at", UTCDateTime(), nullable=False),
        sa.Column("lifted_on", sa.Date(), nullable=True),
        sa.Column("lifted_by", sa.Text(), nullable=True),
        sa.Column("lifted_at", UTCDateTime(), nullable=True),
        sa.Column("lift_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_register_restrictions"),
    )
    op.create_index("ix_register_restrictions_resident_code", "register_restrictions", ["resident_code"])


def downgrade() -> None:
    op.drop_table("register_restrictions")
    op.drop_table("move_out_certificates")
    op.drop_table("register_changes")
    op.drop_index("uq_residents_active_individual_number", table_name="residents")
    op.drop_index("uq_residents_active_resident_code", table_name="residents")
    op.drop_index("ix_residents_individual_number", table_name="residents")
    op.drop_index("ix_residents_resident_code", table_name="residents")
    with op.batch_alter_table("residents") as batch:
        batch.create_unique_constraint("uq_residents_resident_code", ["resident_code"])
        batch.create_unique_constraint("uq_residents_individual_number", ["individual_number"])
