"""Tables of the numbering store (付番): every 住民票コード and 個人番号 ever issued.

Rows are never deleted: a retired code or number stays so that it is never issued again.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, UniqueConstraint, Uuid, text
from sqlalchemy.orm import Mapped, mapped_column

from kiban.core.database import Base, UTCDateTime

RESIDENT_CODE_ISSUED = "issued"
RESIDENT_CODE_RETIRED = "retired"
NUMBER_ACTIVE = "active"
NUMBER_RETIRED = "retired"

_ONE_ACTIVE = text("status = 'active'")


class ResidentCode(Base):
    """A 住民票コード (resident code) issued by the numbering role."""

    __tablename__ = "resident_codes"
    __table_args__ = (CheckConstraint("status IN ('issued', 'retired')", name="status"),)

    code: Mapped[str] = mapped_column(String(11), primary_key=True)
    status: Mapped[str] = mapped_column(String(10))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime())
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    retired_reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # 住民票コード変更: the code that replaced this one; the chain leads to the person's current code.
    replaced_by: Mapped[str | None] = mapped_column(
        String(11), ForeignKey("resident_codes.code"), nullable=True, index=True
    )


class IndividualNumber(Base):
    """A 個人番号 (individual number), made from ``resident_code`` at ``generation``.

    ``resident_code`` is the code the number was derived from (the first code of the person's
    chain), so that ``cipher.resident_code_for(number, generation)`` always gives it back.
    """

    __tablename__ = "individual_numbers"
    __table_args__ = (
        CheckConstraint("status IN ('active', 'retired')", name="status"),
        CheckConstraint("generation >= 0", name="generation"),
        UniqueConstraint("resident_code", "generation"),
        # At most one active number per person; partial unique indexes work on SQLite and PostgreSQL.
        Index(
            "ix_individual_numbers_one_active",
            "resident_code",
            unique=True,
            sqlite_where=_ONE_ACTIVE,
            postgresql_where=_ONE_ACTIVE,
        ),
    )

    number: Mapped[str] = mapped_column(String(12), primary_key=True)
    resident_code: Mapped[str] = mapped_column(String(11), ForeignKey("resident_codes.code"))
    generation: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(10))
    assigned_at: Mapped[datetime] = mapped_column(UTCDateTime())
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    retired_reason: Mapped[str | None] = mapped_column(String(200), nullable=True)


LETTER_ASSIGNED = "assigned"  # 個人番号の指定
LETTER_CHANGED = "changed"  # 個人番号の変更 (reissue after a leak)


class NumberLetter(Base):
    """A 個人番号通知書 produced for one 個人番号: at most one letter per number, ever.

    The PDF is not kept (it carries the number); the document ledger (``issued_documents``)
    holds its serial, content hash and verification code, this row says which number it was for.
    """

    __tablename__ = "numbering_letters"
    __table_args__ = (CheckConstraint("kind IN ('assigned', 'changed')", name="kind"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    # Unique: a second letter for the same number is refused by the database too.
    number: Mapped[str] = mapped_column(String(12), ForeignKey("individual_numbers.number"), unique=True)
    resident_code: Mapped[str] = mapped_column(String(11), index=True)  # the person's code when printed
    municipality_code: Mapped[str] = mapped_column(String(6))  # whose mayor notifies (住所地)
    kind: Mapped[str] = mapped_column(String(10))
    serial: Mapped[str] = mapped_column(String(40), unique=True)  # the ledger's 発行番号
    batch_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    produced_at: Mapped[datetime] = mapped_column(UTCDateTime())
