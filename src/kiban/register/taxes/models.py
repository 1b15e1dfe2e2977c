"""Table of inhabitant-tax assessments (個人住民税の課税情報), the source of 所得・課税証明書.

One row per resident, fiscal year (年度) and version. A correction (更正) adds a version; the
older rows stay, so a certificate issued earlier can always be explained. The newest version
of a (resident, year) is the current one.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Integer, String, Text, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from kiban.core.database import Base, UTCDateTime, utcnow


class TaxAssessment(Base):
    """課税情報: one version of a resident's income and inhabitant tax for one fiscal year."""

    __tablename__ = "tax_assessments"
    __table_args__ = (
        UniqueConstraint("resident_id", "fiscal_year", "version", name="uq_tax_assessments_version"),
        CheckConstraint("version >= 1", name="version"),
        CheckConstraint("income_total >= 0 AND taxable_income >= 0 AND tax_amount >= 0", name="non_negative"),
        CheckConstraint("taxable_income <= income_total", name="taxable_within_total"),
        CheckConstraint("tax_amount <= income_total", name="tax_within_income"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    municipality_code: Mapped[str] = mapped_column(String(6), index=True)
    resident_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("residents.id"), index=True)
    resident_code: Mapped[str] = mapped_column(String(11))  # 住民票コード when recorded
    fiscal_year: Mapped[int] = mapped_column(Integer)  # 年度 (April–March); income is of year - 1
    version: Mapped[int] = mapped_column(Integer)

    income_total: Mapped[int] = mapped_column(BigInteger)  # 総所得金額等 (yen)
    taxable_income: Mapped[int] = mapped_column(BigInteger)  # 課税標準額 (yen)
    tax_amount: Mapped[int] = mapped_column(BigInteger)  # 市町村民税 + 道府県民税 (yen)
    notes: Mapped[str | None] = mapped_column(Text)

    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    recorded_by: Mapped[str] = mapped_column(String(64))
