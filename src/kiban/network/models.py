"""Tables of the identity network (住基ネット, SPEC K2): the copies, quarantine, agencies, provisions.

- ``network_prefectural_identity`` (都道府県知事保存本人確認情報) and ``network_national_identity``
  (機構保存本人確認情報): every version of every person's 本人確認情報, one row per applied change,
  the newest flagged ``current``. Nothing else of the 住民票 is stored here.
- ``network_quarantine``: change messages refused (malformed, out of order, conflicting), with the
  rule that refused them; never applied.
- ``network_registration_conflicts``: a second active registration of one 住民票コード.
- ``network_agencies``, ``network_uses`` (事務), ``network_agency_uses``: who may receive what.
- ``network_provisions``: every provision and refusal (提供状況), what a resident's disclosure reads.
- ``network_bulk_jobs``: the cursor of a bulk provision, so a broken stream resumes.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ColumnElement,
    Date,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    Uuid,
    literal_column,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from kiban.core.database import Base, UTCDateTime

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets 64 bits.
SEQ_TYPE = BigInteger().with_variant(Integer(), "sqlite")
CURRENT = text("is_current")


def current_version(model: Any) -> ColumnElement[bool]:
    """``<table>.is_current`` exactly as the partial indexes' predicate (``WHERE is_current``).

    Neither ``is_current IS true`` (PostgreSQL) nor ``is_current = 1`` (SQLite, where SQLAlchemy
    renders a bare Boolean so) is matched to those indexes by the planners: a look-up by 個人番号
    would scan every version.
    """
    # Untyped on purpose: a Boolean-typed column is rendered `= 1` on SQLite again.
    column: ColumnElement[bool] = literal_column(f"{model.__table__.name}.is_current")
    return column


class _IdentityVersion:
    """The 本人確認情報 items of one version (住基法30条の6), and how the version got here."""

    id: Mapped[int] = mapped_column(SEQ_TYPE, primary_key=True, autoincrement=True)
    resident_code: Mapped[str] = mapped_column(String(11))
    # The prefecture (2 digits) of the municipality that sent the version: the partition key.
    prefecture_code: Mapped[str] = mapped_column(String(2))
    municipality_code: Mapped[str] = mapped_column(String(6))
    version_no: Mapped[int] = mapped_column(Integer)  # 1, 2, … per 住民票コード in this copy
    is_current: Mapped[bool] = mapped_column(Boolean)
    previous_resident_code: Mapped[str | None] = mapped_column(String(11))
    family_name: Mapped[str] = mapped_column(Text)
    given_name: Mapped[str] = mapped_column(Text)
    family_name_kana: Mapped[str] = mapped_column(Text)
    given_name_kana: Mapped[str] = mapped_column(Text)
    old_family_name: Mapped[str | None] = mapped_column(Text)
    old_family_name_kana: Mapped[str | None] = mapped_column(Text)
    kana_key: Mapped[str] = mapped_column(Text)  # reading without spaces, for 基本4情報 search
    birth_date: Mapped[date] = mapped_column(Date)
    sex: Mapped[int] = mapped_column(SmallInteger)  # 1 男, 2 女 (JIS X 0303)
    address: Mapped[str] = mapped_column(Text)  # 住所 as printed
    individual_number: Mapped[str | None] = mapped_column(String(12))
    status: Mapped[str] = mapped_column(String(10))  # active | removed
    reason: Mapped[str] = mapped_column(String(40))  # 異動事由 (register's kind, e.g. relocation)
    reason_ja: Mapped[str] = mapped_column(Text)
    effective_on: Mapped[date] = mapped_column(Date)  # 異動年月日
    notified_on: Mapped[date | None] = mapped_column(Date)
    event_id: Mapped[str] = mapped_column(String(64))
    event_occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    applied_at: Mapped[datetime] = mapped_column(UTCDateTime())


class NationalIdentity(_IdentityVersion, Base):
    """A version of 機構保存本人確認情報 (the national copy), partitioned logically by prefecture."""

    __tablename__ = "network_national_identity"

    __table_args__ = (
        Index("ix_network_national_identity_prefecture_code", "prefecture_code"),
        Index("ix_network_national_identity_code_version", "resident_code", "version_no", unique=True),
        Index("ix_network_national_identity_event_id", "event_id", unique=True),
        Index(
            "ix_network_national_identity_current_code",
            "resident_code",
            unique=True,
            sqlite_where=CURRENT,
            postgresql_where=CURRENT,
        ),
        Index(
            "ix_network_national_identity_current_number",
            "individual_number",
            sqlite_where=CURRENT,
            postgresql_where=CURRENT,
        ),
        Index(
            "ix_network_national_identity_current_kana",
            "kana_key",
            "birth_date",
            sqlite_where=CURRENT,
            postgresql_where=CURRENT,
        ),
        Index("ix_network_national_identity_municipality_applied", "municipality_code", "applied_at"),
    )


class PrefecturalIdentity(_IdentityVersion, Base):
    """A version of 都道府県知事保存本人確認情報: each prefecture's copy of its residents."""

    __tablename__ = "network_prefectural_identity"

    __table_args__ = (
        Index(
            "ix_network_prefectural_identity_code_version",
            "prefecture_code",
            "resident_code",
            "version_no",
            unique=True,
        ),
        Index("ix_network_prefectural_identity_event_id", "prefecture_code", "event_id", unique=True),
        Index(
            "ix_network_prefectural_identity_current_code",
            "prefecture_code",
            "resident_code",
            unique=True,
            sqlite_where=CURRENT,
            postgresql_where=CURRENT,
        ),
    )


class QuarantinedMessage(Base):
    """A change message the network refused (隔離): kept with its reason, never applied."""

    __tablename__ = "network_quarantine"

    id: Mapped[int] = mapped_column(SEQ_TYPE, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), index=True)
    event_type: Mapped[str] = mapped_column(String(100))
    key: Mapped[str] = mapped_column(String(128))
    municipality_code: Mapped[str | None] = mapped_column(String(6), index=True)
    field: Mapped[str] = mapped_column(String(100))
    rule: Mapped[str] = mapped_column(String(40))
    message: Mapped[str] = mapped_column(Text)
    # The message as received, minus the values of items that must not leave the municipality.
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    quarantined_at: Mapped[datetime] = mapped_column(UTCDateTime())
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class RegistrationConflict(Base):
    """Two municipalities claim one 住民票コード as active (二重登録): reported to both."""

    __tablename__ = "network_registration_conflicts"

    id: Mapped[int] = mapped_column(SEQ_TYPE, primary_key=True, autoincrement=True)
    resident_code: Mapped[str] = mapped_column(String(11), index=True)
    active_municipality_code: Mapped[str] = mapped_column(String(6))
    claiming_municipality_code: Mapped[str] = mapped_column(String(6))
    event_id: Mapped[str] = mapped_column(String(64))
    detected_at: Mapped[datetime] = mapped_column(UTCDateTime())
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Agency(Base):
    """A body that receives 本人確認情報 (国の機関等, 都道府県の執行機関, 他の市町村)."""

    __tablename__ = "network_agencies"

    code: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(40))


class StatutoryUse(Base):
    """A 事務 of 住民基本台帳法 別表 and the items it may receive."""

    __tablename__ = "network_uses"

    code: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    legal_basis: Mapped[str] = mapped_column(Text)
    items: Mapped[list[str]] = mapped_column(JSON)
    # What a person under a DV等支援措置 gets: provide (flagged), withhold_address (flagged), refuse.
    restricted_policy: Mapped[str] = mapped_column(String(20))


class AgencyUse(Base):
    """Agency ``agency_code`` may make use ``use_code``."""

    __tablename__ = "network_agency_uses"

    agency_code: Mapped[str] = mapped_column(String(40), primary_key=True)
    use_code: Mapped[str] = mapped_column(String(40), primary_key=True)


class Provision(Base):
    """One provision of 本人確認情報, or one refusal (本人確認情報の提供の記録)."""

    __tablename__ = "network_provisions"

    id: Mapped[int] = mapped_column(SEQ_TYPE, primary_key=True, autoincrement=True)
    provided_at: Mapped[datetime] = mapped_column(UTCDateTime())
    agency_code: Mapped[str] = mapped_column(String(40))
    use_code: Mapped[str] = mapped_column(String(40))
    resident_code: Mapped[str | None] = mapped_column(String(11))
    query_kind: Mapped[str] = mapped_column(String(20))  # resident_code | individual_number | basic4
    outcome: Mapped[str] = mapped_column(String(20))  # provided | not_found | ambiguous | refused | invalid
    rule: Mapped[str | None] = mapped_column(String(40))  # why refused
    items: Mapped[list[str]] = mapped_column(JSON)
    restricted: Mapped[bool] = mapped_column(Boolean)
    job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    row_no: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        Index("ix_network_provisions_resident_code_provided_at", "resident_code", "provided_at"),
        Index("ix_network_provisions_agency_code_provided_at", "agency_code", "provided_at"),
    )


class BulkJob(Base):
    """A bulk provision (一括提供): its cursor moves with each committed chunk."""

    __tablename__ = "network_bulk_jobs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    agency_code: Mapped[str] = mapped_column(String(40))
    use_code: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    next_row: Mapped[int] = mapped_column(Integer)
    provided: Mapped[int] = mapped_column(Integer)
    failed: Mapped[int] = mapped_column(Integer)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class RestrictionSet(Base):
    """The newest DV等支援措置 state a municipality sent for a person (支援措置の写し).

    One row per (住民票コード, municipality): the event it came with orders the states, so an older
    state (a replay, a late copy) never replaces a newer one.
    """

    __tablename__ = "network_restriction_sets"

    resident_code: Mapped[str] = mapped_column(String(11), primary_key=True)
    municipality_code: Mapped[str] = mapped_column(String(6), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64))
    event_occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    applied_at: Mapped[datetime] = mapped_column(UTCDateTime())
    measures: Mapped[int] = mapped_column(Integer)  # how many measures the state holds


class RestrictionCopy(Base):
    """One measure of a municipality's current set: its period, and when it was lifted (no reason)."""

    __tablename__ = "network_restrictions"

    id: Mapped[int] = mapped_column(SEQ_TYPE, primary_key=True, autoincrement=True)
    resident_code: Mapped[str] = mapped_column(String(11))
    municipality_code: Mapped[str] = mapped_column(String(6))
    measure_id: Mapped[str] = mapped_column(String(64))
    starts_on: Mapped[date] = mapped_column(Date)
    ends_on: Mapped[date] = mapped_column(Date)
    lifted_on: Mapped[date | None] = mapped_column(Date)

    __table_args__ = (
        Index("ix_network_restrictions_resident_municipality", "resident_code", "municipality_code"),
    )
