"""JPKI analogue: CAs, certificates, issuance records, CRL publications.

Revision ID: 0012_jpki
Revises: 0011_merge_documents_seals
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_jpki"
down_revision: str | Sequence[str] | None = "0011_merge_documents_seals"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "jpki_cas",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("hierarchy", sa.String(length=20), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("parent_id", sa.String(length=40), nullable=True),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("key_label", sa.String(length=64), nullable=False),
        sa.Column("key_algorithm", sa.String(length=16), nullable=False),
        sa.Column("base_url", sa.String(length=200), nullable=False),
        sa.Column("certificate_der", sa.LargeBinary(), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("crl_number", sa.Integer(), nullable=False),
        sa.Column("issued_count", sa.Integer(), nullable=False),
        sa.Column("partition_size", sa.Integer(), nullable=False),
        sa.Column("partition_threshold", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["parent_id"], ["jpki_cas.id"], name=op.f("fk_jpki_cas_parent_id_jpki_cas")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jpki_cas")),
    )
    op.create_table(
        "jpki_certificates",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ca_id", sa.String(length=40), nullable=False),
        sa.Column("serial", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("resident_code", sa.String(length=11), nullable=True),
        sa.Column("card_id", sa.String(length=64), nullable=True),
        sa.Column("subject_id", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("status_changed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("invalidity_date", sa.DateTime(timezone=True), nullable=True),
        sa.Column("replaced_by", sa.String(length=40), nullable=True),
        sa.Column("renewal_of", sa.String(length=40), nullable=True),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint("status IN ('good', 'revoked', 'hold')", name=op.f("ck_jpki_certificates_status")),
        sa.ForeignKeyConstraint(["ca_id"], ["jpki_cas.id"], name=op.f("fk_jpki_certificates_ca_id_jpki_cas")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jpki_certificates")),
        sa.UniqueConstraint("ca_id", "serial", name="uq_jpki_certificates_ca_id_serial"),
    )
    op.create_index(
        "ix_jpki_certificates_ca_partition_status",
        "jpki_certificates",
        ["ca_id", "partition", "status"],
        unique=False,
    )
    op.create_index(
        op.f("ix_jpki_certificates_resident_code"), "jpki_certificates", ["resident_code"], unique=False
    )
    op.create_index(op.f("ix_jpki_certificates_card_id"), "jpki_certificates", ["card_id"], unique=False)
    op.create_table(
        "jpki_issuance_records",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ca_id", sa.String(length=40), nullable=False),
        sa.Column("serial", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("resident_code", sa.String(length=11), nullable=True),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("renewal_of", sa.String(length=40), nullable=True),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["ca_id"], ["jpki_cas.id"], name=op.f("fk_jpki_issuance_records_ca_id_jpki_cas")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jpki_issuance_records")),
    )
    op.create_index(
        op.f("ix_jpki_issuance_records_serial"), "jpki_issuance_records", ["serial"], unique=False
    )
    op.create_index(
        op.f("ix_jpki_issuance_records_resident_code"),
        "jpki_issuance_records",
        ["resident_code"],
        unique=False,
    )
    op.create_table(
        "jpki_crls",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ca_id", sa.String(length=40), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("crl_number", sa.Integer(), nullable=False),
        sa.Column("this_update", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_update", sa.DateTime(timezone=True), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(length=300), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.Column("complete", sa.Boolean(), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["ca_id"], ["jpki_cas.id"], name=op.f("fk_jpki_crls_ca_id_jpki_cas")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jpki_crls")),
        sa.UniqueConstraint("ca_id", "crl_number", name="uq_jpki_crls_ca_id_crl_number"),
    )
    op.create_index(
        "ix_jpki_crls_ca_partition_number", "jpki_crls", ["ca_id", "partition", "crl_number"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_jpki_crls_ca_partition_number", table_name="jpki_crls")
    op.drop_table("jpki_crls")
    op.drop_index(op.f("ix_jpki_issuance_records_resident_code"), table_name="jpki_issuance_records")
    op.drop_index(op.f("ix_jpki_issuance_records_serial"), table_name="jpki_issuance_records")
    op.drop_table("jpki_issuance_records")
    op.drop_index(op.f("ix_jpki_certificates_card_id"), table_name="jpki_certificates")
    op.drop_index(op.f("ix_jpki_certificates_resident_code"), table_name="jpki_certificates")
    op.drop_index("ix_jpki_certificates_ca_partition_status", table_name="jpki_certificates")
    op.drop_table("jpki_certificates")
    op.drop_table("jpki_cas")
