"""The bulk path (``apply_batch``, 一括異動) writes exactly what the single-event path writes.

Same commands, same starting register: the records, households, history rows (異動履歴), outbox
events and audit entries come out the same, field by field and in the same order; only ids,
group ids and timestamps differ. Each side runs in a transaction that is rolled back, so every
hypothesis example starts from the same register.
"""

from __future__ import annotations

import random
from datetime import date, timedelta
from typing import Any, TypeAlias

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from kiban.core import audit
from kiban.core.audit import AuditEntry
from kiban.core.identifiers import ResidentCodeGenerator
from kiban.core.models.events import OutboxEvent
from kiban.numbering import service as numbering
from kiban.register import service
from kiban.register.loader import load_population
from kiban.register.models import ChangeRecord, Household, Resident
from kiban.register.population import generate_population
from kiban.register.rules import ConflictError
from kiban.register.schemas import Actor, Address, NameChange, Relocation, Target

TODAY = date(2026, 11, 25)
A = "131016"  # 千代田区
B = "131041"  # 新宿区
CLERK = Actor(username="clerk-a", municipality_code=A)
FAMILY = [("一括", "イッカツ"), ("渡\U000e0100辺", "ワタナベ"), ("髙橋", "タカハシ")]
GIVEN = [("花子", "ハナコ"), ("太郎", "タロウ")]
TOWNS = ["神田錦町", "丸の内", "永田町"]

Command: TypeAlias = NameChange | Relocation


@pytest.fixture
def households(engine: Engine, session_maker: sessionmaker[Session]) -> list[list[str]]:
    """40 residents in 千代田区 and 新宿区; 千代田区's households as lists of 住民票コード."""
    population = list(generate_population([A, B], 40, seed=5, as_of=date(2025, 4, 1)))
    with session_maker.begin() as s:
        codes = numbering.issue_resident_codes(s, 40, ResidentCodeGenerator(random.Random(5)))
    load_population(engine, population, iter(codes))
    out: dict[Any, list[str]] = {}
    with session_maker() as s:
        for hid, code in s.execute(
            select(Resident.household_id, Resident.resident_code)
            .where(Resident.municipality_code == A)
            .order_by(Resident.resident_code)
        ):
            out.setdefault(hid, []).append(code)
    return list(out.values())


def _marks(s: Session) -> tuple[int, int, int]:
    return (
        s.scalar(select(func.coalesce(func.max(ChangeRecord.seq), 0))) or 0,
        s.scalar(select(func.coalesce(func.max(OutboxEvent.seq), 0))) or 0,
        s.scalar(select(func.coalesce(func.max(AuditEntry.seq), 0))) or 0,
    )


def _written(s: Session, marks: tuple[int, int, int]) -> dict[str, Any]:
    """Everything a run wrote, without ids, group ids and timestamps (groups by their order)."""
    s.expire_all()
    groups: dict[Any, int] = {}
    history = [
        (
            groups.setdefault(r.group_id, len(groups)),
            r.kind,
            r.municipality_code,
            r.resident_id,
            r.resident_code,
            r.household_id,
            r.notified_on,
            r.effective_on,
            r.actor,
            r.reason,
            list(r.before.items()),  # in the order of ITEMS, as the single path writes them
            list(r.after.items()),
            r.resident_version,
        )
        for r in s.scalars(select(ChangeRecord).where(ChangeRecord.seq > marks[0]).order_by(ChangeRecord.seq))
    ]
    events = [
        (e.type, e.key, e.schema_version, e.payload, e.source)
        for e in s.scalars(select(OutboxEvent).where(OutboxEvent.seq > marks[1]).order_by(OutboxEvent.seq))
    ]
    entries = [
        (e.actor, e.role, e.action, e.purpose, e.subject, e.items, e.organisation, e.detail, e.flags)
        for e in s.scalars(select(AuditEntry).where(AuditEntry.seq > marks[2]).order_by(AuditEntry.seq))
    ]
    records = sorted(
        (r.id, r.version, r.name_search_key, r.kana_search_key, service.snapshot(r))
        for r in s.scalars(select(Resident).where(Resident.municipality_code == A))
    )
    homes = sorted(
        (h.id, h.version, h.postal_code, h.prefecture, h.municipality, h.town, h.banchi, h.katagaki)
        for h in s.scalars(select(Household).where(Household.municipality_code == A))
    )
    return {"history": history, "events": events, "audit": entries, "records": records, "households": homes}


def _single(s: Session, commands: list[Command]) -> None:
    for command in commands:
        if isinstance(command, NameChange):
            service.name_change(s, CLERK, command, today=TODAY)
        else:
            service.relocation(s, CLERK, command, today=TODAY)


def _both(session_maker: sessionmaker[Session], commands: list[Command]) -> tuple[dict[str, Any], ...]:
    out = []
    for bulk in (False, True):
        with session_maker() as s:
            marks = _marks(s)
            if bulk:
                service.apply_batch(s, CLERK, commands, today=TODAY)
            else:
                _single(s, commands)
            s.flush()
            out.append(_written(s, marks))
            report = audit.verify(s)
            assert report.ok, report.summary()
            s.rollback()
    return tuple(out)


@st.composite
def commands(draw: st.DrawFn, households: list[list[str]]) -> list[Command]:
    out: list[Command] = []
    for _ in range(draw(st.integers(1, 7))):
        notified = TODAY - timedelta(days=draw(st.integers(0, 40)))
        dates: dict[str, Any] = {
            "notified_on": notified,
            "effective_on": notified - timedelta(days=draw(st.integers(0, 14))),
            "reason": draw(st.sampled_from([None, "婚姻", "離婚"])),
        }
        members = draw(st.sampled_from(households))
        if draw(st.booleans()):
            family = draw(st.sampled_from([None, *FAMILY]))
            # Something to change (the schema refuses an empty 氏名変更).
            given_ = draw(st.sampled_from(GIVEN if family is None else [None, *GIVEN]))
            out.append(
                NameChange(
                    **dates,
                    target=Target(resident_code=draw(st.sampled_from(members))),
                    family_name=family[0] if family else None,
                    family_name_kana=family[1] if family else None,
                    given_name=given_[0] if given_ else None,
                    given_name_kana=given_[1] if given_ else None,
                    keep_old_family_name=draw(st.booleans()),
                )
            )
        else:
            out.append(
                Relocation(
                    **dates,
                    targets=[Target(resident_code=code) for code in members],
                    address=Address(
                        town=draw(st.sampled_from(TOWNS)),
                        banchi=draw(st.sampled_from(["1-1", "2-3"])),
                        katagaki=draw(st.sampled_from([None, "キバンハイツ101"])),
                        postal_code=draw(st.sampled_from([None, "1010054"])),
                    ),
                )
            )
    return out


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_bulk_writes_exactly_what_the_single_path_writes(
    households: list[list[str]], session_maker: sessionmaker[Session], data: st.DataObject
) -> None:
    batch = data.draw(commands(households))
    single, bulk = _both(session_maker, batch)
    assert bulk["history"] == single["history"]
    assert bulk["events"] == single["events"]
    assert bulk["audit"] == single["audit"]
    assert bulk["records"] == single["records"]
    assert bulk["households"] == single["households"]


def test_a_household_moving_twice_and_back_counts_its_versions_as_the_single_path(
    households: list[list[str]], session_maker: sessionmaker[Session]
) -> None:
    members = max(households, key=len)
    when: dict[str, Any] = {"notified_on": TODAY, "effective_on": TODAY}

    def move(town: str) -> Relocation:
        return Relocation(
            **when,
            targets=[Target(resident_code=c) for c in members],
            address=Address(town=town, banchi="1-1"),
        )

    batch: list[Command] = [move("丸の内"), move("丸の内"), move("永田町")]
    single, bulk = _both(session_maker, batch)
    assert bulk == single
    assert len(single["history"]) == 3 * len(members)  # 異動前住所/住定日 change even on the same address


def test_bulk_names_the_stale_command_and_leaves_the_register_as_it_was(
    households: list[list[str]], session_maker: sessionmaker[Session]
) -> None:
    code = households[0][0]
    with session_maker() as s:
        version = s.scalars(select(Resident.version).where(Resident.resident_code == code)).one()
        before = _written(s, (0, 0, 0))
    good = NameChange(
        notified_on=TODAY, effective_on=TODAY, target=Target(resident_code=code), given_name="良"
    )
    stale = NameChange(
        notified_on=TODAY,
        effective_on=TODAY,
        target=Target(resident_code=code, version=version),  # the version before `good`
        given_name="古",
    )
    with pytest.raises(ConflictError) as caught, session_maker.begin() as s:
        service.apply_batch(s, CLERK, [good, stale], today=TODAY)
    assert (caught.value.field, caught.value.rule) == ("commands[1].version", "stale_version")
    with session_maker() as s:
        assert _written(s, (0, 0, 0)) == before
