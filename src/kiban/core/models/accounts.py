"""Staff accounts (職員アカウント) and their web sessions.

A clerk is bound to exactly one municipality; agencies and verifiers to one organisation.
The database enforces those bindings too, so that no code path can make an unbound clerk.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from kiban.core.database import Base, UTCDateTime, utcnow

ROLES: tuple[str, ...] = (
    "clerk",
    "national_operator",
    "agency",
    "verifier",
    "call_centre",
    # System accounts of the national role: the CA's 異動等情報 feed and the 住民票コード for 符号.
    "ca_system",
    "linkage_system",
)


class User(Base):
    """A person who logs in to Kiban (利用者, a staff member of some organisation)."""

    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(
            "role IN ('clerk', 'national_operator', 'agency', 'verifier', 'call_centre', "
            "'ca_system', 'linkage_system')",
            name="role",
        ),
        # Clerks, and only clerks, are bound to a municipality.
        CheckConstraint(
            "(role = 'clerk' AND municipality_code IS NOT NULL) "
            "OR (role <> 'clerk' AND municipality_code IS NULL)",
            name="clerk_municipality",
        ),
        CheckConstraint(
            "role NOT IN ('agency', 'verifier') OR organisation IS NOT NULL", name="organisation_required"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(32))
    municipality_code: Mapped[str | None] = mapped_column(String(6))
    organisation: Mapped[str | None] = mapped_column(String(64))
    # "scrypt$n$r$p$salt$hash" (base64), so parameters can be raised without breaking old hashes.
    password_hash: Mapped[str] = mapped_column(String(255))
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class WebSession(Base):
    """A logged-in browser session (ログインセッション); the cookie carries only its random id."""

    __tablename__ = "web_sessions"

    # SHA-256 of the random token: a copy of this table does not yield live sessions.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
