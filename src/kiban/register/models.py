"""Tables of the resident register (住民基本台帳): households (世帯) and resident records (住民票).

One register per municipality: every row carries the 6-digit 地方公共団体コード of the
municipality (or designated-city ward) that keeps it. Items follow SPEC K1 and the 住民記録
システム標準仕様書; the register capability extends these tables (history, restrictions, seals).

Names are stored exactly as recorded (no NFC/NFKC: it would turn compatibility ideographs such
as U+FA10 into other characters, and strip nothing from ideographic variation sequences).
Search uses the separate keys made by :func:`name_search_key` and :func:`kana_search_key`.
"""

from __future__ import annotations

import enum
import re
import unicodedata
import uuid
from datetime import date, datetime

import jaconv
from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    Uuid,
)
from sqlalchemy.orm import Mapped, mapped_column

from kiban.core.database import Base, UTCDateTime, utcnow


class Sex(enum.IntEnum):
    """性別, coded as ISO/IEC 5218 (the 住民票 records only 男 and 女)."""

    MALE = 1
    FEMALE = 2


class ResidentStatus(enum.StrEnum):
    ACTIVE = "active"
    REMOVED = "removed"  # 除票: kept and retrievable


class Household(Base):
    """世帯 (household): the unit the 住民票 groups residents by, with its head (世帯主)."""

    __tablename__ = "households"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    municipality_code: Mapped[str] = mapped_column(String(6), index=True)
    # 世帯主. Deferred so that a household and its head can be written in either order in one
    # transaction (the bulk loader writes households first).
    head_resident_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid,
        ForeignKey("residents.id", use_alter=True, deferrable=True, initially="DEFERRED"),
        index=True,
    )
    postal_code: Mapped[str | None] = mapped_column(String(7))
    prefecture: Mapped[str] = mapped_column(Text)
    municipality: Mapped[str] = mapped_column(Text)  # as written in addresses (郡 included)
    town: Mapped[str] = mapped_column(Text)  # 町字
    banchi: Mapped[str] = mapped_column(Text)  # 番地
    katagaki: Mapped[str | None] = mapped_column(Text)  # 方書 (building, room)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": version}


class Resident(Base):
    """住民票 (resident record) of one person in one municipality's register."""

    __tablename__ = "residents"
    __table_args__ = (
        CheckConstraint("sex IN (1, 2)", name="sex"),
        CheckConstraint("status IN ('active', 'removed')", name="status"),
        # 国籍・在留資格 only for foreign residents; 本籍 only for nationals (住基法7条, 30条の45).
        CheckConstraint(
            "nationality IS NOT NULL OR residence_status IS NULL", name="status_needs_nationality"
        ),
        CheckConstraint("nationality IS NULL OR honseki IS NULL", name="honseki_for_nationals"),
        Index("ix_residents_municipality_name_key", "municipality_code", "name_search_key"),
        Index("ix_residents_municipality_kana_key", "municipality_code", "kana_search_key"),
        Index("ix_residents_municipality_birth_date", "municipality_code", "birth_date"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    municipality_code: Mapped[str] = mapped_column(String(6))
    household_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("households.id"), index=True)
    resident_code: Mapped[str] = mapped_column(String(11), unique=True)  # 住民票コード
    # 個人番号: shown only where the law allows (SPEC §4); null until numbering assigns it.
    individual_number: Mapped[str | None] = mapped_column(String(12), unique=True)

    # 氏名 as recorded (kanji, or the Latin name of a foreign resident), and 振り仮名 in
    # full-width katakana.
    family_name: Mapped[str] = mapped_column(Text)
    given_name: Mapped[str] = mapped_column(Text)
    family_name_kana: Mapped[str] = mapped_column(Text)
    given_name_kana: Mapped[str] = mapped_column(Text)
    old_family_name: Mapped[str | None] = mapped_column(Text)  # 旧氏
    old_family_name_kana: Mapped[str | None] = mapped_column(Text)
    alias: Mapped[str | None] = mapped_column(Text)  # 通称 (foreign residents)
    alias_kana: Mapped[str | None] = mapped_column(Text)
    romaji_name: Mapped[str | None] = mapped_column(Text)  # as on the residence card / passport
    name_search_key: Mapped[str] = mapped_column(Text)
    kana_search_key: Mapped[str] = mapped_column(Text)

    birth_date: Mapped[date] = mapped_column(Date)
    sex: Mapped[int] = mapped_column(SmallInteger)
    relationship: Mapped[str] = mapped_column(Text)  # 続柄 as printed: 世帯主, 妻, 子, 母, 子の妻, …

    # 住所
    postal_code: Mapped[str | None] = mapped_column(String(7))
    prefecture: Mapped[str] = mapped_column(Text)
    municipality: Mapped[str] = mapped_column(Text)
    town: Mapped[str] = mapped_column(Text)  # 町字
    banchi: Mapped[str] = mapped_column(Text)  # 番地
    katagaki: Mapped[str | None] = mapped_column(Text)  # 方書
    address_since: Mapped[date] = mapped_column(Date)  # 住所を定めた日
    resident_since: Mapped[date] = mapped_column(Date)  # 住民となった日
    previous_address: Mapped[str | None] = mapped_column(Text)  # 転入前住所
    pre_move_address: Mapped[str | None] = mapped_column(Text)  # 異動前住所 (last move within)

    # Japanese nationals
    honseki: Mapped[str | None] = mapped_column(Text)  # 本籍
    hittousha: Mapped[str | None] = mapped_column(Text)  # 筆頭者

    # Foreign residents (住基法30条の45); nationality null means a Japanese national.
    nationality: Mapped[str | None] = mapped_column(Text)  # 国籍・地域 as printed (中国, 朝鮮, …)
    residence_status: Mapped[str | None] = mapped_column(Text)  # 在留資格
    period_of_stay_end: Mapped[date | None] = mapped_column(Date)  # 在留期間の満了の日
    residence_card_number: Mapped[str | None] = mapped_column(String(12))  # 在留カード等番号
    foreign_resident_since: Mapped[date | None] = mapped_column(Date)  # 外国人住民となった日

    elector: Mapped[bool] = mapped_column(Boolean, default=False)  # 選挙人名簿登録
    national_health_insurance: Mapped[bool] = mapped_column(Boolean, default=False)  # 国民健康保険
    national_pension: Mapped[bool] = mapped_column(Boolean, default=False)  # 国民年金

    status: Mapped[str] = mapped_column(String(8), default=ResidentStatus.ACTIVE.value)
    removed_reason: Mapped[str | None] = mapped_column(Text)  # 消除事由: 死亡, 転出, …
    removed_on: Mapped[date | None] = mapped_column(Date)  # 消除の異動日
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # when the record was closed

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": version}


_SEPARATORS = re.compile(r"[\s\u3000・･.\-‐－]+")
_VARIATION_SELECTORS = re.compile("[\ufe00-\ufe0f\U000e0100-\U000e01ef]")


def name_search_key(family_name: str, given_name: str) -> str:
    """Key to find a name by its characters, whatever variant form was recorded.

    Drops variation selectors (IVS) and separators, then NFKC (which folds compatibility
    ideographs and full/half width). Only ever used for lookup; the record keeps the original.
    """
    raw = _VARIATION_SELECTORS.sub("", family_name + given_name)
    folded = unicodedata.normalize("NFKC", raw).upper()
    return _SEPARATORS.sub("", folded)


def kana_search_key(family_kana: str, given_kana: str) -> str:
    """Key to find a name by its reading: katakana, no spaces, small kana and voicing kept."""
    text = unicodedata.normalize("NFKC", family_kana + given_kana)  # half-width kana -> full width
    text = jaconv.hira2kata(text)
    return re.sub(r"[\s\u3000・･]+", "", text)
