"""Table of seal registrations (印鑑登録原票): one row per registration, never deleted.

An abolished registration (廃止・抹消) keeps its row with the date, cause and who recorded it, so
the history of a person's seals stays readable. At most one registration per person is active:
a partial unique index enforces it in the database, whatever code path writes.
"""

from __future__ import annotations

import enum
import uuid
from datetime import date, datetime

from sqlalchemy import (
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from kiban.core.database import Base, UTCDateTime, utcnow


class SealStatus(enum.StrEnum):
    ACTIVE = "active"
    ABOLISHED = "abolished"  # 廃止 or 抹消: kept as history


class AbolitionCause(enum.StrEnum):
    """Why a registration ended (廃止・抹消の事由, after the 印鑑登録証明事務処理要領)."""

    NOTIFIED = "notified"  # 廃止届 by the registrant
    CARD_LOST = "card_lost"  # 印鑑登録証亡失届: the registration is ended, not the card replaced
    DEATH = "death"  # 死亡 (住民票の消除)
    MOVE_OUT = "move_out"  # 転出・国外転出 (住民票の消除)
    NAME_CHANGE = "name_change"  # 氏名変更で登録印が氏名を表さなくなった
    ADULT_GUARDIANSHIP = "adult_guardianship"  # 成年被後見人となった
    EX_OFFICIO = "ex_officio"  # other 職権抹消


_ACTIVE = "status = 'active'"


class SealRegistration(Base):
    """印鑑登録: one registered seal image of one resident, with its 印鑑登録証 number."""

    __tablename__ = "seal_registrations"
    __table_args__ = (
        CheckConstraint("status IN ('active', 'abolished')", name="status"),
        CheckConstraint(
            "(status = 'active' AND abolished_on IS NULL) "
            "OR (status = 'abolished' AND abolished_on IS NOT NULL)",
            name="abolished_has_date",
        ),
        CheckConstraint("width > 0 AND height > 0", name="dimensions"),
        # 印鑑登録証 numbers are never reused within a municipality, abolished ones included.
        UniqueConstraint("municipality_code", "card_number", name="uq_seal_registrations_card"),
        # 一人一印: one active registration per person, enforced by the database too.
        Index(
            "uq_seal_registrations_active_resident",
            "resident_id",
            unique=True,
            sqlite_where=text(_ACTIVE),
            postgresql_where=text(_ACTIVE),
        ),
        Index("ix_seal_registrations_resident_id", "resident_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    municipality_code: Mapped[str] = mapped_column(String(6))
    resident_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("residents.id"))
    # The 住民票コード at registration time (the record may get a new code later).
    resident_code: Mapped[str] = mapped_column(String(11))
    card_number: Mapped[str] = mapped_column(String(12))  # 印鑑登録証番号, canonical (no hyphens)
    status: Mapped[str] = mapped_column(String(10), default=SealStatus.ACTIVE.value)

    # The seal impression (印影), re-encoded as PNG without metadata.
    image_png: Mapped[bytes] = mapped_column(LargeBinary)
    image_sha256: Mapped[str] = mapped_column(String(64))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    source_format: Mapped[str] = mapped_column(String(8))  # PNG or JPEG, as detected from the bytes

    registered_on: Mapped[date] = mapped_column(Date)  # 届出日
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    registered_by: Mapped[str] = mapped_column(String(64))

    abolished_on: Mapped[date | None] = mapped_column(Date)
    abolished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    abolished_by: Mapped[str | None] = mapped_column(String(64))
    abolition_cause: Mapped[str | None] = mapped_column(String(20))
    abolition_reason: Mapped[str | None] = mapped_column(Text)

    version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": version}

    @property
    def is_active(self) -> bool:
        return self.status == SealStatus.ACTIVE.value
