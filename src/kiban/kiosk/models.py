"""Tables of kiosk issuance (コンビニ交付, SPEC K6).

- ``kiosk_operators``: kiosk chains (the convenience-store companies) registered with the centre.
- ``kiosk_kiosks``: one row per terminal: its operator, the hash of its credential (never the
  credential), the interface version it speaks and whether it may connect.
- ``kiosk_withdrawn_versions``: interface versions the centre refuses (the version-break drill).
- ``kiosk_participation``: a municipality's opt-in per document type, with its fee and age limit.
- ``kiosk_sessions``: one card session: the challenge (single use, short expiry), then the
  authenticated holder, municipality and card certificate.
- ``kiosk_issuances``: every document printed: session, kiosk, operator, municipality, type,
  document serial, hashes binding request and answer, fee (the settlement reads these).
- ``kiosk_refusals``: every refusal (rule, field, kiosk, session) — bad input is logged.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from kiban.core.database import Base, UTCDateTime

SEQ_TYPE = BigInteger().with_variant(Integer(), "sqlite")


class KioskOperator(Base):
    """A kiosk chain (キオスク端末の事業者, e.g. a convenience-store company)."""

    __tablename__ = "kiosk_operators"

    operator_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Kiosk(Base):
    """A kiosk terminal (マルチコピー機) in a store."""

    __tablename__ = "kiosk_kiosks"
    __table_args__ = (Index("ix_kiosk_kiosks_operator_id", "operator_id"),)

    kiosk_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    operator_id: Mapped[str] = mapped_column(ForeignKey("kiosk_operators.operator_id"))
    store_name: Mapped[str] = mapped_column(Text)
    credential_hash: Mapped[str] = mapped_column(String(64))  # hex SHA-256 of the credential
    interface_version: Mapped[str] = mapped_column(String(16))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class WithdrawnVersion(Base):
    """An interface version the centre no longer accepts (a kiosk update that broke the interface)."""

    __tablename__ = "kiosk_withdrawn_versions"

    interface_version: Mapped[str] = mapped_column(String(16), primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    withdrawn_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Participation(Base):
    """A municipality's opt-in for one document type (参加団体・交付対象証明書)."""

    __tablename__ = "kiosk_participation"
    __table_args__ = (UniqueConstraint("municipality_code", "document_type", name="uq_kiosk_participation"),)

    id: Mapped[int] = mapped_column(SEQ_TYPE, primary_key=True, autoincrement=True)
    municipality_code: Mapped[str] = mapped_column(String(6))
    document_type: Mapped[str] = mapped_column(String(32))
    fee: Mapped[int] = mapped_column(Integer)  # 円, per document
    min_age: Mapped[int] = mapped_column(Integer, default=15)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)


class KioskSession(Base):
    """One card session at a kiosk: challenge → authenticated holder → documents → closed."""

    __tablename__ = "kiosk_sessions"
    __table_args__ = (Index("ix_kiosk_sessions_kiosk_id", "kiosk_id"),)

    session_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kiosk_id: Mapped[str] = mapped_column(ForeignKey("kiosk_kiosks.kiosk_id"))
    challenge: Mapped[str] = mapped_column(String(64))  # hex of 32 random bytes
    state: Mapped[str] = mapped_column(String(16))  # challenged | authenticated | closed | refused
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    authenticated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    certificate_serial: Mapped[str | None] = mapped_column(String(40), nullable=True)
    card_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    resident_code: Mapped[str | None] = mapped_column(String(11), nullable=True)
    municipality_code: Mapped[str | None] = mapped_column(String(6), nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1)


class KioskIssuance(Base):
    """A document the kiosk was allowed to print (one fee)."""

    __tablename__ = "kiosk_issuances"
    __table_args__ = (
        Index("ix_kiosk_issuances_session_id", "session_id"),
        Index("ix_kiosk_issuances_settlement", "municipality_code", "issued_at"),
    )

    id: Mapped[int] = mapped_column(SEQ_TYPE, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(32), unique=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("kiosk_sessions.session_id"))
    kiosk_id: Mapped[str] = mapped_column(String(32))
    operator_id: Mapped[str] = mapped_column(String(32))
    municipality_code: Mapped[str] = mapped_column(String(6))
    document_type: Mapped[str] = mapped_column(String(32))
    household: Mapped[bool] = mapped_column(Boolean)
    holder_resident_code: Mapped[str] = mapped_column(String(11))
    serial: Mapped[str] = mapped_column(String(40))  # the document's serial in the ledger
    request_hash: Mapped[str] = mapped_column(String(64))
    pdf_hash: Mapped[str] = mapped_column(String(64))
    fee: Mapped[int] = mapped_column(Integer)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime())


class KioskRefusal(Base):
    """A refused kiosk request: which rule, on which field, from which kiosk and session."""

    __tablename__ = "kiosk_refusals"
    __table_args__ = (Index("ix_kiosk_refusals_at", "at"),)

    id: Mapped[int] = mapped_column(SEQ_TYPE, primary_key=True, autoincrement=True)
    kiosk_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    session_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    field: Mapped[str] = mapped_column(String(64))
    rule: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
