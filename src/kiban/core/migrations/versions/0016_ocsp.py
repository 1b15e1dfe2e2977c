"""JPKI OCSP responder: delegated signers and pre-signed responses.

Revision ID: 0016_ocsp
Revises: 0015_network
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016_ocsp"
down_revision: str | Sequence[str] | None = "0015_network"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "jpki_ocsp_signers",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ca_id", sa.String(length=40), nullable=False),
        sa.Column("serial", sa.String(length=40), nullable=False),
        sa.Column("key_label", sa.String(length=64), nullable=False),
        sa.Column("key_algorithm", sa.String(length=16), nullable=False),
        sa.Column("certificate_der", sa.LargeBinary(), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["ca_id"], ["jpki_cas.id"], name=op.f("fk_jpki_ocsp_signers_ca_id_jpki_cas")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jpki_ocsp_signers")),
        sa.UniqueConstraint("key_label", name=op.f("uq_jpki_ocsp_signers_key_label")),
        sa.UniqueConstraint("serial", name=op.f("uq_jpki_ocsp_signers_serial")),
    )
    op.create_index(
        "ix_jpki_ocsp_signers_ca_not_after", "jpki_ocsp_signers", ["ca_id", "not_after"], unique=False
    )
    op.create_table(
        "jpki_ocsp_responses",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ca_id", sa.String(length=40), nullable=False),
        sa.Column("serial", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("der_sha1", sa.LargeBinary(), nullable=True),
        sa.Column("der_sha256", sa.LargeBinary(), nullable=True),
        sa.Column("this_update", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_update", sa.DateTime(timezone=True), nullable=False),
        sa.Column("signer_serial", sa.String(length=40), nullable=True),
        sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["ca_id"], ["jpki_cas.id"], name=op.f("fk_jpki_ocsp_responses_ca_id_jpki_cas")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jpki_ocsp_responses")),
        sa.UniqueConstraint("ca_id", "serial", name="uq_jpki_ocsp_responses_ca_id_serial"),
    )
    op.create_index(
        "ix_jpki_ocsp_responses_refreshed_at", "jpki_ocsp_responses", ["refreshed_at"], unique=False
    )
    op.create_index(
        "ix_jpki_ocsp_responses_next_update", "jpki_ocsp_responses", ["next_update"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_jpki_ocsp_responses_next_update", table_name="jpki_ocsp_responses")
    op.drop_index("ix_jpki_ocsp_responses_refreshed_at", table_name="jpki_ocsp_responses")
    op.drop_table("jpki_ocsp_responses")
    op.drop_index("ix_jpki_ocsp_signers_ca_not_after", table_name="jpki_ocsp_signers")
    op.drop_table("jpki_ocsp_signers")
