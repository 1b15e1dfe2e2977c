"""Bulk application intake (申請受付の一括処理): employer bulk files and the daily paper/online load.

The same rules as :func:`kiban.cards.service.apply`, applied to many lines at once with a few
set-based queries per chunk instead of several per line: each line is accepted or refused on its
own (the refusal names the line, field and rule), accepted lines are written by COPY on
PostgreSQL (the driver's executemany on SQLite), and one audit entry per accepted application is
appended with :func:`kiban.core.audit.record_batch`. The residents' status comes from the
register's bulk reader, :func:`kiban.register.service.statuses`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ARRAY, ColumnElement, String, Table, any_, bindparam, func, insert, select
from sqlalchemy import column as column_
from sqlalchemy.orm import InstrumentedAttribute, Session

from kiban.cards import states
from kiban.cards.models import ApplicationForm, Card, Transition
from kiban.cards.service import (
    CHANNELS,
    ITEMS,
    PURPOSE,
    Actor,
    Application,
    aware_now,
    new_card_ids,
    today_jst,
)
from kiban.core import audit
from kiban.register import service as register

CHUNK = 5_000


@dataclass(frozen=True)
class LineError:
    line: int  # 0-based index in the submitted list
    field: str
    rule: str


@dataclass
class IntakeResult:
    accepted: list[str] = field(default_factory=list)  # card ids, in line order
    refused: list[LineError] = field(default_factory=list)


def apply_many(
    session: Session, actor: Actor, applications: Sequence[Application], *, now: datetime | None = None
) -> IntakeResult:
    """Take in many applications; each line accepted or refused alone. Express (特急) is a counter
    matter and is refused in bulk."""
    moment = aware_now(now)
    today = today_jst(moment)
    result = IntakeResult()
    # The audit entries of one run share their detail (the run's id), which the audit log checks
    # once per call; the card of an entry is found by its subject and the run in cards_transitions.
    run_id = str(uuid.uuid4())
    for start in range(0, len(applications), CHUNK):
        _chunk(session, actor, applications[start : start + CHUNK], start, moment, today, result, run_id)
    result.refused.sort(key=lambda e: e.line)
    return result


def _chunk(
    session: Session,
    actor: Actor,
    lines: Sequence[Application],
    offset: int,
    moment: datetime,
    today: Any,
    result: IntakeResult,
    run_id: str,
) -> None:
    candidates: list[tuple[int, Application]] = []
    for i, app in enumerate(lines, start=offset):
        aid = app.application_id
        if not isinstance(aid, str) or len(aid) != 23 or not aid.isdigit():
            result.refused.append(LineError(i, "application_id", "format"))
        elif app.channel not in CHANNELS:
            result.refused.append(LineError(i, "channel", "channel"))
        elif app.channel == "bulk" and not (app.employer or "").strip():
            result.refused.append(LineError(i, "employer", "required"))
        elif app.express_reason is not None:
            result.refused.append(LineError(i, "express_reason", "express_not_in_bulk"))
        else:
            candidates.append((i, app))
    if not candidates:
        return
    ids = [app.application_id for _, app in candidates]
    forms = {
        f.application_id: f
        for f in session.execute(
            select(
                ApplicationForm.application_id,
                ApplicationForm.resident_code,
                ApplicationForm.municipality_code,
            ).where(_among(session, ApplicationForm.application_id, ids))
        )
    }
    used = set(session.scalars(select(Card.application_id).where(_among(session, Card.application_id, ids))))
    codes = list({f.resident_code for f in forms.values()})
    # The register's own bulk reader (a capability never reads another's tables).
    standing = register.statuses(session, codes)
    pending = set(
        session.scalars(
            select(Card.resident_code).where(
                _among(session, Card.resident_code, codes),
                Card.state.in_(states.BEFORE_ISSUE - {states.DEFECTIVE}),
            )
        )
    )
    fresh_ids = new_card_ids(len(candidates))
    cards: list[dict[str, Any]] = []
    transitions: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    seen_forms: set[str] = set()
    for i, app in candidates:
        form = forms.get(app.application_id)
        if form is None:
            result.refused.append(LineError(i, "application_id", "unknown_application_id"))
            continue
        if app.application_id in used or app.application_id in seen_forms:
            result.refused.append(LineError(i, "application_id", "already_used"))
            continue
        if form.resident_code in pending:
            result.refused.append(LineError(i, "application_id", "pending_application"))
            continue
        person = standing.get(form.resident_code)
        record = person.in_municipality(form.municipality_code) if person is not None else None
        if record is None:
            result.refused.append(LineError(i, "application_id", "not_found"))
            continue
        if record.status != "active":
            rule = {
                "死亡": "resident_dead",
                "転出": "resident_moved_out",
                "国外転出": "resident_moved_out",
            }.get(record.removed_reason or "", "not_resident")
            result.refused.append(LineError(i, "application_id", rule))
            continue
        seen_forms.add(app.application_id)
        pending.add(form.resident_code)
        card_id = fresh_ids.pop()
        cards.append(
            {
                "card_id": card_id,
                "application_id": app.application_id,
                "resident_code": form.resident_code,
                "municipality_code": form.municipality_code,
                "channel": app.channel,
                "employer": (app.employer or None) if app.channel == "bulk" else None,
                "state": states.APPLIED,
                "state_since": moment,
                "applied_on": today,
                "defect_code": None,
                "express": False,
                "express_reason": None,
                "express_due": None,
                "overseas": False,
                "version": 1,
                "created_at": moment,
                "updated_at": moment,
            }
        )
        transitions.append(
            {
                "card_id": card_id,
                "from_state": None,
                "to_state": states.APPLIED,
                "at": moment,
                "actor": actor.username[:64],
                "reason": f"{app.channel} intake {run_id}",
                "request_id": None,
            }
        )
        entries.append(
            {
                "actor": actor.username,
                "role": actor.role,
                "action": "create",
                "purpose": PURPOSE,
                "subject": form.resident_code,
                "items": ITEMS,
                "organisation": actor.municipality_code,
                "detail": {"intake": run_id, "to": states.APPLIED, "channel": app.channel},
            }
        )
        result.accepted.append(card_id)
    if not cards:
        return
    _write(session, cast(Table, Card.__table__), cards)
    _write(session, cast(Table, Transition.__table__), transitions)
    audit.record_batch(session, entries)


def _among(session: Session, column: InstrumentedAttribute[str], values: list[str]) -> ColumnElement[bool]:
    """``column`` in ``values`` with one parameter: ``= ANY(array)`` on PostgreSQL, ``IN (SELECT value
    FROM json_each(…))`` on SQLite (an ``IN`` list of 5,000 placeholders cost more to render and
    parse than the look-up itself)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return column == any_(bindparam(None, values, type_=ARRAY(String)))
    if dialect == "sqlite":
        listed = select(column_("value", String)).select_from(
            func.json_each(bindparam(None, json.dumps(values), type_=String))
        )
        return column.in_(listed.scalar_subquery())
    return column.in_(values)


def _write(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """The chunk's new rows in the session's transaction: COPY on PostgreSQL (one stream instead of
    an INSERT per row), Core executemany elsewhere; no ORM objects either way."""
    connection = session.connection()
    dialect = connection.dialect
    driver = connection.connection.driver_connection
    assert driver is not None
    columns = list(rows[0])
    if dialect.name == "sqlite":
        # The driver's executemany with each column's own bind processor (what Core does per row,
        # without building a parameter dict per row): same stored text for dates and times.
        procs = [table.c[c].type.bind_processor(dialect) for c in columns]
        values = [
            tuple(
                v if p is None or v is None else p(v)
                for p, v in zip(procs, (row[c] for c in columns), strict=True)
            )
            for row in rows
        ]
        marks = ", ".join("?" * len(columns))
        driver.executemany(f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({marks})", values)
        return
    if dialect.name != "postgresql":
        connection.execute(insert(table), rows)
        return
    with (
        driver.cursor() as cursor,
        cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row([row[c] for c in columns])
