"""Operator and portal functions of the identity network, on top of :mod:`kiban.network.service`.

What the web layer (:mod:`kiban.network.api`) needs beyond the service: the replication status
summed per prefecture, provision statistics (by agency, use, outcome and JST month), the agency
registry as read, an agency's bulk jobs, and the 提供状況の開示 request with its requester (本人 or
代理人) recorded. Nothing here writes the network's tables except through the service; the
disclosure request adds one audit entry naming who asked.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Integer, cast, func, select
from sqlalchemy.orm import Session

from kiban.core import audit, master
from kiban.core.identifiers import validate_resident_code
from kiban.network import service as network
from kiban.network.models import (
    Agency,
    AgencyUse,
    BulkJob,
    NationalIdentity,
    Provision,
    QuarantinedMessage,
    StatutoryUse,
    current_version,
)
from kiban.network.schemas import DisclosureEntry
from kiban.network.service import NetworkError, ReplicationStatus

JST = ZoneInfo("Asia/Tokyo")
OUTCOMES = ("provided", "not_found", "ambiguous", "refused", "invalid")
# Japanese names of the provision items (提供項目), for pages and the disclosure letter.
ITEM_NAMES_JA: dict[str, str] = {
    "name": "氏名",
    "name_kana": "氏名の振り仮名",
    "old_name": "旧氏",
    "birth_date": "生年月日",
    "sex": "性別",
    "address": "住所",
    "resident_code": "住民票コード",
    "individual_number": "個人番号",
    "status": "住民票の状態",
    "change": "異動事由・異動年月日",
}
OUTCOMES_JA = {
    "provided": "提供",
    "not_found": "該当なし",
    "ambiguous": "複数該当",
    "refused": "拒否",
    "invalid": "入力誤り",
}
REQUESTERS = ("self", "proxy")
REQUESTERS_JA = {"self": "本人", "proxy": "代理人"}


# --- replication ---------------------------------------------------------------------------------


@dataclass
class PrefectureStatus:
    """Replication summed over a prefecture's municipalities (the operator's first screen)."""

    prefecture_code: str
    prefecture_name: str
    municipalities: int
    versions: int
    quarantined: int
    max_lag: timedelta | None
    last_applied_at: datetime | None
    rows: list[ReplicationStatus] = field(default_factory=list)


def municipality_label(code: str) -> str:
    """「東京都千代田区」, or the code when the master does not know it."""
    try:
        found = master.municipality(code)
    except master.MasterError:
        return code
    return f"{found.prefecture}{found.name}"


def prefecture_name(code: str) -> str:
    return next((p.name for p in master.prefectures() if p.code == code), code)


def replication_by_prefecture(statuses: Sequence[ReplicationStatus]) -> list[PrefectureStatus]:
    """Per prefecture: municipalities reporting, versions applied, quarantine, worst lag, newest change."""
    out: dict[str, PrefectureStatus] = {}
    for st in statuses:
        p = out.get(st.prefecture_code)
        if p is None:
            p = out[st.prefecture_code] = PrefectureStatus(
                st.prefecture_code, prefecture_name(st.prefecture_code), 0, 0, 0, None, None
            )
        p.municipalities += 1
        p.versions += st.versions
        p.quarantined += st.quarantined
        if st.lag is not None and (p.max_lag is None or st.lag > p.max_lag):
            p.max_lag = st.lag
        if st.last_applied_at is not None and (
            p.last_applied_at is None or st.last_applied_at > p.last_applied_at
        ):
            p.last_applied_at = st.last_applied_at
        p.rows.append(st)
    return sorted(out.values(), key=lambda p: p.prefecture_code)


@dataclass(frozen=True)
class QueueEntry:
    """A quarantined message as the operator sees it: why and from where, not the message itself."""

    id: int
    event_id: str
    event_type: str
    key: str
    municipality_code: str | None
    field: str
    rule: str
    message: str
    quarantined_at: datetime
    released_at: datetime | None


def quarantine_queue(
    session: Session, *, limit: int = 200, include_released: bool = False
) -> tuple[list[QueueEntry], int]:
    """The oldest ``limit`` quarantined messages and how many there are, without the kept documents.

    (The service's :func:`~kiban.network.service.quarantined` loads every row with its document;
    a screen needs a page of reasons.)
    """
    q = QuarantinedMessage
    where = [] if include_released else [q.released_at.is_(None)]
    total = session.scalar(select(func.count()).select_from(q).where(*where)) or 0
    rows = session.execute(
        select(
            q.id,
            q.event_id,
            q.event_type,
            q.key,
            q.municipality_code,
            q.field,
            q.rule,
            q.message,
            q.quarantined_at,
            q.released_at,
        )
        .where(*where)
        .order_by(q.id)
        .limit(limit)
    ).all()
    return [QueueEntry(**row._mapping) for row in rows], int(total)


# --- registry ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisteredAgency:
    code: str
    name: str
    kind: str
    uses: tuple[StatutoryUse, ...]


def agencies(session: Session) -> list[RegisteredAgency]:
    """The agency registry with each agency's statutory uses (事務), by code."""
    uses = {u.code: u for u in session.scalars(select(StatutoryUse))}
    allowed: dict[str, list[StatutoryUse]] = {}
    for link in session.scalars(select(AgencyUse).order_by(AgencyUse.agency_code, AgencyUse.use_code)):
        if link.use_code in uses:
            allowed.setdefault(link.agency_code, []).append(uses[link.use_code])
    return [
        RegisteredAgency(a.code, a.name, a.kind, tuple(allowed.get(a.code, ())))
        for a in session.scalars(select(Agency).order_by(Agency.code))
    ]


def agency(session: Session, code: str) -> RegisteredAgency | None:
    return next((a for a in agencies(session) if a.code == code), None)


def statutory_uses(session: Session) -> list[StatutoryUse]:
    return list(session.scalars(select(StatutoryUse).order_by(StatutoryUse.code)))


def answer_columns(use: StatutoryUse | None) -> list[str]:
    """The data columns of a use's answers, in item order (the bulk answer file's header)."""
    if use is None:
        return []
    return [column for item in use.items for column in network.ITEM_COLUMNS[item]]


# --- bulk jobs -----------------------------------------------------------------------------------


def agency_jobs(session: Session, agency_code: str, *, limit: int = 50) -> list[BulkJob]:
    """The agency's bulk jobs, newest first."""
    return list(
        session.scalars(
            select(BulkJob)
            .where(BulkJob.agency_code == agency_code)
            .order_by(BulkJob.created_at.desc())
            .limit(limit)
        )
    )


def job_of_agency(session: Session, job_id: str, agency_code: str) -> BulkJob:
    """The job when it is this agency's; another agency's job is "unknown" (its existence is not told)."""
    try:
        key = uuid.UUID(job_id)
    except ValueError as exc:
        raise NetworkError("job_id", "uuid", "a bulk job id is a UUID") from exc
    job = network.bulk_job(session, key)
    if job is None or job.agency_code != agency_code:
        error = NetworkError("job_id", "unknown_job", "no such bulk job for this agency")
        error.status = 404  # type: ignore[attr-defined]
        raise error
    return job


# --- statistics ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatisticsRow:
    month: str  # YYYY-MM (JST)
    agency_code: str
    use_code: str
    outcome: str
    count: int
    restricted: int  # of which reads of persons under a DV等支援措置


def _month(session: Session) -> ColumnElement[str]:
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("Asia/Tokyo", Provision.provided_at), "YYYY-MM")
    return func.strftime("%Y-%m", Provision.provided_at, "+9 hours")


def _jst_month_start(month: str) -> datetime:
    try:
        year, mon = (int(x) for x in month.split("-"))
        return datetime(year, mon, 1, tzinfo=JST)
    except ValueError as exc:
        raise NetworkError("month", "year_month", "a month is YYYY-MM") from exc


def provision_statistics(
    session: Session,
    *,
    since: str | None = None,
    until: str | None = None,
    agency_code: str | None = None,
) -> list[StatisticsRow]:
    """Provisions counted by JST month, agency, use and outcome (提供状況の統計), months ``since``..``until``.

    Counted in the database (GROUP BY), so a year of provisions is one scan of the log's
    index, not rows brought to Python. No personal data: counts only.
    """
    month = _month(session).label("month")
    query = select(
        month,
        Provision.agency_code,
        Provision.use_code,
        Provision.outcome,
        func.count().label("n"),
        func.sum(cast(Provision.restricted, Integer)).label("r"),
    )
    if since:
        query = query.where(Provision.provided_at >= _jst_month_start(since).astimezone(UTC))
    if until:
        start = _jst_month_start(until)
        end = datetime(start.year + (start.month == 12), start.month % 12 + 1, 1, tzinfo=JST)
        query = query.where(Provision.provided_at < end.astimezone(UTC))
    if agency_code:
        query = query.where(Provision.agency_code == agency_code)
    query = query.group_by(month, Provision.agency_code, Provision.use_code, Provision.outcome).order_by(
        month, Provision.agency_code, Provision.use_code, Provision.outcome
    )
    return [StatisticsRow(m, a, u, o, int(n), int(r or 0)) for m, a, u, o, n, r in session.execute(query)]


# --- disclosure ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DisclosureRequest:
    """Who asks for 提供状況の開示 at the counter, and how they were identified.

    ``requester`` is ``self`` (本人) or ``proxy`` (代理人, whose name and proof — 委任状 or the
    legal representative's document — are recorded in the audit log).
    """

    resident_code: str
    year: int
    requester: Literal["self", "proxy"] = "self"
    identity_document: str = "マイナンバーカード"
    proxy_name: str | None = None
    proxy_document: str | None = None


@dataclass(frozen=True)
class Disclosure:
    request: DisclosureRequest
    person: NationalIdentity
    entries: list[DisclosureEntry]


def current_identity(session: Session, resident_code: str) -> NationalIdentity | None:
    # The plain boolean, not `IS true`: PostgreSQL matches only it to the partial indexes' WHERE is_current.
    return session.scalars(
        select(NationalIdentity).where(
            NationalIdentity.resident_code == resident_code, current_version(NationalIdentity)
        )
    ).one_or_none()


def _short_text(name: str, value: str | None, *, required: bool, max_length: int = 100) -> str | None:
    if value is None or not value.strip():
        if required:
            raise NetworkError(name, "required", f"{name} is required")
        return None
    if len(value) > max_length:
        raise NetworkError(name, "max_length", f"at most {max_length} characters")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise NetworkError(name, "control_characters", "must not contain control characters")
    return value.strip()


def check_disclosure_request(request: DisclosureRequest, *, today: date | None = None) -> DisclosureRequest:
    """The request with its texts trimmed; :class:`NetworkError` names the first bad field."""
    try:
        code = validate_resident_code(request.resident_code)
    except ValueError as exc:
        raise NetworkError(
            "resident_code", getattr(exc, "rule", "invalid"), "not a valid 住民票コード"
        ) from exc
    this_year = (today or datetime.now(JST).date()).year
    if not isinstance(request.year, int) or not 2002 <= request.year <= this_year:
        # 住基ネット began on 2002-08-05: no provision is older.
        raise NetworkError("year", "range", f"a year from 2002 to {this_year}")
    if request.requester not in REQUESTERS:
        raise NetworkError("requester", "enum", "self (本人) or proxy (代理人)")
    document = _short_text("identity_document", request.identity_document, required=True)
    proxy = request.requester == "proxy"
    name = _short_text("proxy_name", request.proxy_name, required=proxy)
    proof = _short_text("proxy_document", request.proxy_document, required=proxy)
    return DisclosureRequest(
        code,
        request.year,
        request.requester,
        document or "",
        name if proxy else None,
        proof if proxy else None,
    )


def disclose(
    session: Session, request: DisclosureRequest, *, clerk: str, municipality_code: str
) -> Disclosure:
    """提供状況の開示 at the counter of ``municipality_code``.

    The clerk has identified the resident (or the proxy and their authority) in person; the
    person must be registered in the clerk's municipality (the national copy's current version),
    else 403 — a clerk elsewhere learns nothing, not even whether the code exists. The request
    (who asked, how identified) is one audit entry; :func:`~kiban.network.service.provisions_about`
    writes the read itself.
    """
    request = check_disclosure_request(request)
    person = current_identity(session, request.resident_code)
    if person is None or person.municipality_code != municipality_code:
        error = NetworkError(
            "resident_code", "own_municipality", "the person is not registered in your municipality"
        )
        error.status = 403  # type: ignore[attr-defined]
        raise error
    detail: dict[str, Any] = {
        "year": request.year,
        "requester": request.requester,
        "identity_document": request.identity_document,
    }
    if request.requester == "proxy":
        detail["proxy_name"] = request.proxy_name
        detail["proxy_document"] = request.proxy_document
    audit.record(
        session,
        actor=clerk,
        role="clerk",
        action="read",
        purpose="提供状況の開示の請求",
        subject=request.resident_code,
        items=["provision_record"],
        organisation=municipality_code,
        detail=detail,
    )
    entries = network.provisions_about(
        session, request.resident_code, request.year, actor=clerk, role="clerk"
    )
    return Disclosure(request, person, entries)
