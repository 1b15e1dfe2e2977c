"""Kiosk issuance: operators, kiosks, withdrawn versions, participation, sessions, issuances, refusals.

Revision ID: 0023_kiosk
Revises: 0022_merge_wave
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from kiban.core.database import UTCDateTime

revision: str = "0023_kiosk"
down_revision: str | Sequence[str] | None = "0022_merge_wave"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "kiosk_operators",
        sa.Column("operator_id", sa.String(32), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "kiosk_kiosks",
        sa.Column("kiosk_id", sa.String(32), primary_key=True),
        sa.Column("operator_id", sa.String(32), sa.ForeignKey("kiosk_operators.operator_id"), nullable=False),
        sa.Column("store_name", sa.Text(), nullable=False),
        sa.Column("credential_hash", sa.String(64), nullable=False),
        sa.Column("interface_version", sa.String(16), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_kiosk_kiosks_operator_id", "kiosk_kiosks", ["operator_id"])
    op.create_table(
        "kiosk_withdrawn_versions",
        sa.Column("interface_version", sa.String(16), primary_key=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("withdrawn_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "kiosk_participation",
        sa.Column("id", SEQ, primary_key=True, autoincrement=True),
        sa.Column("municipality_code", sa.String(6), nullable=False),
        sa.Column("document_type", sa.String(32), nullable=False),
        sa.Column("fee", sa.Integer(), nullable=False),
        sa.Column("min_age", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.UniqueConstraint("municipality_code", "document_type", name="uq_kiosk_participation"),
    )
    op.create_table(
        "kiosk_sessions",
        sa.Column("session_id", sa.String(32), primary_key=True),
        sa.Column("kiosk_id", sa.String(32), sa.ForeignKey("kiosk_kiosks.kiosk_id"), nullable=False),
        sa.Column("challenge", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("authenticated_at", UTCDateTime(), nullable=True),
        sa.Column("certificate_serial", sa.String(40), nullable=True),
        sa.Column("card_id", sa.String(64), nullable=True),
        sa.Column("resident_code", sa.String(11), nullable=True),
        sa.Column("municipality_code", sa.String(6), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
    )
    op.create_index("ix_kiosk_sessions_kiosk_id", "kiosk_sessions", ["kiosk_id"])
    op.create_table(
        "kiosk_issuances",
        sa.Column("id", SEQ, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(32), nullable=False, unique=True),
        sa.Column("session_id", sa.String(32), sa.ForeignKey("kiosk_sessions.session_id"), nullable=False),
        sa.Column("kiosk_id", sa.String(32), nullable=False),
        sa.Column("operator_id", sa.String(32), nullable=False),
        sa.Column("municipality_code", sa.String(6), nullable=False),
        sa.Column("document_type", sa.String(32), nullable=False),
        sa.Column("household", sa.Boolean(), nullable=False),
        sa.Column("holder_resident_code", sa.String(11), nullable=False),
        sa.Column("serial", sa.String(40), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("pdf_hash", sa.String(64), nullable=False),
        sa.Column("fee", sa.Integer(), nullable=False),
        sa.Column("issued_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_kiosk_issuances_session_id", "kiosk_issuances", ["session_id"])
    op.create_index("ix_kiosk_issuances_settlement", "kiosk_issuances", ["municipality_code", "issued_at"])
    op.create_table(
        "kiosk_refusals",
        sa.Column("id", SEQ, primary_key=True, autoincrement=True),
        sa.Column("kiosk_id", sa.String(32), nullable=True),
        sa.Column("session_id", sa.String(32), nullable=True),
        sa.Column("field", sa.String(64), nullable=False),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_kiosk_refusals_at", "kiosk_refusals", ["at"])


def downgrade() -> None:
    for table in (
        "kiosk_refusals",
        "kiosk_issuances",
        "kiosk_sessions",
        "kiosk_participation",
        "kiosk_withdrawn_versions",
        "kiosk_kiosks",
        "kiosk_operators",
    ):
        op.drop_table(table)
