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
from typing import Any

import jaconv
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
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
        Index(
            "uq_residents_active_resident_code",
            "resident_code",
            unique=True,
            sqlite_where=text("status = 'active'"),
            postgresql_where=text("status = 'active'"),
        ),
        Index(
            "uq_residents_active_individual_number",
            "individual_number",
            unique=True,
            sqlite_where=text("status = 'active'"),
            postgresql_where=text("status = 'active'"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    municipality_code: Mapped[str] = mapped_column(String(6))
    household_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("households.id"), index=True)
    # 住民票コード. Unique among active records only: a person's 除票 in the municipality they
    # left keeps the code their new record carries (one active record per code, SPEC K1).
    resident_code: Mapped[str] = mapped_column(String(11), index=True)
    # 個人番号: shown only where the law allows (SPEC §4); null until numbering assigns it.
    individual_number: Mapped[str | None] = mapped_column(String(12), index=True)

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


# --- 異動 (change events), 転出証明書情報, DV等支援措置 -----------------------------------------------

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets 64 bits.
_SEQ_TYPE = BigInteger().with_variant(Integer(), "sqlite")


class ChangeKind(enum.StrEnum):
    """異動事由 (kind of change event); the Japanese term is :data:`CHANGE_KIND_JA`."""

    BIRTH = "birth"  # 出生
    DEATH = "death"  # 死亡
    MOVE_IN = "move_in"  # 転入
    MOVE_OUT = "move_out"  # 転出
    RELOCATION = "relocation"  # 転居
    EMIGRATION = "emigration"  # 国外転出
    IMMIGRATION = "immigration"  # 国外からの転入
    HOUSEHOLD_SPLIT = "household_split"  # 世帯分離
    HOUSEHOLD_MERGE = "household_merge"  # 世帯合併
    HEAD_CHANGE = "head_change"  # 世帯主変更
    NAME_CHANGE = "name_change"  # 氏名変更
    EX_OFFICIO_ENTRY = "ex_officio_entry"  # 職権記載
    EX_OFFICIO_CORRECTION = "ex_officio_correction"  # 職権修正
    EX_OFFICIO_REMOVAL = "ex_officio_removal"  # 職権消除
    EX_OFFICIO_RESTORATION = "ex_officio_restoration"  # 職権回復
    RESIDENT_CODE_CHANGE = "resident_code_change"  # 住民票コード変更
    RESTRICTION_SET = "restriction_set"  # 支援措置 開始
    RESTRICTION_LIFTED = "restriction_lifted"  # 支援措置 終了


CHANGE_KIND_JA: dict[str, str] = {
    "birth": "出生",
    "death": "死亡",
    "move_in": "転入",
    "move_out": "転出",
    "relocation": "転居",
    "emigration": "国外転出",
    "immigration": "国外からの転入",
    "household_split": "世帯分離",
    "household_merge": "世帯合併",
    "head_change": "世帯主変更",
    "name_change": "氏名変更",
    "ex_officio_entry": "職権記載",
    "ex_officio_correction": "職権修正",
    "ex_officio_removal": "職権消除",
    "ex_officio_restoration": "職権回復",
    "resident_code_change": "住民票コード変更",
    "restriction_set": "支援措置開始",
    "restriction_lifted": "支援措置終了",
}


class ChangeRecord(Base):
    """異動履歴: one row per resident touched by one change event. Rows are never updated.

    ``before``/``after`` hold the items the event changed (``after`` of a creating event holds
    every item), so any earlier state of a record is its creating row's ``after`` with the later
    rows' ``after`` applied in ``seq`` order. ``group_id`` ties the rows of one clerk action
    (a family moving together, a household merge).
    """

    __tablename__ = "register_changes"
    __table_args__ = (
        Index("ix_register_changes_resident_id_seq", "resident_id", "seq"),
        Index("ix_register_changes_municipality_recorded", "municipality_code", "recorded_at"),
    )

    seq: Mapped[int] = mapped_column(_SEQ_TYPE, primary_key=True, autoincrement=True)
    group_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    municipality_code: Mapped[str] = mapped_column(String(6))
    resident_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("residents.id"))
    resident_code: Mapped[str] = mapped_column(String(11), index=True)  # at the time of the event
    household_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    notified_on: Mapped[date] = mapped_column(Date)  # 届出日 (職権: the day of the clerk's action)
    effective_on: Mapped[date] = mapped_column(Date)  # 異動日
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    before: Mapped[dict[str, Any]] = mapped_column(JSON)
    after: Mapped[dict[str, Any]] = mapped_column(JSON)
    resident_version: Mapped[int] = mapped_column(Integer)  # the record's version after the event


class MoveOutStatus(enum.StrEnum):
    PENDING = "pending"  # 転入 not arrived yet
    COMPLETED = "completed"  # 転入 recorded at the destination


class MoveOutCertificate(Base):
    """転出証明書情報 as held by one municipality.

    The origin keeps the row it issued (``role`` "issued"); the destination keeps the copy it
    received through ``register.moved_out`` (``role`` "received"). The 転入 completes the received
    copy, and the 転入通知 (``register.moved_in``) completes the issued one.
    """

    __tablename__ = "move_out_certificates"
    __table_args__ = (
        CheckConstraint("role IN ('issued', 'received')", name="role"),
        CheckConstraint("status IN ('pending', 'completed')", name="status"),
        UniqueConstraint("certificate_id", "role", name="uq_move_out_certificates_certificate_role"),
        Index("ix_move_out_certificates_holder_status", "holder_municipality_code", "status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    certificate_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    role: Mapped[str] = mapped_column(String(8))
    holder_municipality_code: Mapped[str] = mapped_column(String(6))
    from_municipality_code: Mapped[str] = mapped_column(String(6))
    to_municipality_code: Mapped[str] = mapped_column(String(6))
    resident_code: Mapped[str] = mapped_column(String(11), index=True)
    planned_move_on: Mapped[date] = mapped_column(Date)  # 転出予定日
    notified_on: Mapped[date] = mapped_column(Date)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)  # the 転出証明書情報 (schema in docs/register.md)
    status: Mapped[str] = mapped_column(String(10), default=MoveOutStatus.PENDING.value)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_on: Mapped[date | None] = mapped_column(Date)  # the 転入's 異動日


class Restriction(Base):
    """DV等支援措置 (support measure): while in force, third parties get neither copies nor search hits."""

    __tablename__ = "register_restrictions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    resident_code: Mapped[str] = mapped_column(String(11), index=True)
    municipality_code: Mapped[str] = mapped_column(String(6))  # who set it
    reason: Mapped[str] = mapped_column(Text)  # 申出の理由 (DV, ストーカー, 児童虐待, …)
    starts_on: Mapped[date] = mapped_column(Date)
    ends_on: Mapped[date] = mapped_column(Date)  # 支援措置の期間 (one year, extendable)
    set_by: Mapped[str] = mapped_column(Text)
    set_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    lifted_on: Mapped[date | None] = mapped_column(Date)
    lifted_by: Mapped[str | None] = mapped_column(Text)
    lifted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lift_reason: Mapped[str | None] = mapped_column(Text)
