"""Tax data service (課税情報): record and read a resident's inhabitant-tax assessment per year.

No tax calculation engine (SPEC K1): the figures come from the tax system as they are, checked
only for what any assessment must satisfy. A second record for the same resident and fiscal
year is a correction (更正): a new version, the old one kept. Reads and writes are audited.
:func:`synthetic_assessments` makes plausible figures for the demo.
"""

from __future__ import annotations

import math
import random
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Protocol, cast
from zoneinfo import ZoneInfo

from sqlalchemy import Table, case, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kiban.core import audit
from kiban.core.database import utcnow
from kiban.core.identifiers import IdentifierError, validate_resident_code
from kiban.register.models import Resident, ResidentStatus
from kiban.register.rules import RegisterError, StaffMember
from kiban.register.taxes.models import TaxAssessment

JST = ZoneInfo("Asia/Tokyo")
# 個人住民税 under the 地方税法 of 1950; nothing earlier is kept by any municipal system.
FIRST_FISCAL_YEAR = 1950
# Sanity bound per amount: a trillion yen (no individual's income comes near it).
MAX_YEN = 10**12
NOTES_MAX = 200
_CHUNK = 2_000  # rows per IN (...) and per INSERT: far below SQLite's bound parameters
SYSTEM_ACTOR = "kiban.register"

_ITEMS = ["income_total", "taxable_income", "tax_amount"]
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class TaxError(RegisterError):
    """A tax record broke a rule: ``field`` which input, ``rule`` a stable id, ``message`` why.

    Nothing was written.
    """


Actor = StaffMember


class PersonLike(Protocol):
    """What the synthetic generator needs of a resident (a ``Resident`` row fits)."""

    @property
    def resident_code(self) -> str: ...

    @property
    def birth_date(self) -> date: ...


@dataclass(frozen=True)
class AssessmentInput:
    """The arguments of one :func:`record_tax_assessment` call (as made by the generator)."""

    resident_code: str
    fiscal_year: int
    taxable_income: int
    income_total: int
    tax_amount: int
    notes: str | None = None


_ACTIVE_FIRST = case((Resident.status == ResidentStatus.ACTIVE.value, 0), else_=1)


def current_fiscal_year(today: date | None = None) -> int:
    """年度 of ``today`` (Japan): April to March."""
    day = today or datetime.now(JST).date()
    return day.year if day.month >= 4 else day.year - 1


def _yen(value: int, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TaxError(field, "integer", "must be a whole number of yen")
    if value < 0:
        raise TaxError(field, "non_negative", "must not be negative")
    if value > MAX_YEN:
        raise TaxError(field, "too_large", f"must be at most {MAX_YEN} yen")
    return value


def _fiscal_year(value: int, today: date | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TaxError("fiscal_year", "integer", "must be a year such as 2025")
    latest = current_fiscal_year(today) + 1
    if not FIRST_FISCAL_YEAR <= value <= latest:
        raise TaxError(
            "fiscal_year", "range", f"must be between {FIRST_FISCAL_YEAR} and {latest} (next fiscal year)"
        )
    return value


def _notes(value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TaxError("notes", "type", "must be text")
    cleaned = value.strip()
    if len(cleaned) > NOTES_MAX:
        raise TaxError("notes", "length", f"has {len(cleaned)} characters, at most {NOTES_MAX}")
    if _CONTROL.search(cleaned):
        raise TaxError("notes", "control_characters", "must not contain control characters")
    return cleaned or None


def _code(resident_code: str) -> str:
    try:
        return validate_resident_code(resident_code)
    except IdentifierError as exc:
        raise TaxError("resident_code", exc.rule, exc.detail) from exc


def _clerk_municipality(actor: Actor) -> str:
    if actor.role != "clerk" or not actor.municipality_code:
        raise TaxError("actor", "role", "only a municipal clerk (市区町村職員) handles tax data")
    return actor.municipality_code


def _not_here(municipality: str, field: str = "resident_code") -> TaxError:
    # Same answer whether the code exists elsewhere or nowhere: no leak across municipalities.
    return TaxError(
        field, "not_in_municipality", f"no resident of municipality {municipality} has this 住民票コード"
    )


def _resident_of(session: Session, actor: Actor, resident_code: str) -> Resident:
    municipality = _clerk_municipality(actor)
    code = _code(resident_code)
    # A person who left and came back has a 除票 and an active record under the same code here.
    resident = session.scalars(
        select(Resident)
        .where(Resident.resident_code == code, Resident.municipality_code == municipality)
        .order_by(_ACTIVE_FIRST, Resident.created_at.desc())
        .limit(1)
    ).first()
    if resident is None:
        raise _not_here(municipality)
    return resident


def _figures(
    fiscal_year: int,
    taxable_income: int,
    income_total: int,
    tax_amount: int,
    notes: str | None,
    today: date | None,
) -> tuple[int, int, int, int, str | None]:
    year = _fiscal_year(fiscal_year, today)
    total = _yen(income_total, "income_total")
    taxable = _yen(taxable_income, "taxable_income")
    tax = _yen(tax_amount, "tax_amount")
    text = _notes(notes)
    if taxable > total:
        raise TaxError(
            "taxable_income", "exceeds_income_total", "the 課税標準額 cannot exceed the total income"
        )
    if tax > total:
        raise TaxError("tax_amount", "exceeds_income", "the tax cannot exceed the total income")
    return year, taxable, total, tax, text


def _born_by(resident: Resident, year: int, field: str = "fiscal_year") -> None:
    # 賦課期日 is 1 January of the fiscal year: no one is assessed for a year they were not yet alive.
    if resident.birth_date > date(year, 1, 1):
        raise TaxError(field, "before_birth", "the person was not born on 1 January of that year")


def record_tax_assessment(
    session: Session,
    actor: Actor,
    resident_code: str,
    fiscal_year: int,
    taxable_income: int,
    income_total: int,
    tax_amount: int,
    notes: str | None = None,
    *,
    today: date | None = None,
) -> TaxAssessment:
    """Record (or correct, as a new version) one resident's assessment for ``fiscal_year``.

    Amounts are whole yen: ``income_total`` 総所得金額等, ``taxable_income`` 課税標準額 (at most the
    total), ``tax_amount`` 市町村民税 + 道府県民税 (at most the total income: the 均等割 can exceed a
    small taxable income, never the income). The record may be a 除票: a person taxed here on
    1 January stays assessable here after leaving.
    """
    resident = _resident_of(session, actor, resident_code)
    year, taxable, total, tax, text = _figures(
        fiscal_year, taxable_income, income_total, tax_amount, notes, today
    )
    _born_by(resident, year)
    previous = session.scalar(
        select(func.max(TaxAssessment.version)).where(
            TaxAssessment.resident_id == resident.id, TaxAssessment.fiscal_year == year
        )
    )
    row = TaxAssessment(
        municipality_code=resident.municipality_code,
        resident_id=resident.id,
        resident_code=resident.resident_code,
        fiscal_year=year,
        version=(previous or 0) + 1,
        income_total=total,
        taxable_income=taxable,
        tax_amount=tax,
        notes=text,
        recorded_at=utcnow(),
        recorded_by=actor.username,
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError as exc:
        # Another clerk recorded the same version first; the caller's transaction must roll back.
        raise TaxError(
            "fiscal_year", "conflict", "another correction of this year was recorded meanwhile"
        ) from exc
    audit.record(
        session,
        actor=actor.username,
        role=actor.role,
        organisation=resident.municipality_code,
        action="create" if row.version == 1 else "update",
        purpose="個人住民税の課税情報の登録" if row.version == 1 else "個人住民税の課税情報の更正",
        subject=resident.resident_code,
        items=_ITEMS,
        detail={"fiscal_year": year, "version": row.version},
    )
    return row


def record_tax_assessments(
    session: Session, actor: Actor, items: Iterable[AssessmentInput], *, today: date | None = None
) -> int:
    """Record many assessments at once (the yearly load from the tax system; the demo).

    The same rules as :func:`record_tax_assessment`, all checked before anything is written: one
    bad item refuses the whole batch, its error naming ``items[i].field``. Two items for the same
    person and year become two versions, in order. One INSERT per chunk and one batch of audit
    entries. Returns the number of rows written.
    """
    municipality = _clerk_municipality(actor)
    prepared: list[tuple[str, tuple[int, int, int, int, str | None]]] = []
    for i, item in enumerate(items):
        try:
            if not isinstance(item, AssessmentInput):
                raise TaxError("item", "type", "must be an AssessmentInput")
            code = _code(item.resident_code)
            figures = _figures(
                item.fiscal_year, item.taxable_income, item.income_total, item.tax_amount, item.notes, today
            )
        except TaxError as exc:
            raise TaxError(f"items[{i}].{exc.field}", exc.rule, exc.message) from exc
        prepared.append((code, figures))
    codes = sorted({code for code, _ in prepared})
    residents: dict[str, Resident] = {}
    for start in range(0, len(codes), _CHUNK):
        chunk = codes[start : start + _CHUNK]
        query = select(Resident).where(
            Resident.resident_code.in_(chunk), Resident.municipality_code == municipality
        )
        residents.update((r.resident_code, r) for r in session.scalars(query))
    versions: dict[tuple[uuid.UUID, int], int] = {}
    ids = sorted({r.id for r in residents.values()})
    for start in range(0, len(ids), _CHUNK):
        tops = (
            select(TaxAssessment.resident_id, TaxAssessment.fiscal_year, func.max(TaxAssessment.version))
            .where(TaxAssessment.resident_id.in_(ids[start : start + _CHUNK]))
            .group_by(TaxAssessment.resident_id, TaxAssessment.fiscal_year)
        )
        versions.update(((rid, year), int(top)) for rid, year, top in session.execute(tops))
    rows: list[dict[str, object]] = []
    entries: list[dict[str, object]] = []
    now = utcnow()
    for i, (code, (year, taxable, total, tax, text)) in enumerate(prepared):
        resident = residents.get(code)
        if resident is None:
            raise _not_here(municipality, f"items[{i}].resident_code")
        _born_by(resident, year, f"items[{i}].fiscal_year")
        version = versions.get((resident.id, year), 0) + 1
        versions[(resident.id, year)] = version
        rows.append(
            {
                "id": uuid.uuid4(),
                "municipality_code": municipality,
                "resident_id": resident.id,
                "resident_code": code,
                "fiscal_year": year,
                "version": version,
                "income_total": total,
                "taxable_income": taxable,
                "tax_amount": tax,
                "notes": text,
                "recorded_at": now,
                "recorded_by": actor.username,
            }
        )
        entries.append(
            {
                "actor": actor.username,
                "role": actor.role,
                "organisation": municipality,
                "action": "create" if version == 1 else "update",
                "purpose": "個人住民税の課税情報の登録" if version == 1 else "個人住民税の課税情報の更正",
                "subject": code,
                "items": _ITEMS,
                "detail": {"fiscal_year": year, "version": version},
            }
        )
    table = cast(Table, TaxAssessment.__table__)
    for start in range(0, len(rows), _CHUNK):
        try:
            session.execute(insert(table), rows[start : start + _CHUNK])
        except IntegrityError as exc:
            raise TaxError(
                "items", "conflict", "another clerk recorded assessments of these people meanwhile"
            ) from exc
    audit.record_many(session, entries)
    return len(rows)


def _reader(session: Session, actor: Actor | None, resident_code: str) -> tuple[Resident | None, str]:
    if actor is not None:
        resident = _resident_of(session, actor, resident_code)
        return resident, resident.resident_code
    code = _code(resident_code)
    # After a 転入 the code has a 除票 at the old municipality and an active record at the new one.
    query = select(Resident).where(Resident.resident_code == code)
    return session.scalars(query.order_by(_ACTIVE_FIRST, Resident.created_at.desc()).limit(1)).first(), code


def _audit_read(
    session: Session,
    actor: Actor | None,
    subject: str,
    organisation: str | None,
    purpose: str,
    year: int | None,
) -> None:
    audit.audited_read(
        session,
        actor=actor.username if actor is not None else SYSTEM_ACTOR,
        role=actor.role if actor is not None else "system",
        organisation=organisation,
        purpose=purpose,
        subject=subject,
        items=_ITEMS,
        detail={"fiscal_year": year} if year is not None else {},
    )


def tax_assessment(
    session: Session,
    resident_code: str,
    fiscal_year: int,
    *,
    actor: Actor | None = None,
    purpose: str = "所得・課税証明書の交付",
) -> TaxAssessment | None:
    """The current (newest) version of the person's assessment for ``fiscal_year``, or None; audited.

    With a clerk ``actor`` only their municipality's residents are found; without one the read is
    the system's (the kiosk route), logged as such.
    """
    if isinstance(fiscal_year, bool) or not isinstance(fiscal_year, int):
        raise TaxError("fiscal_year", "integer", "must be a year such as 2025")
    resident, code = _reader(session, actor, resident_code)
    row = None
    if resident is not None:
        row = session.scalars(
            select(TaxAssessment)
            .where(TaxAssessment.resident_id == resident.id, TaxAssessment.fiscal_year == fiscal_year)
            .order_by(TaxAssessment.version.desc())
            .limit(1)
        ).first()
    organisation = resident.municipality_code if resident is not None else None
    _audit_read(session, actor, code, organisation, purpose, fiscal_year)
    return row


def tax_history(
    session: Session,
    resident_code: str,
    *,
    actor: Actor | None = None,
    purpose: str = "課税情報の閲覧",
) -> list[TaxAssessment]:
    """Every version of every year of the person's assessments (year, then version); audited."""
    resident, code = _reader(session, actor, resident_code)
    rows: list[TaxAssessment] = []
    if resident is not None:
        rows = list(
            session.scalars(
                select(TaxAssessment)
                .where(TaxAssessment.resident_id == resident.id)
                .order_by(TaxAssessment.fiscal_year, TaxAssessment.version)
            )
        )
    organisation = resident.municipality_code if resident is not None else None
    _audit_read(session, actor, code, organisation, purpose, None)
    return rows


# --- synthetic data (demo) ----------------------------------------------------------------------

# Median 総所得金額 of earners by age (yen), shaped on the 民間給与実態統計調査 after the
# 給与所得控除; pensioners' income after the 公的年金等控除.
_MEDIAN_BY_AGE: tuple[tuple[int, int], ...] = (
    (20, 600_000),
    (25, 2_300_000),
    (30, 2_900_000),
    (40, 3_300_000),
    (50, 3_600_000),
    (60, 2_600_000),
    (65, 1_100_000),
    (200, 900_000),
)
# Share of people with no income at all (students, homemakers, the unemployed), by age.
_NO_INCOME_BY_AGE: tuple[tuple[int, float], ...] = (
    (16, 1.0),
    (20, 0.75),
    (25, 0.25),
    (65, 0.22),
    (200, 0.3),
)
BASIC_DEDUCTION = 430_000  # 住民税の基礎控除
PER_CAPITA_LEVY = 5_000  # 均等割 (市町村 3,000 + 道府県 1,000 + 森林環境税 1,000)
PER_CAPITA_THRESHOLD = 450_000  # 非課税限度額 of a single person (simplified)
INCOME_RATE = 0.10  # 所得割: 市町村民税 6% + 道府県民税 4%


def _lookup(table: tuple[tuple[int, float], ...] | tuple[tuple[int, int], ...], age: int) -> float:
    for bound, value in table:
        if age < bound:
            return value
    return table[-1][1]


def synthetic_assessments(
    residents: Iterable[PersonLike], fiscal_year: int, seed: int
) -> list[AssessmentInput]:
    """Plausible assessments for ``fiscal_year`` (income of the year before), one per person.

    Deterministic: each person's figures depend only on ``seed``, the year and their 住民票コード,
    so the result does not change with the order of ``residents``. Children (under 16 at the end
    of the income year, 扶養 age) have no income and no tax. Figures follow the real shape: taxable
    income = income − social insurance (≈ 14%) − basic deduction, rounded down to 1,000 yen;
    tax = 10% of it rounded down to 100 yen, plus the 5,000 yen 均等割 above the exemption line.
    """
    income_year_end = date(fiscal_year - 1, 12, 31)
    out: list[AssessmentInput] = []
    for person in residents:
        rng = random.Random(f"kiban-tax:{seed}:{fiscal_year}:{person.resident_code}")
        born = person.birth_date
        if born > income_year_end:
            continue  # not born in the income year: no assessment at all
        age = income_year_end.year - born.year  # age on 31 December of the income year
        total = 0
        if rng.random() >= _lookup(_NO_INCOME_BY_AGE, age):
            median = _lookup(_MEDIAN_BY_AGE, age)
            total = int(median * math.exp(rng.gauss(0.0, 0.55)))
            total = min(total, 200_000_000)
        social_insurance = int(total * 0.14) if 20 <= age < 75 else int(total * 0.05)
        taxable = max(0, total - social_insurance - BASIC_DEDUCTION) // 1000 * 1000
        tax = int(taxable * INCOME_RATE) // 100 * 100
        if total > PER_CAPITA_THRESHOLD:
            tax += PER_CAPITA_LEVY
        tax = min(tax, total)
        out.append(
            AssessmentInput(
                resident_code=person.resident_code,
                fiscal_year=fiscal_year,
                taxable_income=taxable,
                income_total=total,
                tax_amount=tax,
                notes="合成データ (synthetic)",
            )
        )
    return out
