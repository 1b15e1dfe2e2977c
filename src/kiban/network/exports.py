"""Exports of the identity network (SPEC K2 "Exports"): statistics, the CA's feed, codes for 符号.

- :func:`move_in_extract` / :func:`move_in_csv`: the monthly 転入 extract for the
  住民基本台帳人口移動報告 (migration statistics), counted from the national copy's history:
  destination and origin (municipality or prefecture), sex, five-year age group. No names, no
  codes, no numbers. For the national operator.
- :func:`identity_change_feed`: the 異動等情報 (``network.identity_changed``) as a cursor-based
  pull feed for the JPKI CA, which revokes certificates on a change of the 基本4情報 or a 消除.
  Read-only; every event handed out is an audit entry.
- :func:`provide_resident_code`: given a 個人番号 or a 住民票コード, the person's current
  住民票コード, for the linkage role to make a 符号 (SPEC K7: the national role passes the
  住民票コード, never the 個人番号). Audited; refused (and the refusal audited) for anyone else.

Who may call (roles of :data:`kiban.core.models.accounts.ROLES`): see :data:`EXPORT_ROLES`,
:data:`CA_FEED_ROLES`, :data:`LINKAGE_ROLES` (docs/network-moves-exports.md says why).
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import and_, select
from sqlalchemy.orm import Session, aliased

from kiban.core import audit
from kiban.core.database import utcnow
from kiban.core.identifiers import IdentifierError, validate_individual_number, validate_resident_code
from kiban.core.models.events import OutboxEvent
from kiban.network.models import NationalIdentity, current_version
from kiban.network.service import IDENTITY_CHANGED_OUT, NetworkError

JST = ZoneInfo("Asia/Tokyo")

# The national operator (J-LIS role) makes the statistics extract.
EXPORT_ROLES: tuple[str, ...] = ("national_operator",)
# The CA's system account (ca_system) reads the 異動等情報 feed; the linkage platform's
# (linkage_system, 情報提供ネットワークシステム) asks for 住民票コード to make a 符号. A clerk, an
# agency or a verifier never may. national_operator stays in both only for the operator's CLI on
# the national node (kiban.cli.network_exports calls as it); see docs/network-moves-exports.md.
CA_FEED_ROLES: tuple[str, ...] = ("ca_system", "national_operator")
LINKAGE_ROLES: tuple[str, ...] = ("linkage_system", "national_operator")

MIGRATION_REASON = "move_in"  # 転入 (from another municipality); 国外からの転入 is not domestic migration
AGE_STEP = 5
AGE_TOP = 90  # "90+" as the last group (人口移動報告: 90歳以上)
FEED_LIMIT = 1_000
# Outbox sequence numbers are taken at insert, commits may land out of that order (PostgreSQL):
# an event is handed out only once it is this old, so a slower transaction's event with a lower
# number is not skipped by a cursor that already moved past it (see the docs).
FEED_SETTLE = timedelta(seconds=5)
_MONTH = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")

CSV_COLUMNS = (
    "year_month",
    "destination_prefecture_code",
    "destination_municipality_code",
    "origin_prefecture_code",
    "origin_municipality_code",
    "sex",
    "age_group",
    "count",
)

Level = Literal["municipality", "prefecture"]


class ExportError(NetworkError):
    """Bad or refused export request; ``status`` 403 (role), 404 (unknown person) or 422."""

    def __init__(self, field: str, rule: str, message: str, *, status: int = 422) -> None:
        super().__init__(field, rule, message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks: a logged-in account or a system (user name, role, organisation)."""

    username: str
    role: str
    organisation: str | None = None


def _authorise(
    session: Session, caller: Caller, roles: Sequence[str], purpose: str, subject: str = ""
) -> None:
    if not isinstance(caller, Caller) or not isinstance(caller.username, str) or not caller.username.strip():
        raise ExportError("caller", "required", "who asks must be named")
    if caller.role in roles:
        return
    # The refusal is logged; the caller's transaction must commit it (the API does).
    audit.record(
        session,
        actor=caller.username,
        role=caller.role,
        action="refuse",
        purpose=purpose,
        subject=subject,
        items=[],
        organisation=caller.organisation,
        detail={"rule": "role_forbidden"},
    )
    raise ExportError(
        "role", "role_forbidden", f"role {caller.role!r} may not do this; allowed: {list(roles)}", status=403
    )


# --- 住民基本台帳人口移動報告 ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MigrationCount:
    """One cell of the extract."""

    year_month: str
    destination_prefecture_code: str
    destination_municipality_code: str  # "" at prefecture level
    origin_prefecture_code: str  # "" when the copy has no earlier version (origin unknown)
    origin_municipality_code: str
    sex: int  # 1 男, 2 女
    age_group: str  # "0-4" … "85-89", "90+"
    count: int


def parse_month(value: object, *, today: date | None = None) -> tuple[date, date]:
    """ "2026-11" → (first day, first day of the next month); a future month is refused."""
    if not isinstance(value, str) or not value.isascii() or not _MONTH.fullmatch(value):
        raise ExportError("month", "year_month", "must be a month written YYYY-MM (e.g. 2026-11)")
    year, month = int(value[:4]), int(value[5:])
    if year < 1900:
        raise ExportError("month", "year_month", "must be 1900-01 or later")
    first = date(year, month, 1)
    upto = date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)
    now = today or datetime.now(JST).date()
    if first > now:
        raise ExportError("month", "future_month", "the month has not begun")
    return first, upto


def age_group(birth: date, on: date) -> str:
    """Five-year age group at ``on`` (満年齢): "0-4", …, "85-89", "90+"."""
    age = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    if age >= AGE_TOP:
        return f"{AGE_TOP}+"
    low = max(age, 0) // AGE_STEP * AGE_STEP
    return f"{low}-{low + AGE_STEP - 1}"


def move_in_extract(
    session: Session, caller: Caller, month: str, *, level: Level = "municipality", today: date | None = None
) -> list[MigrationCount]:
    """転入 counted by destination, origin, sex and age group, for the month of the 異動年月日.

    Read from the national copy's history: each 転入 version, and the version before it for the
    origin (the 転出 closed there). Counts only, ordered by destination, origin, sex, age group.
    """
    _authorise(session, caller, EXPORT_ROLES, "住民基本台帳人口移動報告")
    if level not in ("municipality", "prefecture"):
        raise ExportError("level", "one_of", "must be 'municipality' or 'prefecture'")
    first, upto = parse_month(month, today=today)
    current = NationalIdentity
    before = aliased(NationalIdentity)
    rows = session.execute(
        select(
            current.prefecture_code,
            current.municipality_code,
            current.sex,
            current.birth_date,
            current.effective_on,
            before.prefecture_code,
            before.municipality_code,
        )
        .outerjoin(
            before,
            and_(before.resident_code == current.resident_code, before.version_no == current.version_no - 1),
        )
        .where(
            current.reason == MIGRATION_REASON,
            current.effective_on >= first,
            current.effective_on < upto,
        )
        .execution_options(yield_per=5_000)
    )
    counts: Counter[tuple[str, str, str, str, int, str]] = Counter()
    for to_pref, to_muni, sex, birth, on, from_pref, from_muni in rows:
        key = (
            to_pref,
            to_muni if level == "municipality" else "",
            from_pref or "",
            (from_muni or "") if level == "municipality" else "",
            int(sex),
            age_group(birth, on),
        )
        counts[key] += 1
    label = month
    audit.record(
        session,
        actor=caller.username,
        role=caller.role,
        action="export",
        purpose="住民基本台帳人口移動報告",
        subject="",
        items=["異動事由", "異動年月日", "住所", "性別", "生年月日"],
        organisation=caller.organisation,
        detail={"month": label, "level": level, "cells": len(counts)},
    )
    return [
        MigrationCount(label, *key[:4], key[4], key[5], n)
        for key, n in sorted(counts.items(), key=lambda item: (*item[0][:5], _age_order(item[0][5])))
    ]


def _age_order(group: str) -> int:
    return int(group.rstrip("+").split("-")[0])


def migration_csv(counts: Iterable[MigrationCount]) -> str:
    """The extract as UTF-8 CSV text with a header row (CRLF line ends, as RFC 4180)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for c in counts:
        writer.writerow([getattr(c, name) for name in CSV_COLUMNS])
    return out.getvalue()


def move_in_csv(
    session: Session, caller: Caller, month: str, *, level: Level = "municipality", today: date | None = None
) -> str:
    """:func:`move_in_extract` as CSV."""
    return migration_csv(move_in_extract(session, caller, month, level=level, today=today))


# --- 異動等情報 for the CA -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedPage:
    """Events after the cursor, oldest first; pass ``next_cursor`` as ``after`` for the next page."""

    events: list[dict[str, Any]]
    next_cursor: int


def _int(value: object, field: str, low: int, high: int | None = None) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        bound = f"from {low} to {high}" if high is not None else f"≥ {low}"
        raise ExportError(field, "range", f"must be an integer {bound}")
    return value


def identity_change_feed(
    session: Session,
    caller: Caller,
    *,
    after: int = 0,
    limit: int = 100,
    settle: timedelta = FEED_SETTLE,
) -> FeedPage:
    """Up to ``limit`` ``network.identity_changed`` events after the cursor ``after`` (read-only).

    The cursor is the event's outbox sequence number: strictly increasing in commit order per
    key, and an event is never handed out twice by following ``next_cursor``. Events younger than
    ``settle`` wait for a later call (commit order). Each event handed out is one audit entry
    (subject the 住民票コード, the CA as organisation).
    """
    _authorise(session, caller, CA_FEED_ROLES, "異動等情報の提供（公的個人認証）")
    after = _int(after, "after", 0)
    limit = _int(limit, "limit", 1, FEED_LIMIT)
    rows = list(
        session.scalars(
            select(OutboxEvent)
            .where(
                OutboxEvent.seq > after,
                OutboxEvent.type == IDENTITY_CHANGED_OUT,
                OutboxEvent.occurred_at <= utcnow() - settle,
            )
            .order_by(OutboxEvent.seq)
            .limit(limit)
        )
    )
    events = [
        {
            "cursor": row.seq,
            "id": row.event_id,
            "type": row.type,
            "key": row.key,
            "schema_version": row.schema_version,
            "occurred_at": row.occurred_at.isoformat(),
            "payload": row.payload,
        }
        for row in rows
    ]
    if rows:
        audit.record_many(
            session,
            [
                {
                    "actor": caller.username,
                    "role": caller.role,
                    "action": "read",
                    "purpose": "異動等情報の提供（公的個人認証）",
                    "subject": row.key,
                    "items": ["異動等情報"],
                    "organisation": caller.organisation,
                    "detail": {"cursor": row.seq},
                }
                for row in rows
            ],
        )
    return FeedPage(events=events, next_cursor=rows[-1].seq if rows else after)


# --- 住民票コード for 符号 ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CodeAnswer:
    """The person's current 住民票コード; ``changed`` when it differs from the code asked about."""

    resident_code: str
    changed: bool
    status: str | None  # in the national copy: active, removed, or None when the copy lacks them


def _forward_chain(session: Session, code: str) -> str | None:
    from kiban.numbering.models import ResidentCode

    current = code
    for _ in range(1_000):
        row = session.get(ResidentCode, current)
        if row is None:
            return None
        if row.replaced_by is None:
            return current
        current = row.replaced_by
    raise ExportError("resident_code", "chain", "replacement chain too long")


def provide_resident_code(
    session: Session,
    caller: Caller,
    *,
    individual_number: str | None = None,
    resident_code: str | None = None,
) -> CodeAnswer:
    """The current 住民票コード of the person with this 個人番号 or (possibly old) 住民票コード.

    For the linkage role only (:data:`LINKAGE_ROLES`); a refusal is audited. Exactly one of the
    two must be given; a malformed one names its rule; an unknown person is a 404. The 個人番号
    never reaches the audit log (the entry says which kind of query it was).
    """
    from kiban.numbering import service as numbering

    _authorise(session, caller, LINKAGE_ROLES, "符号の生成のための住民票コードの提供")
    if (individual_number is None) == (resident_code is None):
        raise ExportError("query", "one_of", "give exactly one of individual_number and resident_code")
    try:
        if individual_number is not None:
            kind = "individual_number"
            number = validate_individual_number(individual_number)
            found = numbering.current_resident_code(session, number)
            asked = None
        else:
            kind = "resident_code"
            asked = validate_resident_code(str(resident_code))
            found = _forward_chain(session, asked)
    except IdentifierError as exc:
        raise ExportError(kind, exc.rule, exc.detail) from exc
    if found is None:
        raise ExportError(kind, "not_found", "no person with this identifier", status=404)
    status = session.scalar(
        select(NationalIdentity.status).where(
            NationalIdentity.resident_code == found, current_version(NationalIdentity)
        )
    )
    audit.record(
        session,
        actor=caller.username,
        role=caller.role,
        action="read",
        purpose="符号の生成のための住民票コードの提供",
        subject=found,
        items=["住民票コード"],
        organisation=caller.organisation,
        detail={"query": kind},
    )
    return CodeAnswer(resident_code=found, changed=asked is not None and asked != found, status=status)
