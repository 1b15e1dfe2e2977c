"""Join the kiosk, the cards' renewals and the system roles.

Revision ID: 0026_merge_kiosk
Revises: 0023_kiosk, 0024_cards_more, 0025_roles
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0026_merge_kiosk"
down_revision: str | Sequence[str] | None = ("0023_kiosk", "0024_cards_more", "0025_roles")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
