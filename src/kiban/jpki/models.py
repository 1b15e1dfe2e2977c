"""Tables of the JPKI analogue (公的個人認証): CAs, certificates, issuance records, CRL publications."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from kiban.core.database import Base, UTCDateTime

STATUSES = ("good", "revoked", "hold")


class CertificateAuthority(Base):
    """One CA (認証局) of a hierarchy: its key label in the key store and its own certificate."""

    __tablename__ = "jpki_cas"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    hierarchy: Mapped[str] = mapped_column(String(20))  # individual / organisation
    role: Mapped[str] = mapped_column(String(32))  # root or the profile family it issues
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("jpki_cas.id"), nullable=True)
    subject: Mapped[str] = mapped_column(Text)  # RFC 4514 string, for display
    key_label: Mapped[str] = mapped_column(String(64))
    key_algorithm: Mapped[str] = mapped_column(String(16))  # rsa2048 / p256
    base_url: Mapped[str] = mapped_column(String(200))
    certificate_der: Mapped[bytes] = mapped_column(LargeBinary)
    not_before: Mapped[datetime] = mapped_column(UTCDateTime())
    not_after: Mapped[datetime] = mapped_column(UTCDateTime())
    # Last CRL number used; CRL numbers are shared by the full CRL and its partitions (monotonic).
    crl_number: Mapped[int] = mapped_column(Integer, default=0)
    # Certificates issued so far; the issuance batch (CRL partition) of the next one derives from it.
    issued_count: Mapped[int] = mapped_column(Integer, default=0)
    partition_size: Mapped[int] = mapped_column(Integer)
    partition_threshold: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Certificate(Base):
    """An issued end-entity certificate (電子証明書) and its revocation status."""

    __tablename__ = "jpki_certificates"
    __table_args__ = (
        UniqueConstraint("ca_id", "serial", name="uq_jpki_certificates_ca_id_serial"),
        CheckConstraint("status IN ('good', 'revoked', 'hold')", name="status"),
        Index("ix_jpki_certificates_ca_partition_status", "ca_id", "partition", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ca_id: Mapped[str] = mapped_column(ForeignKey("jpki_cas.id"))
    serial: Mapped[str] = mapped_column(String(40))  # lower-case hex, zero-padded to 40 digits
    kind: Mapped[str] = mapped_column(String(32))
    resident_code: Mapped[str | None] = mapped_column(String(11), nullable=True, index=True)
    card_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    subject_id: Mapped[str] = mapped_column(String(64))  # the opaque CN
    subject: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(8), default="good")
    reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    status_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    invalidity_date: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    replaced_by: Mapped[str | None] = mapped_column(String(40), nullable=True)  # 新旧紐付け
    renewal_of: Mapped[str | None] = mapped_column(String(40), nullable=True)
    partition: Mapped[int] = mapped_column(Integer)
    not_before: Mapped[datetime] = mapped_column(UTCDateTime())
    not_after: Mapped[datetime] = mapped_column(UTCDateTime())
    der: Mapped[bytes] = mapped_column(LargeBinary)


class IssuanceRecord(Base):
    """発行記録: who had which certificate issued, when, by whom, as a renewal of what."""

    __tablename__ = "jpki_issuance_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ca_id: Mapped[str] = mapped_column(ForeignKey("jpki_cas.id"))
    serial: Mapped[str] = mapped_column(String(40), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    resident_code: Mapped[str | None] = mapped_column(String(11), nullable=True, index=True)
    action: Mapped[str] = mapped_column(String(16))  # issue / renew
    renewal_of: Mapped[str | None] = mapped_column(String(40), nullable=True)
    actor: Mapped[str] = mapped_column(String(200))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())


class CrlPublication(Base):
    """A published CRL: partition 0 is the full CRL, 1… the issuance-batch partitions."""

    __tablename__ = "jpki_crls"
    __table_args__ = (
        UniqueConstraint("ca_id", "crl_number", name="uq_jpki_crls_ca_id_crl_number"),
        Index("ix_jpki_crls_ca_partition_number", "ca_id", "partition", "crl_number"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ca_id: Mapped[str] = mapped_column(ForeignKey("jpki_cas.id"))
    partition: Mapped[int] = mapped_column(Integer)
    crl_number: Mapped[int] = mapped_column(Integer)
    this_update: Mapped[datetime] = mapped_column(UTCDateTime())
    next_update: Mapped[datetime] = mapped_column(UTCDateTime())
    entries: Mapped[int] = mapped_column(Integer)
    url: Mapped[str] = mapped_column(String(300))
    der: Mapped[bytes] = mapped_column(LargeBinary)
    complete: Mapped[bool] = mapped_column(default=True)
    published_at: Mapped[datetime] = mapped_column(UTCDateTime())


class OcspSigner(Base):
    """A delegated OCSP responder key (OCSP署名用の鍵) of an issuing CA and its certificate.

    The key lives in the same key store as the CA keys (a file in the demo, a token object in
    production) under ``key_label``; the CA key is needed only to certify it.
    """

    __tablename__ = "jpki_ocsp_signers"
    __table_args__ = (Index("ix_jpki_ocsp_signers_ca_not_after", "ca_id", "not_after"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ca_id: Mapped[str] = mapped_column(ForeignKey("jpki_cas.id"))
    serial: Mapped[str] = mapped_column(String(40), unique=True)  # the signer certificate's serial
    key_label: Mapped[str] = mapped_column(String(64), unique=True)
    key_algorithm: Mapped[str] = mapped_column(String(16))
    certificate_der: Mapped[bytes] = mapped_column(LargeBinary)
    not_before: Mapped[datetime] = mapped_column(UTCDateTime())
    not_after: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class OcspResponse(Base):
    """A pre-signed OCSP response (事前署名済みOCSPレスポンス) for one certificate.

    Two encodings, one per CertID hash (SHA-1, the RFC 5019 default, and SHA-256), signed by the
    CA's delegated signer. ``der_sha1``/``der_sha256`` are NULL when the last refresh could not
    sign (a tombstone: never serve a stale status); ``refreshed_at`` tells responders' caches
    what to drop.
    """

    __tablename__ = "jpki_ocsp_responses"
    __table_args__ = (
        UniqueConstraint("ca_id", "serial", name="uq_jpki_ocsp_responses_ca_id_serial"),
        Index("ix_jpki_ocsp_responses_refreshed_at", "refreshed_at"),
        Index("ix_jpki_ocsp_responses_next_update", "next_update"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ca_id: Mapped[str] = mapped_column(ForeignKey("jpki_cas.id"))
    serial: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(8))  # good / revoked / hold, as signed
    der_sha1: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    der_sha256: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    this_update: Mapped[datetime] = mapped_column(UTCDateTime())
    next_update: Mapped[datetime] = mapped_column(UTCDateTime())
    signer_serial: Mapped[str | None] = mapped_column(String(40), nullable=True)
    refreshed_at: Mapped[datetime] = mapped_column(UTCDateTime())
