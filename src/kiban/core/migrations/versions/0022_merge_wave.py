"""Join the OCSP responder, verifier services, cards, the network's DV copy and numbering letters.

Revision ID: 0022_merge_wave
Revises: 0016_ocsp, 0017_verifiers, 0018_cards, 0019_network_restrictions, 0021_numbering_letters
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0022_merge_wave"
down_revision: str | Sequence[str] | None = (
    "0016_ocsp",
    "0017_verifiers",
    "0018_cards",
    "0019_network_restrictions",
    "0021_numbering_letters",
)
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
