"""Roles for the national role's system accounts: ca_system (異動等情報) and linkage_system (符号).

Revision ID: 0025_roles
Revises: 0022_merge_wave
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0025_roles"
down_revision: str | Sequence[str] | None = "0022_merge_wave"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = "role IN ('clerk', 'national_operator', 'agency', 'verifier', 'call_centre')"
NEW = (
    "role IN ('clerk', 'national_operator', 'agency', 'verifier', 'call_centre', "
    "'ca_system', 'linkage_system')"
)


def _replace(condition: str) -> None:
    # SQLite cannot alter a CHECK: batch mode copies the table with the new constraint.
    with op.batch_alter_table("users", recreate="auto") as batch:
        batch.drop_constraint(op.f("ck_users_role"), type_="check")
        batch.create_check_constraint(op.f("ck_users_role"), condition)


def upgrade() -> None:
    _replace(NEW)


def downgrade() -> None:
    op.execute("DELETE FROM users WHERE role IN ('ca_system', 'linkage_system')")
    _replace(OLD)
