"""Join the JPKI CA with the register branches.

Revision ID: 0014_merge_jpki
Revises: 0012_jpki, 0013_merge_register
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0014_merge_jpki"
down_revision: str | Sequence[str] | None = ("0012_jpki", "0013_merge_register")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
