"""Identity network: the copy of DV等支援措置 (network_restriction_sets, network_restrictions).

Revision ID: 0019_network_restrictions
Revises: 0015_network
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from kiban.core.database import UTCDateTime

revision: str = "0019_network_restrictions"
down_revision: str | Sequence[str] | None = "0015_network"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "network_restriction_sets",
        sa.Column("resident_code", sa.String(11), primary_key=True),
        sa.Column("municipality_code", sa.String(6), primary_key=True),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("event_occurred_at", UTCDateTime(), nullable=False),
        sa.Column("applied_at", UTCDateTime(), nullable=False),
        sa.Column("measures", sa.Integer(), nullable=False),
    )
    op.create_table(
        "network_restrictions",
        sa.Column("id", SEQ, primary_key=True, autoincrement=True),
        sa.Column("resident_code", sa.String(11), nullable=False),
        sa.Column("municipality_code", sa.String(6), nullable=False),
        sa.Column("measure_id", sa.String(64), nullable=False),
        sa.Column("starts_on", sa.Date(), nullable=False),
        sa.Column("ends_on", sa.Date(), nullable=False),
        sa.Column("lifted_on", sa.Date(), nullable=True),
    )
    op.create_index(
        "ix_network_restrictions_resident_municipality",
        "network_restrictions",
        ["resident_code", "municipality_code"],
    )


def downgrade() -> None:
    op.drop_index("ix_network_restrictions_resident_municipality", table_name="network_restrictions")
    op.drop_table("network_restrictions")
    op.drop_table("network_restriction_sets")
