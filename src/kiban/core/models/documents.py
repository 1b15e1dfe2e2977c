"""Ledger of issued documents (交付台帳): one row per document printed by any capability.

The row holds what verification needs and nothing more personal than the subject's 住民票コード:
the printed data itself is not kept here, only its SHA-256 (see :mod:`kiban.core.documents`).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, Index, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from kiban.core.database import Base, UTCDateTime


class IssuedDocument(Base):
    """交付済み証明書: an issued document with its serial, content hash and verification code."""

    __tablename__ = "issued_documents"
    __table_args__ = (
        CheckConstraint("length(content_hash) = 64", name="content_hash_length"),
        CheckConstraint("length(municipality_code) = 6", name="municipality_code_length"),
        Index("ix_issued_documents_municipality_issued_at", "municipality_code", "issued_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    serial: Mapped[str] = mapped_column(String(40), unique=True)
    document_type: Mapped[str] = mapped_column(String(40))
    municipality_code: Mapped[str] = mapped_column(String(6))
    # 住民票コード of the person the document is about (the head's for a household copy).
    subject_resident_code: Mapped[str | None] = mapped_column(String(11), index=True)
    content_hash: Mapped[str] = mapped_column(String(64))  # hex SHA-256 of the canonical data
    verification_code: Mapped[str] = mapped_column(String(128))
    signer_id: Mapped[str] = mapped_column(String(64))  # which key or certificate made the code
    issuer: Mapped[str] = mapped_column(Text)  # clerk's username, "kiosk:<operator>", …
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime)
