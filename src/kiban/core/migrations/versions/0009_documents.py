"""Ledger of issued documents (serials, content hashes, verification codes).

Revision ID: 0009_documents
Revises: 0007_foundation_merge
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_documents"
down_revision: str | Sequence[str] | None = "0007_foundation_merge"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "issued_documents",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("serial", sa.String(length=40), nullable=False),
        sa.Column("document_type", sa.String(length=40), nullable=False),
        sa.Column("municipality_code", sa.String(length=6), nullable=False),
        sa.Column("subject_resident_code", sa.String(length=11), nullable=True),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("verification_code", sa.String(length=128), nullable=False),
        sa.Column("signer_id", sa.String(length=64), nullable=False),
        sa.Column("issuer", sa.Text(), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("length(content_hash) = 64", name=op.f("ck_issued_documents_content_hash_length")),
        sa.CheckConstraint(
            "length(municipality_code) = 6", name=op.f("ck_issued_documents_municipality_code_length")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_issued_documents")),
        sa.UniqueConstraint("serial", name=op.f("uq_issued_documents_serial")),
    )
    op.create_index(
        "ix_issued_documents_municipality_issued_at",
        "issued_documents",
        ["municipality_code", "issued_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_issued_documents_subject_resident_code"),
        "issued_documents",
        ["subject_resident_code"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_issued_documents_subject_resident_code"), table_name="issued_documents")
    op.drop_index("ix_issued_documents_municipality_issued_at", table_name="issued_documents")
    op.drop_table("issued_documents")
