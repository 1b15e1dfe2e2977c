"""Join the foundation's branches (numbering, events, audit, register, accounts) into one head.

Revision ID: 0007_foundation_merge
Revises: 0002_numbering, 0003_events, 0004_audit, 0005_register, 0006_accounts
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0007_foundation_merge"
down_revision: str | Sequence[str] | None = (
    "0002_numbering",
    "0003_events",
    "0004_audit",
    "0005_register",
    "0006_accounts",
)
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
