"""Tables of the verifier services: the registry, API tokens, daily usage counts, holders' consents.

- ``jpki_verifiers``: 検証者 (national bodies, local governments, certified businesses, delegates)
  and which services each may use.
- ``jpki_verifier_tokens``: API credentials; only the SHA-256 of a token is stored.
- ``jpki_verifier_usage``: one counter per verifier, service and JST day.
- ``jpki_verifier_consents``: 本人同意 — a holder's consent that a verifier may receive their
  current 基本4情報 through a given certificate.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from kiban.core.database import Base, UTCDateTime

CATEGORIES = ("national_body", "local_government", "certified_business", "delegate")
VERIFIER_STATUSES = ("active", "suspended")
CONSENT_METHODS = ("signed", "online", "written", "counter")
COUNT_TYPE = BigInteger().with_variant(Integer(), "sqlite")


class Verifier(Base):
    """A registered verifier (検証者): who may receive revocation information and the other services."""

    __tablename__ = "jpki_verifiers"
    __table_args__ = (
        CheckConstraint(
            "category IN ('national_body', 'local_government', 'certified_business', 'delegate')",
            name="category",
        ),
        CheckConstraint("status IN ('active', 'suspended')", name="status"),
        # A delegate (委託先) acts for exactly one principal; nobody else has one.
        CheckConstraint(
            "(category = 'delegate' AND principal_code IS NOT NULL) "
            "OR (category <> 'delegate' AND principal_code IS NULL)",
            name="delegate_principal",
        ),
        CheckConstraint("ocsp_rate_per_second > 0", name="ocsp_rate_positive"),
    )

    code: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    category: Mapped[str] = mapped_column(String(24))
    principal_code: Mapped[str | None] = mapped_column(ForeignKey("jpki_verifiers.code"), nullable=True)
    may_revocation: Mapped[bool] = mapped_column(Boolean)  # OCSP and CRL
    may_links: Mapped[bool] = mapped_column(Boolean)  # 新旧紐付け
    may_basic_info: Mapped[bool] = mapped_column(Boolean)  # 基本4情報提供
    status: Mapped[str] = mapped_column(String(12))
    ocsp_rate_per_second: Mapped[float] = mapped_column(Float)
    suspension_reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class VerifierToken(Base):
    """An API credential of a verifier (Bearer token): the SHA-256 of the token, never the token."""

    __tablename__ = "jpki_verifier_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    verifier_code: Mapped[str] = mapped_column(ForeignKey("jpki_verifiers.code"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(String(16))  # the first characters, to tell tokens apart
    label: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    replaced_by: Mapped[int | None] = mapped_column(Integer, nullable=True)  # rotation


class VerifierUsage(Base):
    """How often a verifier used a service on one day (JST): OCSP, CRL, 新旧紐付け, 基本4情報."""

    __tablename__ = "jpki_verifier_usage"

    verifier_code: Mapped[str] = mapped_column(ForeignKey("jpki_verifiers.code"), primary_key=True)
    service: Mapped[str] = mapped_column(String(16), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    requests: Mapped[int] = mapped_column(COUNT_TYPE)


class VerifierConsent(Base):
    """本人同意: the holder of certificate ``serial`` agreed that ``verifier_code`` may receive their
    current 基本4情報 (given when, how, until when; withdrawn when and by whom)."""

    __tablename__ = "jpki_verifier_consents"
    __table_args__ = (
        CheckConstraint("method IN ('signed', 'online', 'written', 'counter')", name="method"),
        Index("ix_jpki_verifier_consents_serial", "serial"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    verifier_code: Mapped[str] = mapped_column(ForeignKey("jpki_verifiers.code"))
    ca_id: Mapped[str] = mapped_column(String(40))
    serial: Mapped[str] = mapped_column(String(40))
    method: Mapped[str] = mapped_column(String(12))
    evidence_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    given_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())
    recorded_by: Mapped[str] = mapped_column(String(200))
    withdrawn_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    withdrawn_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    withdrawal_channel: Mapped[str | None] = mapped_column(
        String(12), nullable=True
    )  # holder/verifier/operator
