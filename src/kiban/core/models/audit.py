"""Tables of the audit log (監査ログ): the hash-chained entries and the chain's head.

The rules (canonical form, hashing, verification) live in :mod:`kiban.core.audit`; this module
only declares the tables. Both are created by migration ``0004_audit``, which also installs the
triggers that refuse UPDATE and DELETE on ``audit_log``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from kiban.core.database import Base, UTCDateTime


class AuditEntry(Base):
    """One audited access to personal data (監査ログの1件): who, in which role, did what, why, to whom.

    ``seq`` is assigned by :func:`kiban.core.audit.record` (1, 2, 3… with no gaps) and ``hash`` is
    SHA-256 over the canonical form of every other column plus ``prev_hash`` (docs/audit.md).
    """

    __tablename__ = "audit_log"
    __table_args__ = (CheckConstraint("seq >= 1", name="seq_positive"),)

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(64))
    organisation: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    purpose: Mapped[str] = mapped_column(String(200))
    # Usually a 住民票コード; empty for operations that touch no one's personal data.
    subject: Mapped[str] = mapped_column(String(64), index=True)
    items: Mapped[list[str]] = mapped_column(JSON)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    flags: Mapped[list[str]] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)

    def __repr__(self) -> str:
        return f"<AuditEntry seq={self.seq} {self.action} {self.subject!r} by {self.actor!r}>"


class AuditHead(Base):
    """The chain's head (監査ログの先頭): the newest entry's seq and hash, in exactly one row.

    Every append updates this row first, which serialises appends (a row lock on PostgreSQL, the
    write lock on SQLite). It is a convenience, not a trust anchor: whoever can edit ``audit_log``
    can edit this row too. The anchor is the sealed checkpoint in the data directory.
    """

    __tablename__ = "audit_head"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
