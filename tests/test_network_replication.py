"""Replication of 本人確認情報 to the prefectural and national copies (SPEC K2, issue 4 items 1–2)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from kiban.core.audit import AuditEntry
from kiban.core.events import DomainEvent, Registry, drain, emit
from kiban.core.identifiers import IndividualNumberCipher, ResidentCodeGenerator
from kiban.core.models.events import OutboxEvent
from kiban.jpki.service import basic_four
from kiban.network import service as network
from kiban.network.handlers import register_handlers as network_handlers
from kiban.network.models import (
    NationalIdentity,
    PrefecturalIdentity,
    QuarantinedMessage,
    RegistrationConflict,
)
from kiban.numbering import service as numbering
from kiban.numbering.notices import notify_assigned
from kiban.register import service
from kiban.register.handlers import register_handlers
from kiban.register.loader import load_population
from kiban.register.models import Resident
from kiban.register.population import generate_population
from kiban.register.schemas import (
    Actor,
    Address,
    Birth,
    Dates,
    HouseholdChoice,
    MoveIn,
    MoveInPerson,
    MoveOut,
    NameChange,
    PersonData,
    Relocation,
    Target,
)

TODAY = date(2026, 11, 25)
A = "131016"  # 千代田区 (東京都)
B = "212016"  # 岐阜市 (岐阜県)
CLERK_A = Actor(username="clerk-a", municipality_code=A)
CLERK_B = Actor(username="clerk-b", municipality_code=B)
CIPHER = IndividualNumberCipher(bytes(range(32)))


@pytest.fixture
def registry() -> Registry:
    reg = Registry()
    register_handlers(reg)  # the register's own, including the 転出/転入 handlers
    network_handlers(reg)
    return reg


@pytest.fixture
def world(engine: Engine, session_maker: sessionmaker[Session], registry: Registry) -> list[str]:
    """40 residents in 千代田区 and 岐阜市, numbered, and in both copies (初期登録)."""
    households = list(generate_population([A, B], 40, seed=5, as_of=date(2025, 4, 1)))
    with session_maker.begin() as s:
        codes = numbering.issue_resident_codes(s, 40, ResidentCodeGenerator(random.Random(5)))
    load_population(engine, households, iter(codes))
    with session_maker.begin() as s:
        assigned = numbering.assign_individual_numbers_bulk(s, codes, CIPHER)
        where = {c: m for c, m in s.execute(select(Resident.resident_code, Resident.municipality_code))}
        notify_assigned(s, assigned, where)
    drain(session_maker, registry)
    with session_maker.begin() as s:
        assert network.seed_copies(s) == 40
    return codes


@pytest.fixture
def s(session_maker: sessionmaker[Session]) -> Iterator[Session]:
    with session_maker() as session:
        yield session


def days_ago(n: int) -> date:
    return TODAY - timedelta(days=n)


def single(s: Session, municipality: str) -> Resident:
    rows = s.scalars(
        select(Resident).where(Resident.municipality_code == municipality, Resident.status == "active")
    ).all()
    sizes: dict[Any, int] = {}
    for r in rows:
        sizes[r.household_id] = sizes.get(r.household_id, 0) + 1
    return next(r for r in rows if sizes[r.household_id] == 1 and r.relationship == "世帯主")


def run(session_maker: sessionmaker[Session], fn: Any, actor: Actor, command: Any, **kw: Any) -> Any:
    with session_maker.begin() as s:
        return fn(s, actor, command, today=TODAY, **kw)


def history(s: Session, code: str) -> list[NationalIdentity]:
    s.expire_all()
    return network.national_history(s, code)


def copies_state(s: Session) -> tuple[int, int, int]:
    s.expire_all()
    return (
        s.scalar(select(func.count()).select_from(NationalIdentity)) or 0,
        s.scalar(select(func.count()).select_from(PrefecturalIdentity)) or 0,
        s.scalar(select(func.count()).select_from(QuarantinedMessage)) or 0,
    )


def last_event(s: Session, code: str, type: str = "register.identity_changed") -> DomainEvent:
    from kiban.core.events import row_to_event

    row = s.scalars(
        select(OutboxEvent)
        .where(OutboxEvent.key == code, OutboxEvent.type == type)
        .order_by(OutboxEvent.seq.desc())
    ).first()
    assert row is not None
    return row_to_event(row)


def forged(base: DomainEvent, *, occurred_at: datetime | None = None, **payload: Any) -> DomainEvent:
    """A new message (new id) made from ``base`` with some payload items replaced or removed (None)."""
    body = {
        k: v for k, v in {**base.payload, **payload}.items() if not (k in payload and payload[k] is _DROP)
    }
    return DomainEvent(
        id=str(uuid.uuid4()),
        type=base.type,
        key=str(body.get("resident_code", base.key))
        if isinstance(body.get("resident_code"), str)
        else base.key,
        schema_version=1,
        occurred_at=occurred_at or datetime.now(UTC),
        payload=body,
        source="test",
    )


_DROP = object()


def apply(session_maker: sessionmaker[Session], event: DomainEvent) -> str:
    with session_maker.begin() as s:
        return network.apply_identity_change(s, event)


# --- real register events reach both copies, with history -----------------------------------------


def test_birth_relocation_name_change_reach_both_copies_with_history(
    world: list[str], session_maker: sessionmaker[Session], registry: Registry, s: Session
) -> None:
    mother = single(s, A)
    maiden = mother.family_name
    born = run(
        session_maker,
        service.birth,
        CLERK_A,
        Birth(
            notified_on=days_ago(1),
            effective_on=days_ago(3),
            person=PersonData(
                family_name=mother.family_name,
                given_name="花子",
                family_name_kana=mother.family_name_kana,
                given_name_kana="ハナコ",
                sex=2,
            ),
            household_of=mother.resident_code,
            relationship="子",
        ),
        generator=ResidentCodeGenerator(random.Random(77)),
        cipher=CIPHER,
    )
    code = born.records[0].resident_code
    drain(session_maker, registry)
    versions = history(s, code)
    # 出生 first (the number is not known yet), then the 個人番号 from numbering.
    assert [(v.version_no, v.reason_ja, v.is_current) for v in versions] == [
        (1, "出生", False),
        (2, "個人番号の指定", True),
    ]
    assert versions[0].individual_number is None
    assert versions[1].individual_number == numbering.active_number(s, code)
    assert versions[1].prefecture_code == "13" and versions[0].effective_on == days_ago(3)
    [pref] = [p for p in network.prefectural_history(s, "13", code) if p.is_current]
    assert pref.individual_number == versions[1].individual_number

    run(
        session_maker,
        service.relocation,
        CLERK_A,
        Relocation(
            notified_on=days_ago(0),
            effective_on=days_ago(1),
            targets=[Target(resident_code=mother.resident_code), Target(resident_code=code)],
            address=Address(town="神田錦町", banchi="三丁目2番1号"),
        ),
    )
    run(
        session_maker,
        service.name_change,
        CLERK_A,
        NameChange(
            notified_on=days_ago(0),
            effective_on=days_ago(0),
            target=Target(resident_code=mother.resident_code),
            family_name="佐藤",
            family_name_kana="サトウ",
            keep_old_family_name=True,
        ),
    )
    drain(session_maker, registry)
    versions = history(s, mother.resident_code)
    assert [v.reason_ja for v in versions] == ["初期登録", "転居", "氏名変更"]
    assert versions[0].address != versions[1].address and "神田錦町三丁目2番1号" in versions[1].address
    assert (versions[2].family_name, versions[2].old_family_name) == ("佐藤", maiden)
    assert [v.is_current for v in versions] == [False, False, True]
    assert len(network.prefectural_history(s, "13", mother.resident_code)) == 3
    # Only the 本人確認情報: nothing of the 住民票 beyond it has a column in the copies.
    columns = set(NationalIdentity.__table__.columns.keys())
    assert not columns & {"honseki", "hittousha", "relationship", "household_id", "nationality"}
    # 異動等情報 for the CA: old and new 基本4情報.
    out = last_event(s, mother.resident_code, "network.identity_changed")
    assert out.payload["old"]["family_name"] == maiden
    assert out.payload["new"]["family_name"] == "佐藤" and out.payload["reason"] == "name_change"
    # …in the shape the CA reads: it sees the name change (and nothing else) between old and new.
    old, new = basic_four(out.payload["old"]), basic_four(out.payload["new"])
    assert [k for k in old if old[k] != new[k]] == ["name", "former_name", "name_kana"]


def test_move_between_prefectures_reaches_both_prefectural_copies(
    world: list[str], session_maker: sessionmaker[Session], registry: Registry, s: Session
) -> None:
    person = single(s, A)
    sex: Literal[1, 2] = 1 if person.sex == 1 else 2
    run(
        session_maker,
        service.move_out,
        CLERK_A,
        MoveOut(
            notified_on=days_ago(3),
            effective_on=days_ago(1),
            targets=[Target(resident_code=person.resident_code)],
            destination_municipality_code=B,
            destination_address="岐阜県岐阜市大宮町1番地",
        ),
    )
    drain(session_maker, registry)
    run(
        session_maker,
        service.move_in,
        CLERK_B,
        MoveIn(
            notified_on=days_ago(0),
            effective_on=days_ago(1),
            persons=[
                MoveInPerson(
                    resident_code=person.resident_code,
                    family_name=person.family_name,
                    given_name=person.given_name,
                    birth_date=person.birth_date,
                    sex=sex,
                )
            ],
            address=Address(town="大宮町", banchi="1番地"),
            household=HouseholdChoice(),
        ),
    )
    drain(session_maker, registry)
    versions = history(s, person.resident_code)
    assert [(v.municipality_code, v.status, v.reason_ja) for v in versions] == [
        (A, "active", "初期登録"),
        (A, "removed", "転出"),
        (B, "active", "転入"),
    ]
    assert versions[-1].prefecture_code == "21" and versions[-1].address.startswith("岐阜県岐阜市大宮町")
    tokyo = network.prefectural_history(s, "13", person.resident_code)
    gifu = network.prefectural_history(s, "21", person.resident_code)
    assert [(p.status, p.is_current) for p in tokyo] == [("active", False), ("removed", True)]
    assert [(p.status, p.is_current) for p in gifu] == [("active", True)]
    assert s.scalar(select(func.count()).select_from(QuarantinedMessage)) == 0


def test_the_same_event_twice_changes_nothing(
    world: list[str], session_maker: sessionmaker[Session], registry: Registry, s: Session
) -> None:
    person = single(s, A)
    run(
        session_maker,
        service.relocation,
        CLERK_A,
        Relocation(
            notified_on=days_ago(0),
            effective_on=days_ago(0),
            targets=[Target(resident_code=person.resident_code)],
            address=Address(town="神田錦町", banchi="1番地"),
        ),
    )
    assert drain(session_maker, registry) > 0
    before = copies_state(s)
    event = last_event(s, person.resident_code)
    # Through the inbox: delivered again, absorbed. Directly: the copy knows the event id.
    assert drain(session_maker, registry) == 0
    assert apply(session_maker, event) == "duplicate"
    assert copies_state(s) == before
    assert [v.reason_ja for v in history(s, person.resident_code)] == ["初期登録", "転居"]


def test_an_older_change_never_overwrites_a_newer_one(
    world: list[str], session_maker: sessionmaker[Session], registry: Registry, s: Session
) -> None:
    person = single(s, A)
    run(
        session_maker,
        service.relocation,
        CLERK_A,
        Relocation(
            notified_on=days_ago(0),
            effective_on=days_ago(0),
            targets=[Target(resident_code=person.resident_code)],
            address=Address(town="神田錦町", banchi="1番地"),
        ),
    )
    drain(session_maker, registry)
    newest = last_event(s, person.resident_code)
    stale = forged(
        newest, occurred_at=newest.occurred_at - timedelta(seconds=5), address_text="東京都千代田区古い住所"
    )
    before = copies_state(s)
    assert apply(session_maker, stale) == "quarantined"
    s.expire_all()
    [q] = network.quarantined(s)
    assert (q.rule, q.event_id, q.municipality_code) == ("out_of_order", stale.id, A)
    assert copies_state(s) == (before[0], before[1], before[2] + 1)
    assert history(s, person.resident_code)[-1].address == newest.payload["address_text"]


_ONE_CODE = "12345678903"  # valid, but not the key


@pytest.mark.parametrize(
    ("change", "field", "rule"),
    [
        ({"family_name": _DROP}, "payload.family_name", "required"),
        ({"birth_date": "2001-02-30"}, "payload.birth_date", "iso_date"),
        ({"individual_number": "123456789012"}, "payload.individual_number", "check_digit"),
        ({"municipality_code": "131017"}, "payload.municipality_code", "unknown_municipality"),
        ({"municipality_code": "999990"}, "payload.municipality_code", "unknown_municipality"),
        ({"honseki": "東京都千代田区千代田1番"}, "payload.honseki", "not_identity_information"),
        ({"sex": 3}, "payload.sex", "sex_code"),
        ({"status": "gone"}, "payload.status", "status"),
        ({"resident_code": _ONE_CODE}, "payload.resident_code", "key_match"),
        ({"resident_code": "12345678906"}, "payload.resident_code", "check_digit"),
        ({"family_name": "山\x00田"}, "payload.family_name", "control_characters"),
    ],
)
def test_malformed_messages_are_quarantined_never_applied(
    world: list[str],
    session_maker: sessionmaker[Session],
    s: Session,
    change: dict[str, Any],
    field: str,
    rule: str,
) -> None:
    person = single(s, A)
    with session_maker.begin() as tx:
        record = tx.get(Resident, person.id)
        assert record is not None
        base = DomainEvent(
            id=str(uuid.uuid4()),
            type="register.identity_changed",
            key=person.resident_code,
            schema_version=1,
            occurred_at=datetime.now(UTC),
            payload=service.identity_payload(
                record,
                "relocation",
                Dates(notified_on=days_ago(0), effective_on=days_ago(0)),
            ),
            source="test",
        )
    event = forged(base, **change)
    if "resident_code" in change:
        event = DomainEvent(**{**event.__dict__, "key": person.resident_code})
    before = copies_state(s)
    assert apply(session_maker, event) == "quarantined"
    s.expire_all()
    [q] = network.quarantined(s)
    assert (q.field, q.rule) == (field, rule)
    assert copies_state(s) == (before[0], before[1], before[2] + 1)
    if "honseki" in change:
        # The item that must not leave the municipality is not kept in the quarantine either.
        assert q.document["payload"]["honseki"] == "<withheld>"
    # The good message is applied.
    assert apply(session_maker, forged(base)) == "applied"


def test_a_second_active_registration_is_refused_and_reported_to_both(
    world: list[str], session_maker: sessionmaker[Session], registry: Registry, s: Session
) -> None:
    person = single(s, A)
    run(
        session_maker,
        service.relocation,
        CLERK_A,
        Relocation(
            notified_on=days_ago(0),
            effective_on=days_ago(0),
            targets=[Target(resident_code=person.resident_code)],
            address=Address(town="神田錦町", banchi="1番地"),
        ),
    )
    drain(session_maker, registry)
    base = last_event(s, person.resident_code)
    claim = forged(
        base, municipality_code=B, address_text="岐阜県岐阜市大宮町1番地", reason="ex_officio_entry"
    )
    before = copies_state(s)
    assert apply(session_maker, claim) == "quarantined"
    s.expire_all()
    [conflict] = s.scalars(select(RegistrationConflict)).all()
    assert (conflict.active_municipality_code, conflict.claiming_municipality_code) == (A, B)
    [q] = network.quarantined(s)
    assert q.rule == "second_active_registration"
    report = last_event(s, person.resident_code, "network.registration_conflict")
    assert report.payload["notify"] == [A, B]
    assert history(s, person.resident_code)[-1].municipality_code == A
    assert copies_state(s)[:2] == before[:2]

    # Released while A still has the person: refused again, nothing changes.
    with pytest.raises(network.NetworkError) as caught, session_maker.begin() as tx:
        network.release_quarantined(tx, q.id, actor="operator-1")
    assert caught.value.rule == "second_active_registration"
    assert copies_state(s) == (before[0], before[1], before[2] + 1)
    # A removes its record (職権消除); the operator releases B's registration, which now applies.
    removal = forged(base, status="removed", reason="ex_officio_removal", reason_ja="職権消除")
    assert apply(session_maker, removal) == "applied"
    with session_maker.begin() as tx:
        assert network.release_quarantined(tx, q.id, actor="operator-1") == "applied"
    s.expire_all()
    assert [(v.municipality_code, v.status) for v in history(s, person.resident_code)][-2:] == [
        (A, "removed"),
        (B, "active"),
    ]
    assert network.quarantined(s) == []
    assert s.scalars(select(RegistrationConflict)).one().resolved_at is not None
    [entry] = s.scalars(select(AuditEntry).where(AuditEntry.action == "release")).all()
    assert (entry.actor, entry.subject) == ("operator-1", person.resident_code)
    with pytest.raises(network.NetworkError, match="not_quarantined"), session_maker.begin() as tx:
        network.release_quarantined(tx, q.id, actor="operator-1")


def test_a_message_with_withheld_items_can_never_be_released(
    world: list[str], session_maker: sessionmaker[Session], registry: Registry, s: Session
) -> None:
    person = single(s, A)
    run(
        session_maker,
        service.relocation,
        CLERK_A,
        Relocation(
            notified_on=days_ago(0),
            effective_on=days_ago(0),
            targets=[Target(resident_code=person.resident_code)],
            address=Address(town="神田錦町", banchi="1番地"),
        ),
    )
    drain(session_maker, registry)
    leaking = forged(last_event(s, person.resident_code), honseki="東京都千代田区千代田1番")
    assert apply(session_maker, leaking) == "quarantined"
    [q] = network.quarantined(s)
    with pytest.raises(network.NetworkError) as caught, session_maker.begin() as tx:
        network.release_quarantined(tx, q.id, actor="operator-1")
    assert caught.value.rule == "not_identity_information"
    s.expire_all()
    assert len(network.quarantined(s)) == 1


def test_replication_status_shows_the_newest_event_and_its_lag(
    world: list[str], session_maker: sessionmaker[Session], registry: Registry, s: Session
) -> None:
    assert network.replication_status(s) == []  # the initial load is not replication
    person = single(s, A)
    run(
        session_maker,
        service.relocation,
        CLERK_A,
        Relocation(
            notified_on=days_ago(0),
            effective_on=days_ago(0),
            targets=[Target(resident_code=person.resident_code)],
            address=Address(town="神田錦町", banchi="1番地"),
        ),
    )
    drain(session_maker, registry)
    event = last_event(s, person.resident_code)
    [status] = network.replication_status(s)
    assert (status.municipality_code, status.prefecture_code, status.last_event_id) == (A, "13", event.id)
    assert status.last_occurred_at == event.occurred_at
    assert status.lag is not None and timedelta(0) <= status.lag < timedelta(seconds=30)
    assert status.versions == 1 and status.quarantined == 0
    # A municipality that only sent bad messages is visible too, and both show in /metrics.
    assert apply(session_maker, forged(event, municipality_code=B, family_name=_DROP)) == "quarantined"
    s.expire_all()
    statuses = network.replication_status(s)
    assert [(st.municipality_code, st.versions, st.quarantined) for st in statuses] == [(A, 1, 0), (B, 0, 1)]
    assert statuses[1].lag is None
    registry_ = CollectorRegistry()
    registry_.register(network.ReplicationCollector(session_maker))
    text = generate_latest(registry_).decode()
    assert f'kiban_network_replication_lag_seconds{{municipality="{A}",prefecture="13"}}' in text
    assert f'kiban_network_quarantined{{municipality="{B}",prefecture="21"}} 1.0' in text


# --- property: any delivery order ends with the newest version current -----------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(range(5)), repeat=st.lists(st.integers(0, 4), max_size=3))
def test_any_delivery_order_keeps_the_newest_and_never_an_older_one(
    session_maker: sessionmaker[Session], order: list[int], repeat: list[int]
) -> None:
    code = ResidentCodeGenerator(random.Random(len(repeat) * 31 + order[0])).generate()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    events = [
        DomainEvent(
            id=str(uuid.uuid4()),
            type="register.identity_changed",
            key=code,
            schema_version=1,
            occurred_at=start + timedelta(minutes=i),
            payload={
                "resident_code": code,
                "municipality_code": A,
                "family_name": "試験",
                "given_name": f"太郎{i}",
                "family_name_kana": "シケン",
                "given_name_kana": "タロウ",
                "birth_date": "1990-01-01",
                "sex": 1,
                "address_text": f"東京都千代田区千代田{i}番",
                "status": "active",
                "reason": "relocation",
                "reason_ja": "転居",
                "effective_on": "2026-01-01",
            },
            source="test",
        )
        for i in range(5)
    ]
    outcomes = [apply(session_maker, events[i]) for i in [*order, *repeat]]
    with session_maker() as s:
        versions = network.national_history(s, code)
        current = [v for v in versions if v.is_current]
    # Exactly the events applied in increasing time order survive; the rest are quarantined.
    applied = [events[i].id for i, o in zip([*order, *repeat], outcomes, strict=True) if o == "applied"]
    assert [v.event_id for v in versions] == applied
    assert [v.event_occurred_at for v in versions] == sorted(v.event_occurred_at for v in versions)
    assert current and current[0].event_id == events[max(order[: order.index(4) + 1])].id == events[4].id
    assert set(outcomes[len(order) :]) <= {"duplicate", "quarantined"}
    with session_maker.begin() as s:
        s.query(NationalIdentity).delete()
        s.query(PrefecturalIdentity).delete()
        s.query(QuarantinedMessage).delete()


def test_a_reissued_number_is_a_new_version_and_the_old_number_finds_no_one(
    world: list[str], session_maker: sessionmaker[Session], registry: Registry, s: Session
) -> None:
    code = world[0]
    old_number = history(s, code)[-1].individual_number
    with session_maker.begin() as tx:
        new_number = numbering.reissue_individual_number(tx, code, CIPHER, "漏えいのおそれ")
        notify_assigned(
            tx, {code: new_number}, {code: history(tx, code)[-1].municipality_code}, reissued=True
        )
    drain(session_maker, registry)
    versions = history(s, code)
    assert [(v.reason_ja, v.individual_number) for v in versions] == [
        ("初期登録", old_number),
        ("個人番号の変更", new_number),
    ]
    assert drain(session_maker, registry) == 0  # nothing pending, nothing re-applied
    current = s.scalars(
        select(NationalIdentity).where(
            NationalIdentity.individual_number == old_number, NationalIdentity.is_current
        )
    ).all()
    assert current == []


def test_a_bad_message_in_the_outbox_never_blocks_the_persons_later_changes(
    world: list[str], session_maker: sessionmaker[Session], registry: Registry, s: Session
) -> None:
    person = single(s, A)
    with session_maker.begin() as tx:
        emit(tx, "register.identity_changed", person.resident_code, {"resident_code": person.resident_code})
    run(
        session_maker,
        service.relocation,
        CLERK_A,
        Relocation(
            notified_on=days_ago(0),
            effective_on=days_ago(0),
            targets=[Target(resident_code=person.resident_code)],
            address=Address(town="神田錦町", banchi="1番地"),
        ),
    )
    drain(session_maker, registry)
    s.expire_all()
    [q] = network.quarantined(s)
    assert (q.rule, q.field) == ("required", "payload.address_text")
    assert [v.reason_ja for v in history(s, person.resident_code)] == ["初期登録", "転居"]
    assert s.scalar(select(func.count()).where(OutboxEvent.delivered_at.is_(None))) == 0
