"""Numbering service (付番): issue 住民票コード, assign and reissue 個人番号.

Every function takes a session and leaves the transaction to the caller (commit or roll back).
Bad input raises :class:`NumberingError` (an :class:`IdentifierError`) before anything is written.
Events and notifications are not made here: the caller emits ``numbering.number_assigned`` /
``numbering.number_reissued`` through the outbox in the same transaction.

A person keeps their 個人番号 when their 住民票コード changes (住民票コード変更): numbers are
stored against the first code of the person's chain (``resident_codes.replaced_by`` links old to
new), and every function here accepts the person's current code.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Protocol

from sqlalchemy import bindparam, func, insert, select, text
from sqlalchemy.orm import InstrumentedAttribute, Session

from kiban.core.database import UTCDateTime, utcnow
from kiban.core.identifiers import (
    FIELD_INDIVIDUAL_NUMBER,
    FIELD_RESIDENT_CODE,
    FixedPointError,
    IdentifierError,
    validate_individual_number,
    validate_resident_code,
)
from kiban.numbering.models import (
    NUMBER_ACTIVE,
    NUMBER_RETIRED,
    RESIDENT_CODE_ISSUED,
    RESIDENT_CODE_RETIRED,
    IndividualNumber,
    ResidentCode,
)

# Rows per IN (...) query and per INSERT batch: well under SQLite's 32,766 bound parameters.
CHUNK = 5_000
REASON_MAX = 200
# A code chain longer than this means corrupt data (a cycle), not a real person.
MAX_CHAIN = 1_000


class NumberingError(IdentifierError):
    """A numbering request broke a rule (``field`` and ``rule`` say which); nothing was written."""

    def __init__(self, field: str, rule: str, message: str, value: str | None = None) -> None:
        super().__init__(field, rule, message, value)


class CodeGenerator(Protocol):
    """Anything that draws 住民票コード, e.g. :class:`kiban.core.identifiers.ResidentCodeGenerator`."""

    def generate(self) -> str: ...


class NumberCipher(Protocol):
    """Anything that maps 住民票コード to 個人番号, e.g. :class:`IndividualNumberCipher`."""

    def number_for(self, resident_code: str, generation: int = 0) -> str: ...


def _chunks(items: Sequence[str], size: int = CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _reason(reason: str) -> str:
    cleaned = reason.strip() if isinstance(reason, str) else ""
    if not cleaned:
        raise NumberingError("reason", "reason_required", "a reason is required")
    if len(cleaned) > REASON_MAX:
        raise NumberingError("reason", "length", f"has {len(cleaned)} characters, at most {REASON_MAX}")
    return cleaned


def _existing(session: Session, column: InstrumentedAttribute[str], values: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(list(values)):
        found.update(session.scalars(select(column).where(column.in_(chunk))))
    return found


# --- 住民票コード -------------------------------------------------------------------------------


def issue_resident_codes(session: Session, count: int, generator: CodeGenerator) -> list[str]:
    """Issue ``count`` new 住民票コード, unique against every code ever issued (retired ones too).

    Candidates are drawn in batches and inserted with ``ON CONFLICT DO NOTHING … RETURNING`` on
    SQLite and PostgreSQL (one statement per 5,000 both checks and inserts); a code that was
    already taken is simply redrawn.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise NumberingError("count", "range", f"must be a non-negative integer, got {count!r}")
    issued: dict[str, None] = {}  # a dict keeps draw order, so seeded demos are reproducible
    now = utcnow()
    while len(issued) < count:
        batch: dict[str, None] = {}
        while len(batch) < min(count - len(issued), CHUNK):
            code = validate_resident_code(generator.generate())
            if code not in issued:
                batch[code] = None
        inserted = _insert_new_codes(session, list(batch), now)
        issued.update((code, None) for code in batch if code in inserted)
    return list(issued)


# One statement both checks and inserts a whole batch, with the codes in one parameter (an array
# or a JSON list): thousands of separate bind parameters cost more to send than the rows.
_INSERT_NEW_CODES = {
    "postgresql": "INSERT INTO resident_codes (code, status, issued_at) "
    "SELECT unnest(CAST(:codes AS varchar[])), :status, :now "
    "ON CONFLICT (code) DO NOTHING RETURNING code",
    # "WHERE true" keeps SQLite from reading ON CONFLICT as part of the SELECT's join.
    "sqlite": "INSERT INTO resident_codes (code, status, issued_at) "
    "SELECT value, :status, :now FROM json_each(:codes) WHERE true "
    "ON CONFLICT (code) DO NOTHING RETURNING code",
}


def _insert_new_codes(session: Session, codes: list[str], now: datetime) -> set[str]:
    """Insert the codes not yet in the table; return the ones inserted."""
    dialect = session.get_bind().dialect.name
    sql = _INSERT_NEW_CODES.get(dialect)
    if sql is not None:
        statement = text(sql).bindparams(bindparam("now", type_=UTCDateTime()))
        packed: object = json.dumps(codes) if dialect == "sqlite" else codes
        return set(session.scalars(statement, {"codes": packed, "status": RESIDENT_CODE_ISSUED, "now": now}))
    taken = _existing(session, ResidentCode.code, codes)
    fresh = [code for code in codes if code not in taken]
    if fresh:
        session.execute(
            insert(ResidentCode),
            [{"code": code, "status": RESIDENT_CODE_ISSUED, "issued_at": now} for code in fresh],
        )
    return set(fresh)


def _issued_code(session: Session, resident_code: str, *, lock: bool = False) -> ResidentCode:
    code = validate_resident_code(resident_code)
    query = select(ResidentCode).where(ResidentCode.code == code)
    if lock:
        query = query.with_for_update()
    row = session.scalars(query).one_or_none()
    if row is None:
        raise NumberingError(
            FIELD_RESIDENT_CODE, "not_issued", "was never issued by the numbering role", code
        )
    if row.status != RESIDENT_CODE_ISSUED:
        raise NumberingError(
            FIELD_RESIDENT_CODE, "retired", f"was retired and replaced by {row.replaced_by}", code
        )
    return row


def reissue_resident_code(session: Session, old_code: str, reason: str, generator: CodeGenerator) -> str:
    """住民票コード変更: issue a new code for the holder of ``old_code`` and retire the old one forever.

    The person's 個人番号 does not change (it follows the chain ``old.replaced_by = new``).
    """
    why = _reason(reason)
    old = _issued_code(session, old_code, lock=True)
    new_code = issue_resident_codes(session, 1, generator)[0]
    old.status = RESIDENT_CODE_RETIRED
    old.retired_at = utcnow()
    old.retired_reason = why
    old.replaced_by = new_code
    session.flush()
    return new_code


def _roots(session: Session, codes: Iterable[str]) -> dict[str, str]:
    """For each current code, the first code of its person's chain (itself when never changed)."""
    root = {code: code for code in codes}
    frontier = set(root.values())
    for _ in range(MAX_CHAIN):
        if not frontier:
            return root
        parent: dict[str, str] = {}
        ordered = sorted(frontier)
        for chunk in _chunks(ordered):
            rows = session.execute(
                select(ResidentCode.code, ResidentCode.replaced_by).where(ResidentCode.replaced_by.in_(chunk))
            )
            parent.update({str(child): str(code) for code, child in rows})
        for code, current in root.items():
            if current in parent:
                root[code] = parent[current]
        frontier = set(parent.values())
    raise NumberingError(FIELD_RESIDENT_CODE, "chain", f"replacement chain longer than {MAX_CHAIN} codes")


# --- 個人番号 -----------------------------------------------------------------------------------


def _free_number(
    session: Session, cipher: NumberCipher, root: str, generation: int, claimed: set[str]
) -> tuple[int, str]:
    """The first generation ≥ ``generation`` whose number is neither a fixed point nor ever used."""
    while True:
        try:
            number = cipher.number_for(root, generation)
        except FixedPointError:
            generation += 1
            continue
        if number not in claimed and session.get(IndividualNumber, number) is None:
            return generation, number
        generation += 1


def _active(session: Session, root: str, *, lock: bool = False) -> IndividualNumber | None:
    query = select(IndividualNumber).where(
        IndividualNumber.resident_code == root, IndividualNumber.status == NUMBER_ACTIVE
    )
    if lock:
        query = query.with_for_update()
    return session.scalars(query).one_or_none()


def _next_generation(session: Session, root: str) -> int:
    highest = session.scalar(
        select(func.max(IndividualNumber.generation)).where(IndividualNumber.resident_code == root)
    )
    return 0 if highest is None else int(highest) + 1


def assign_individual_number(session: Session, resident_code: str, cipher: NumberCipher) -> str:
    """The person's active 個人番号, assigned now if they have none (idempotent)."""
    row = _issued_code(session, resident_code)
    root = _roots(session, [row.code])[row.code]
    existing = _active(session, root)
    if existing is not None:
        return existing.number
    generation, number = _free_number(session, cipher, root, _next_generation(session, root), set())
    session.add(
        IndividualNumber(
            number=number,
            resident_code=root,
            generation=generation,
            status=NUMBER_ACTIVE,
            assigned_at=utcnow(),
        )
    )
    session.flush()
    return number


def assign_individual_numbers_bulk(
    session: Session, codes: Iterable[str], cipher: NumberCipher
) -> dict[str, str]:
    """``{resident_code: 個人番号}`` for every code, assigning numbers where missing (idempotent).

    Every code is checked before anything is written; the keys are the normalised codes.
    """
    wanted = list(dict.fromkeys(validate_resident_code(code) for code in codes))
    status: dict[str, str] = {}
    for chunk in _chunks(wanted):
        status.update(
            {
                str(c): str(s)
                for c, s in session.execute(
                    select(ResidentCode.code, ResidentCode.status).where(ResidentCode.code.in_(chunk))
                )
            }
        )
    for code in wanted:
        if code not in status:
            raise NumberingError(
                FIELD_RESIDENT_CODE, "not_issued", "was never issued by the numbering role", code
            )
        if status[code] != RESIDENT_CODE_ISSUED:
            raise NumberingError(FIELD_RESIDENT_CODE, "retired", "was retired", code)
    roots = _roots(session, wanted)
    unique_roots = sorted(set(roots.values()))
    number_of: dict[str, str] = {}
    next_generation: dict[str, int] = {}
    for chunk in _chunks(unique_roots):
        rows = session.execute(
            select(
                IndividualNumber.resident_code,
                IndividualNumber.number,
                IndividualNumber.status,
                IndividualNumber.generation,
            ).where(IndividualNumber.resident_code.in_(chunk))
        )
        for root, number, state, generation in rows:
            if state == NUMBER_ACTIVE:
                number_of[root] = number
            next_generation[root] = max(next_generation.get(root, 0), generation + 1)
    missing = [root for root in unique_roots if root not in number_of]
    generation_of = {root: next_generation.get(root, 0) for root in missing}
    claimed: set[str] = set()
    pending = missing
    while pending:
        candidates: dict[str, str] = {}
        retry: list[str] = []
        for root in pending:
            try:
                candidates[root] = cipher.number_for(root, generation_of[root])
            except FixedPointError:
                generation_of[root] += 1
                retry.append(root)
        taken = _existing(session, IndividualNumber.number, candidates.values())
        for root, number in candidates.items():
            if number in taken or number in claimed:
                generation_of[root] += 1
                retry.append(root)
            else:
                claimed.add(number)
                number_of[root] = number
        pending = retry
    now = utcnow()
    new_rows = [
        {
            "number": number_of[root],
            "resident_code": root,
            "generation": generation_of[root],
            "status": NUMBER_ACTIVE,
            "assigned_at": now,
        }
        for root in missing
    ]
    for start in range(0, len(new_rows), CHUNK):
        session.execute(insert(IndividualNumber), new_rows[start : start + CHUNK])
    return {code: number_of[roots[code]] for code in wanted}


def reissue_individual_number(session: Session, resident_code: str, cipher: NumberCipher, reason: str) -> str:
    """Reissue after a leak: a new 個人番号 (next generation), the old one retired forever."""
    why = _reason(reason)
    row = _issued_code(session, resident_code)
    root = _roots(session, [row.code])[row.code]
    current = _active(session, root, lock=True)
    if current is None:
        raise NumberingError(FIELD_RESIDENT_CODE, "no_number", "has no 個人番号 to reissue", row.code)
    start = _next_generation(session, root)
    current.status = NUMBER_RETIRED
    current.retired_at = utcnow()
    current.retired_reason = why
    session.flush()  # the partial unique index allows one active number per person
    generation, number = _free_number(session, cipher, root, start, set())
    session.add(
        IndividualNumber(
            number=number,
            resident_code=root,
            generation=generation,
            status=NUMBER_ACTIVE,
            assigned_at=utcnow(),
        )
    )
    session.flush()
    return number


# --- look-ups ----------------------------------------------------------------------------------


def active_number(session: Session, resident_code: str) -> str | None:
    """The person's active 個人番号 (``resident_code`` is their current code), or None."""
    row = _issued_code(session, resident_code)
    root = _roots(session, [row.code])[row.code]
    found = _active(session, root)
    return found.number if found is not None else None


def number_history(session: Session, resident_code: str) -> list[IndividualNumber]:
    """Every 個人番号 the person has had, oldest first (retired ones included)."""
    code = validate_resident_code(resident_code)
    root = _roots(session, [code])[code]
    return list(
        session.scalars(
            select(IndividualNumber)
            .where(IndividualNumber.resident_code == root)
            .order_by(IndividualNumber.generation)
        )
    )


def current_resident_code(session: Session, number: str) -> str | None:
    """The current 住民票コード of the holder of ``number`` (active or retired), or None if unknown."""
    digits = validate_individual_number(number)
    row = session.get(IndividualNumber, digits)
    if row is None:
        return None
    code = row.resident_code
    for _ in range(MAX_CHAIN):
        successor = session.scalar(select(ResidentCode.replaced_by).where(ResidentCode.code == code))
        if successor is None:
            return code
        code = successor
    raise NumberingError(FIELD_INDIVIDUAL_NUMBER, "chain", f"replacement chain longer than {MAX_CHAIN} codes")
