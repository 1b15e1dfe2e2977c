"""Join the register change events with the documents, seals and taxes.

Revision ID: 0013_merge_register
Revises: 0008_register_changes, 0011_merge_documents_seals
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0013_merge_register"
down_revision: str | Sequence[str] | None = ("0008_register_changes", "0011_merge_documents_seals")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
