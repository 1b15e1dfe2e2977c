"""Join the documents ledger and the seal/tax branches.

Revision ID: 0011_merge_documents_seals
Revises: 0009_documents, 0010_seals_taxes
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0011_merge_documents_seals"
down_revision: str | Sequence[str] | None = ("0009_documents", "0010_seals_taxes")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
