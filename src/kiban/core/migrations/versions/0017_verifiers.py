"""JPKI verifier services: registry, tokens, usage counts, holders' consents.

Revision ID: 0017_verifiers
Revises: 0015_network
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from kiban.core.database import UTCDateTime

revision: str = "0017_verifiers"
down_revision: str | Sequence[str] | None = "0015_network"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "jpki_verifiers",
        sa.Column("code", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("category", sa.String(24), nullable=False),
        sa.Column("principal_code", sa.String(32), sa.ForeignKey("jpki_verifiers.code"), nullable=True),
        sa.Column("may_revocation", sa.Boolean(), nullable=False),
        sa.Column("may_links", sa.Boolean(), nullable=False),
        sa.Column("may_basic_info", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("ocsp_rate_per_second", sa.Float(), nullable=False),
        sa.Column("suspension_reason", sa.String(200), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "category IN ('national_body', 'local_government', 'certified_business', 'delegate')",
            name="category",
        ),
        sa.CheckConstraint("status IN ('active', 'suspended')", name="status"),
        sa.CheckConstraint(
            "(category = 'delegate' AND principal_code IS NOT NULL) "
            "OR (category <> 'delegate' AND principal_code IS NULL)",
            name="delegate_principal",
        ),
        sa.CheckConstraint("ocsp_rate_per_second > 0", name="ocsp_rate_positive"),
    )
    op.create_table(
        "jpki_verifier_tokens",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("verifier_code", sa.String(32), sa.ForeignKey("jpki_verifiers.code"), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("hint", sa.String(16), nullable=False),
        sa.Column("label", sa.String(100), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_by", sa.String(200), nullable=True),
        sa.Column("replaced_by", sa.Integer(), nullable=True),
    )
    op.create_index("ix_jpki_verifier_tokens_verifier_code", "jpki_verifier_tokens", ["verifier_code"])
    op.create_table(
        "jpki_verifier_usage",
        sa.Column("verifier_code", sa.String(32), sa.ForeignKey("jpki_verifiers.code"), primary_key=True),
        sa.Column("service", sa.String(16), primary_key=True),
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("requests", COUNT, nullable=False),
    )
    op.create_table(
        "jpki_verifier_consents",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("verifier_code", sa.String(32), sa.ForeignKey("jpki_verifiers.code"), nullable=False),
        sa.Column("ca_id", sa.String(40), nullable=False),
        sa.Column("serial", sa.String(40), nullable=False),
        sa.Column("method", sa.String(12), nullable=False),
        sa.Column("evidence_sha256", sa.String(64), nullable=True),
        sa.Column("given_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
        sa.Column("recorded_by", sa.String(200), nullable=False),
        sa.Column("withdrawn_at", UTCDateTime(), nullable=True),
        sa.Column("withdrawn_by", sa.String(200), nullable=True),
        sa.Column("withdrawal_channel", sa.String(12), nullable=True),
        sa.CheckConstraint("method IN ('signed', 'online', 'written', 'counter')", name="method"),
    )
    op.create_index("ix_jpki_verifier_consents_serial", "jpki_verifier_consents", ["serial"])


def downgrade() -> None:
    op.drop_index("ix_jpki_verifier_consents_serial", table_name="jpki_verifier_consents")
    op.drop_table("jpki_verifier_consents")
    op.drop_table("jpki_verifier_usage")
    op.drop_index("ix_jpki_verifier_tokens_verifier_code", table_name="jpki_verifier_tokens")
    op.drop_table("jpki_verifier_tokens")
    op.drop_table("jpki_verifiers")
