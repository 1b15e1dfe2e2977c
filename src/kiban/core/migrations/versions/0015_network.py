"""Identity network: national and prefectural copies, quarantine, agencies, provisions.

Revision ID: 0015_network
Revises: 0014_merge_jpki
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from kiban.core.database import UTCDateTime

revision: str = "0015_network"
down_revision: str | Sequence[str] | None = "0014_merge_jpki"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
CURRENT = sa.text("is_current")


def _identity_columns() -> list[sa.Column]:
    return [
        sa.Column("id", SEQ, primary_key=True, autoincrement=True),
        sa.Column("resident_code", sa.String(11), nullable=False),
        sa.Column("prefecture_code", sa.String(2), nullable=False),
        sa.Column("municipality_code", sa.String(6), nullable=False),
        sa.Column("version_no", sa.Integer(), nullable=False),
        sa.Column("is_current", sa.Boolean(), nullable=False),
        sa.Column("previous_resident_code", sa.String(11), nullable=True),
        sa.Column("family_name", sa.Text(), nullable=False),
        sa.Column("given_name", sa.Text(), nullable=False),
        sa.Column("family_name_kana", sa.Text(), nullable=False),
        sa.Column("given_name_kana", sa.Text(), nullable=False),
        sa.Column("old_family_name", sa.Text(), nullable=True),
        sa.Column("old_family_name_kana", sa.Text(), nullable=True),
        sa.Column("kana_key", sa.Text(), nullable=False),
        sa.Column("birth_date", sa.Date(), nullable=False),
        sa.Column("sex", sa.SmallInteger(), nullable=False),
        sa.Column("address", sa.Text(), nullable=False),
        sa.Column("individual_number", sa.String(12), nullable=True),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("reason", sa.String(40), nullable=False),
        sa.Column("reason_ja", sa.Text(), nullable=False),
        sa.Column("effective_on", sa.Date(), nullable=False),
        sa.Column("notified_on", sa.Date(), nullable=True),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("event_occurred_at", UTCDateTime(), nullable=False),
        sa.Column("applied_at", UTCDateTime(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "network_national_identity",
        *_identity_columns(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_network_national_identity")),
    )
    t = "network_national_identity"
    op.create_index("ix_network_national_identity_prefecture_code", t, ["prefecture_code"])
    op.create_index(
        "ix_network_national_identity_code_version", t, ["resident_code", "version_no"], unique=True
    )
    op.create_index("ix_network_national_identity_event_id", t, ["event_id"], unique=True)
    op.create_index(
        "ix_network_national_identity_current_code",
        t,
        ["resident_code"],
        unique=True,
        sqlite_where=CURRENT,
        postgresql_where=CURRENT,
    )
    op.create_index(
        "ix_network_national_identity_current_number",
        t,
        ["individual_number"],
        sqlite_where=CURRENT,
        postgresql_where=CURRENT,
    )
    op.create_index(
        "ix_network_national_identity_current_kana",
        t,
        ["kana_key", "birth_date"],
        sqlite_where=CURRENT,
        postgresql_where=CURRENT,
    )
    op.create_index(
        "ix_network_national_identity_municipality_applied", t, ["municipality_code", "applied_at"]
    )

    op.create_table(
        "network_prefectural_identity",
        *_identity_columns(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_network_prefectural_identity")),
    )
    t = "network_prefectural_identity"
    op.create_index(
        "ix_network_prefectural_identity_code_version",
        t,
        ["prefecture_code", "resident_code", "version_no"],
        unique=True,
    )
    op.create_index(
        "ix_network_prefectural_identity_event_id", t, ["prefecture_code", "event_id"], unique=True
    )
    op.create_index(
        "ix_network_prefectural_identity_current_code",
        t,
        ["prefecture_code", "resident_code"],
        unique=True,
        sqlite_where=CURRENT,
        postgresql_where=CURRENT,
    )

    op.create_table(
        "network_quarantine",
        sa.Column("id", SEQ, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("event_type", sa.String(100), nullable=False),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("municipality_code", sa.String(6), nullable=True),
        sa.Column("field", sa.String(100), nullable=False),
        sa.Column("rule", sa.String(40), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("quarantined_at", UTCDateTime(), nullable=False),
        sa.Column("released_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_network_quarantine")),
    )
    op.create_index(op.f("ix_network_quarantine_event_id"), "network_quarantine", ["event_id"])
    op.create_index(
        op.f("ix_network_quarantine_municipality_code"), "network_quarantine", ["municipality_code"]
    )

    op.create_table(
        "network_registration_conflicts",
        sa.Column("id", SEQ, primary_key=True, autoincrement=True),
        sa.Column("resident_code", sa.String(11), nullable=False),
        sa.Column("active_municipality_code", sa.String(6), nullable=False),
        sa.Column("claiming_municipality_code", sa.String(6), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("detected_at", UTCDateTime(), nullable=False),
        sa.Column("resolved_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_network_registration_conflicts")),
    )
    op.create_index(
        op.f("ix_network_registration_conflicts_resident_code"),
        "network_registration_conflicts",
        ["resident_code"],
    )

    op.create_table(
        "network_agencies",
        sa.Column("code", sa.String(40), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_network_agencies")),
    )
    op.create_table(
        "network_uses",
        sa.Column("code", sa.String(40), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("legal_basis", sa.Text(), nullable=False),
        sa.Column("items", sa.JSON(), nullable=False),
        sa.Column("restricted_policy", sa.String(20), nullable=False),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_network_uses")),
    )
    op.create_table(
        "network_agency_uses",
        sa.Column("agency_code", sa.String(40), nullable=False),
        sa.Column("use_code", sa.String(40), nullable=False),
        sa.PrimaryKeyConstraint("agency_code", "use_code", name=op.f("pk_network_agency_uses")),
    )
    op.create_table(
        "network_provisions",
        sa.Column("id", SEQ, primary_key=True, autoincrement=True),
        sa.Column("provided_at", UTCDateTime(), nullable=False),
        sa.Column("agency_code", sa.String(40), nullable=False),
        sa.Column("use_code", sa.String(40), nullable=False),
        sa.Column("resident_code", sa.String(11), nullable=True),
        sa.Column("query_kind", sa.String(20), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("rule", sa.String(40), nullable=True),
        sa.Column("items", sa.JSON(), nullable=False),
        sa.Column("restricted", sa.Boolean(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("row_no", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_network_provisions")),
    )
    op.create_index(
        "ix_network_provisions_resident_code_provided_at",
        "network_provisions",
        ["resident_code", "provided_at"],
    )
    op.create_index(
        "ix_network_provisions_agency_code_provided_at",
        "network_provisions",
        ["agency_code", "provided_at"],
    )
    op.create_table(
        "network_bulk_jobs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("agency_code", sa.String(40), nullable=False),
        sa.Column("use_code", sa.String(40), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("next_row", sa.Integer(), nullable=False),
        sa.Column("provided", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_network_bulk_jobs")),
    )


def downgrade() -> None:
    for table in (
        "network_bulk_jobs",
        "network_provisions",
        "network_agency_uses",
        "network_uses",
        "network_agencies",
        "network_registration_conflicts",
        "network_quarantine",
        "network_prefectural_identity",
        "network_national_identity",
    ):
        op.drop_table(table)
