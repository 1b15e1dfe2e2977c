"""The register service: each change event, and one test per rule (SPEC K1, issue 3)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any, Literal

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from kiban.core.audit import AuditEntry
from kiban.core.events import Registry, drain
from kiban.core.identifiers import IndividualNumberCipher, ResidentCodeGenerator
from kiban.core.models.events import OutboxEvent
from kiban.network import moves as network_moves
from kiban.numbering import service as numbering
from kiban.numbering.models import ResidentCode
from kiban.numbering.notices import notify_assigned
from kiban.register import service
from kiban.register.handlers import register_handlers
from kiban.register.loader import load_population
from kiban.register.models import ChangeRecord, Household, MoveOutCertificate, Resident
from kiban.register.population import generate_population
from kiban.register.rules import AccessDenied, ConflictError, NotFound, RegisterError
from kiban.register.schemas import (
    Actor,
    Address,
    Birth,
    Death,
    Emigration,
    ExOfficioCorrection,
    ExOfficioEntry,
    ExOfficioRemoval,
    ExOfficioRestoration,
    HeadChange,
    HouseholdChoice,
    HouseholdMerge,
    HouseholdSplit,
    Immigration,
    LeftBehind,
    LiftRestriction,
    MoveIn,
    MoveInPerson,
    MoveOut,
    NameChange,
    PersonData,
    Relocation,
    ResidentCodeChange,
    SearchQuery,
    SetRestriction,
    Target,
)

TODAY = date(2026, 11, 25)
A = "131016"  # 千代田区
B = "131041"  # 新宿区
CLERK_A = Actor(username="clerk-a", municipality_code=A)
CLERK_B = Actor(username="clerk-b", municipality_code=B)
CIPHER = IndividualNumberCipher(bytes(range(32)))


def sex_of(r: Resident) -> Literal[1, 2]:
    return 1 if r.sex == 1 else 2


def days_ago(n: int) -> date:
    return TODAY - timedelta(days=n)


@pytest.fixture
def registry() -> Registry:
    reg = Registry()
    register_handlers(reg)  # the 個人番号 notice and the moves (転出証明書情報, completion)
    network_moves.register_handlers(reg)  # the 転出証明書情報 travels through the network
    return reg


@pytest.fixture
def world(engine: Engine, session_maker: sessionmaker[Session], registry: Registry) -> list[str]:
    """60 residents in 千代田区 and 新宿区 with 住民票コード and 個人番号."""
    households = list(generate_population([A, B], 60, seed=11, as_of=date(2025, 4, 1)))
    with session_maker.begin() as s:
        codes = numbering.issue_resident_codes(s, 60, ResidentCodeGenerator(random.Random(11)))
    load_population(engine, households, iter(codes))
    with session_maker.begin() as s:
        assigned = numbering.assign_individual_numbers_bulk(s, codes, CIPHER)
        where: dict[str, str] = {
            code: town for code, town in s.execute(select(Resident.resident_code, Resident.municipality_code))
        }
        notify_assigned(s, assigned, where)
    drain(session_maker, registry)
    return codes


@pytest.fixture
def s(session_maker: sessionmaker[Session]) -> Iterator[Session]:
    with session_maker() as session:
        yield session


def households_in(s: Session, municipality: str) -> list[list[Resident]]:
    """Active households of a municipality, head first, each as its members."""
    rows = s.scalars(
        select(Resident)
        .where(Resident.municipality_code == municipality, Resident.status == "active")
        .order_by(Resident.household_id, Resident.relationship != "世帯主", Resident.birth_date)
    ).all()
    out: dict[Any, list[Resident]] = {}
    for r in rows:
        out.setdefault(r.household_id, []).append(r)
    return list(out.values())


def family(s: Session, municipality: str = A, *, size: int = 2) -> list[Resident]:
    """A household of at least ``size`` whose head is an adult."""
    return next(h for h in households_in(s, municipality) if len(h) >= size)


def single(s: Session, municipality: str = A) -> Resident:
    return next(h[0] for h in households_in(s, municipality) if len(h) == 1)


def state(s: Session) -> dict[str, Any]:
    """Everything a refused command must leave as it was."""
    s.expire_all()
    return {
        "residents": sorted(
            (str(r.id), r.version, r.status, r.household_id.hex, r.relationship, r.town, r.family_name)
            for r in s.scalars(select(Resident))
        ),
        "households": sorted(
            (str(h.id), h.version, str(h.head_resident_id)) for h in s.scalars(select(Household))
        ),
        "changes": s.scalar(select(func.count()).select_from(ChangeRecord)),
        "outbox": s.scalar(select(func.count()).select_from(OutboxEvent)),
        "audit": s.scalar(select(func.count()).select_from(AuditEntry)),
        "codes": s.scalar(select(func.count()).select_from(ResidentCode)),
    }


def refused(
    session_maker: sessionmaker[Session],
    fn: Any,
    actor: Actor,
    command: Any,
    field: str,
    rule: str,
    **kw: Any,
) -> RegisterError:
    """Run a command that must be refused: the error names field and rule, and nothing changes."""
    with session_maker() as s:
        before = state(s)
    with pytest.raises(RegisterError) as caught, session_maker.begin() as s:
        fn(s, actor, command, today=TODAY, **kw)
    assert (caught.value.field, caught.value.rule) == (field, rule), caught.value
    with session_maker() as s:
        assert state(s) == before
    return caught.value


def run(session_maker: sessionmaker[Session], fn: Any, actor: Actor, command: Any, **kw: Any) -> Any:
    with session_maker.begin() as s:
        return fn(s, actor, command, today=TODAY, **kw)


def dates(notified: int = 1, effective: int = 2, **extra: Any) -> dict[str, Any]:
    return {"notified_on": days_ago(notified), "effective_on": days_ago(effective), **extra}


ADDRESS = Address(town="神田錦町", banchi="三丁目2番1号", katagaki="キバンハイツ101", postal_code="1010054")


def baby(**over: Any) -> PersonData:
    values: dict[str, Any] = {
        "family_name": "山田",
        "given_name": "花子",
        "family_name_kana": "ヤマダ",
        "given_name_kana": "ハナコ",
        "sex": 2,
    }
    return PersonData(**{**values, **over})


def invariants(s: Session) -> None:
    """One active record per code; each household with active members has exactly one head."""
    s.expire_all()
    dup = s.execute(
        select(Resident.resident_code)
        .where(Resident.status == "active")
        .group_by(Resident.resident_code)
        .having(func.count() > 1)
    ).all()
    assert dup == []
    for h in s.scalars(select(Household)):
        members = [
            r
            for r in s.scalars(select(Resident).where(Resident.household_id == h.id))
            if r.status == "active"
        ]
        if members:
            heads = [m for m in members if m.relationship == "世帯主"]
            assert len(heads) == 1 and heads[0].id == h.head_resident_id


# --- events ----------------------------------------------------------------------------------------


def test_birth_issues_a_code_requests_a_number_and_records_history(
    world: list[str], session_maker: sessionmaker[Session], registry: Registry
) -> None:
    with session_maker() as s:
        mother = family(s)[1]
    result = run(
        session_maker,
        service.birth,
        CLERK_A,
        Birth(
            **dates(1, 3),
            person=baby(family_name="髙\U000e0100田", given_name_kana="ﾊﾅｺ"),
            household_of=mother.resident_code,
        ),
        generator=ResidentCodeGenerator(random.Random(99)),
        cipher=CIPHER,
    )
    code = result.records[0].resident_code
    assert code not in world
    drain(session_maker, registry)
    with session_maker() as s:
        child = s.scalars(select(Resident).where(Resident.resident_code == code)).one()
        assert child.family_name == "髙\U000e0100田"  # IVS kept, never normalised
        assert child.given_name_kana == "ハナコ"  # half-width kana widened
        assert child.household_id == mother.household_id and child.relationship == "子"
        assert child.birth_date == days_ago(3) and child.address_since == days_ago(3)
        assert child.individual_number == numbering.active_number(s, code)
        [row] = s.scalars(select(ChangeRecord).where(ChangeRecord.resident_id == child.id)).all()
        assert row.kind == "birth" and row.before == {} and row.after["family_name"] == "髙\U000e0100田"
        events = s.scalars(select(OutboxEvent).where(OutboxEvent.key == code)).all()
        assert [e.type for e in events] == ["register.identity_changed", "numbering.number_assigned"]
        assert events[0].payload["reason_ja"] == "出生" and events[0].schema_version == 1
        entries = s.scalars(select(AuditEntry).where(AuditEntry.subject == code)).all()
        assert entries and entries[0].action == "create" and "family_name" in entries[0].items
        assert child.individual_number is not None
        assert child.individual_number not in str([(e.items, e.detail, e.purpose) for e in entries])


def test_death_closes_the_record_and_the_head_hands_over(
    world: list[str], session_maker: sessionmaker[Session]
) -> None:
    with session_maker() as s:
        head, wife = family(s)[:2]
    refused(
        session_maker,
        service.death,
        CLERK_A,
        Death(**dates(), target=Target(resident_code=head.resident_code)),
        "stay.new_head_code",
        "head_required",
    )
    run(
        session_maker,
        service.death,
        CLERK_A,
        Death(
            **dates(),
            target=Target(resident_code=head.resident_code, version=head.version),
            stay=LeftBehind(new_head_code=wife.resident_code),
        ),
    )
    with session_maker() as s:
        dead = s.get(Resident, head.id)
        assert dead is not None and (dead.status, dead.removed_reason, dead.removed_on) == (
            "removed",
            "死亡",
            days_ago(2),
        )
        assert s.get(Resident, wife.id).relationship == "世帯主"  # type: ignore[union-attr]
        assert s.get(Household, head.household_id).head_resident_id == wife.id  # type: ignore[union-attr]
        [jyohyo] = service.removed_records(s, CLERK_A, head.resident_code, today=TODAY)
        assert jyohyo.removed_reason == "死亡"
        invariants(s)


def test_no_event_on_a_dead_person(world: list[str], session_maker: sessionmaker[Session]) -> None:
    with session_maker() as s:
        person = single(s)
    run(
        session_maker,
        service.death,
        CLERK_A,
        Death(**dates(), target=Target(resident_code=person.resident_code)),
    )
    refused(
        session_maker,
        service.relocation,
        CLERK_A,
        Relocation(**dates(), targets=[Target(resident_code=person.resident_code)], address=ADDRESS),
        "targets[0].resident_code",
        "dead_or_removed",
    )
    refused(
        session_maker,
        service.name_change,
        CLERK_A,
        NameChange(**dates(), target=Target(resident_code=person.resident_code), family_name="佐藤"),
        "resident_code",
        "dead_or_removed",
    )


def test_move_between_municipalities(
    world: list[str], session_maker: sessionmaker[Session], registry: Registry
) -> None:
    with session_maker() as s:
        person = single(s, A)
        number = person.individual_number
    out = run(
        session_maker,
        service.move_out,
        CLERK_A,
        MoveOut(
            **dates(3, 1),
            targets=[Target(resident_code=person.resident_code)],
            destination_municipality_code=B,
            destination_address="東京都新宿区西新宿二丁目8番1号",
        ),
    )
    [cert] = out.certificates
    assert cert.payload["family_name"] == person.family_name and cert.to_municipality_code == B
    # Not yet received at the destination: the 転入 is refused.
    move_in = MoveIn(
        **dates(0, 1),
        persons=[
            MoveInPerson(
                resident_code=person.resident_code,
                family_name=person.family_name,
                given_name=person.given_name,
                birth_date=person.birth_date,
                sex=sex_of(person),
            )
        ],
        address=Address(town="西新宿", banchi="二丁目8番1号"),
        household=HouseholdChoice(),
    )
    refused(session_maker, service.move_in, CLERK_B, move_in, "persons[0].resident_code", "move_out_required")
    drain(session_maker, registry)
    with session_maker() as s:
        assert (
            service.overdue_moves_out(s, A, TODAY + timedelta(days=30))[0].resident_code
            == person.resident_code
        )
    run(session_maker, service.move_in, CLERK_B, move_in)
    drain(session_maker, registry)
    with session_maker() as s:
        new = s.scalars(
            select(Resident).where(
                Resident.resident_code == person.resident_code, Resident.status == "active"
            )
        ).one()
        assert new.municipality_code == B and new.individual_number == number
        assert new.previous_address is not None and new.previous_address.startswith("東京都千代田区")
        assert new.relationship == "世帯主" and new.resident_since == days_ago(1)
        old = s.get(Resident, person.id)
        assert old is not None and old.status == "removed" and old.removed_reason == "転出"
        certs = s.scalars(select(MoveOutCertificate).order_by(MoveOutCertificate.role)).all()
        assert [(c.role, c.status) for c in certs] == [("issued", "completed"), ("received", "completed")]
        assert service.overdue_moves_out(s, A, TODAY + timedelta(days=30)) == []
        invariants(s)
    # A 転出 is completed once.
    refused(
        session_maker,
        service.move_in,
        CLERK_B,
        move_in,
        "persons[0].resident_code",
        "move_out_already_completed",
    )


def test_move_in_must_match_the_move_out(
    world: list[str], session_maker: sessionmaker[Session], registry: Registry
) -> None:
    with session_maker() as s:
        person = single(s, A)
    run(
        session_maker,
        service.move_out,
        CLERK_A,
        MoveOut(
            **dates(3, 1),
            targets=[Target(resident_code=person.resident_code)],
            destination_municipality_code=B,
            destination_address="東京都新宿区",
        ),
    )
    drain(session_maker, registry)

    def attempt(**over: Any) -> MoveIn:
        values: dict[str, Any] = {
            "resident_code": person.resident_code,
            "family_name": person.family_name,
            "given_name": person.given_name,
            "birth_date": person.birth_date,
            "sex": sex_of(person),
            **over,
        }
        return MoveIn(
            **dates(0, 1),
            persons=[MoveInPerson(**values)],
            address=Address(town="西新宿", banchi="1"),
            household=HouseholdChoice(),
        )

    refused(
        session_maker,
        service.move_in,
        CLERK_B,
        attempt(birth_date=person.birth_date - timedelta(days=1)),
        "persons[0].birth_date",
        "identity_mismatch",
    )
    refused(
        session_maker,
        service.move_in,
        CLERK_B,
        attempt(sex=2 if person.sex == 1 else 1),
        "persons[0].sex",
        "identity_mismatch",
    )
    refused(
        session_maker,
        service.move_in,
        CLERK_B,
        attempt(given_name="別人"),
        "persons[0].family_name",
        "identity_mismatch",
    )
    # The certificate was sent to 新宿区: 千代田区 itself cannot use it.
    refused(
        session_maker, service.move_in, CLERK_A, attempt(), "persons[0].resident_code", "move_out_required"
    )


def test_relocation_keeps_the_previous_address_and_bumps_the_version(
    world: list[str], session_maker: sessionmaker[Session]
) -> None:
    with session_maker() as s:
        members = family(s)
        old_address = service.address_text(members[0])
    result = run(
        session_maker,
        service.relocation,
        CLERK_A,
        Relocation(
            **dates(),
            targets=[Target(resident_code=m.resident_code, version=m.version) for m in members],
            address=ADDRESS,
        ),
    )
    with session_maker() as s:
        for m in members:
            r = s.get(Resident, m.id)
            assert r is not None and r.town == "神田錦町" and r.pre_move_address == old_address
            assert r.version == m.version + 1 == result.version_of(m.resident_code)
        h = s.get(Household, members[0].household_id)
        assert h is not None and h.town == "神田錦町"
        events = s.scalars(select(OutboxEvent).where(OutboxEvent.type == "register.identity_changed")).all()
        assert {e.key for e in events} == {m.resident_code for m in members}
        assert (
            events[0].payload["address"]["town"] == "神田錦町" and events[0].payload["reason"] == "relocation"
        )


def test_stale_version_is_a_conflict_and_no_update_is_lost(
    world: list[str], session_maker: sessionmaker[Session]
) -> None:
    with session_maker() as s:
        person = single(s)
    seen = person.version
    # Two clerks opened the same record; the first saves.
    with session_maker() as first, first.begin():
        service.name_change(
            first,
            CLERK_A,
            NameChange(
                **dates(), target=Target(resident_code=person.resident_code, version=seen), family_name="一番"
            ),
            today=TODAY,
        )
    with pytest.raises(ConflictError) as caught, session_maker() as second, second.begin():
        service.name_change(
            second,
            CLERK_A,
            NameChange(
                **dates(), target=Target(resident_code=person.resident_code, version=seen), family_name="二番"
            ),
            today=TODAY,
        )
    assert (caught.value.field, caught.value.rule, caught.value.status) == ("version", "stale_version", 409)
    with session_maker() as s:
        r = s.get(Resident, person.id)
        assert r is not None and r.family_name == "一番" and r.version == seen + 1


def test_a_concurrent_write_between_read_and_flush_is_caught(
    world: list[str], session_maker: sessionmaker[Session]
) -> None:
    with session_maker() as s:
        person = single(s)
    with session_maker() as second:
        stale = second.get(Resident, person.id)
        assert stale is not None
        with session_maker.begin() as first:
            service.name_change(
                first,
                CLERK_A,
                NameChange(**dates(), target=Target(resident_code=person.resident_code), family_name="先"),
                today=TODAY,
            )
        stale.family_name = "後"
        from sqlalchemy.orm.exc import StaleDataError

        with pytest.raises(StaleDataError):
            second.commit()


def test_clerks_act_only_on_their_municipality(
    world: list[str], session_maker: sessionmaker[Session]
) -> None:
    with session_maker() as s:
        person = single(s, A)
    error = refused(
        session_maker,
        service.name_change,
        CLERK_B,
        NameChange(**dates(), target=Target(resident_code=person.resident_code), family_name="他区"),
        "resident_code",
        "own_municipality",
    )
    assert isinstance(error, AccessDenied) and error.status == 403
    with session_maker() as s, pytest.raises(AccessDenied):
        service.get_record(s, CLERK_B, person.resident_code)
    with session_maker() as s:
        page = service.search(s, CLERK_B, SearchQuery(resident_code=person.resident_code), today=TODAY)
        assert page.total == 0


def test_dates(world: list[str], session_maker: sessionmaker[Session]) -> None:
    with session_maker() as s:
        person = single(s)
    target = Target(resident_code=person.resident_code)
    refused(
        session_maker,
        service.name_change,
        CLERK_A,
        NameChange(
            notified_on=TODAY + timedelta(days=1), effective_on=TODAY, target=target, family_name="未来"
        ),
        "notified_on",
        "future_date",
    )
    refused(
        session_maker,
        service.name_change,
        CLERK_A,
        NameChange(**dates(5, 2), target=target, family_name="後日"),
        "effective_on",
        "after_notification",
    )
    refused(
        session_maker,
        service.death,
        CLERK_A,
        Death(notified_on=TODAY, effective_on=person.birth_date - timedelta(days=1), target=target),
        "effective_on",
        "before_birth",
    )
    # A 転出届 may be made up to 14 days before the move, not more.
    move: dict[str, Any] = {
        "targets": [target],
        "destination_municipality_code": B,
        "destination_address": "新宿区",
    }
    refused(
        session_maker,
        service.move_out,
        CLERK_A,
        MoveOut(notified_on=TODAY, effective_on=TODAY + timedelta(days=15), **move),
        "effective_on",
        "after_notification",
    )
    run(
        session_maker,
        service.move_out,
        CLERK_A,
        MoveOut(notified_on=TODAY, effective_on=TODAY + timedelta(days=14), **move),
    )


def test_a_minor_heads_a_household_only_alone(world: list[str], session_maker: sessionmaker[Session]) -> None:
    with session_maker() as s:
        parent = single(s)
    born = run(
        session_maker,
        service.birth,
        CLERK_A,
        Birth(**dates(1, 3), person=baby(), household_of=parent.resident_code),
        cipher=CIPHER,
    )
    child = born.records[0].resident_code
    # Making the baby head of a household that holds an adult is refused:
    refused(
        session_maker,
        service.head_change,
        CLERK_A,
        HeadChange(
            **dates(), new_head=Target(resident_code=child), relationships={parent.resident_code: "母"}
        ),
        "household",
        "minor_head",
    )
    # Alone, a minor may be head (世帯分離 of the child into a household of one).
    run(
        session_maker,
        service.household_split,
        CLERK_A,
        HouseholdSplit(
            **dates(), targets=[Target(resident_code=child)], household=HouseholdChoice(head_code=child)
        ),
    )
    with session_maker() as s:
        invariants(s)


def test_exactly_one_head(world: list[str], session_maker: sessionmaker[Session]) -> None:
    with session_maker() as s:
        head, wife = family(s)[:2]
    refused(
        session_maker,
        service.head_change,
        CLERK_A,
        HeadChange(**dates(), new_head=Target(resident_code=wife.resident_code)),
        "relationships",
        "relationship_required",
    )
    refused(
        session_maker,
        service.ex_officio_correction,
        CLERK_A,
        ExOfficioCorrection(
            **dates(), target=Target(resident_code=wife.resident_code), changes={"relationship": "世帯主"}
        ),
        "household",
        "one_head",
    )
    run(
        session_maker,
        service.head_change,
        CLERK_A,
        HeadChange(
            **dates(),
            new_head=Target(resident_code=wife.resident_code),
            relationships={head.resident_code: "夫"},
        ),
    )
    with session_maker() as s:
        assert s.get(Household, head.household_id).head_resident_id == wife.id  # type: ignore[union-attr]
        assert s.get(Resident, head.id).relationship == "夫"  # type: ignore[union-attr]
        invariants(s)


def test_household_split_and_merge(world: list[str], session_maker: sessionmaker[Session]) -> None:
    with session_maker() as s:
        head, wife = family(s)[:2]
        other = single(s)
    run(
        session_maker,
        service.household_split,
        CLERK_A,
        HouseholdSplit(
            **dates(),
            targets=[Target(resident_code=wife.resident_code)],
            household=HouseholdChoice(head_code=wife.resident_code),
        ),
    )
    with session_maker() as s:
        moved = s.get(Resident, wife.id)
        assert (
            moved is not None and moved.household_id != head.household_id and moved.relationship == "世帯主"
        )
    # Merging needs the same address; a household elsewhere is a 転居 instead.
    refused(
        session_maker,
        service.household_merge,
        CLERK_A,
        HouseholdMerge(
            **dates(),
            targets=[Target(resident_code=other.resident_code)],
            household=HouseholdChoice(
                join_household_of=head.resident_code, relationships={other.resident_code: "同居人"}
            ),
        ),
        "targets",
        "same_address",
    )
    run(
        session_maker,
        service.household_merge,
        CLERK_A,
        HouseholdMerge(
            **dates(),
            targets=[Target(resident_code=wife.resident_code)],
            household=HouseholdChoice(
                join_household_of=head.resident_code, relationships={wife.resident_code: "妻"}
            ),
        ),
    )
    with session_maker() as s:
        back = s.get(Resident, wife.id)
        assert back is not None and back.household_id == head.household_id and back.relationship == "妻"
        invariants(s)


def test_name_change_keeps_the_old_name_and_updates_search_keys(
    world: list[str], session_maker: sessionmaker[Session]
) -> None:
    with session_maker() as s:
        person = single(s)
    run(
        session_maker,
        service.name_change,
        CLERK_A,
        NameChange(
            **dates(),
            target=Target(resident_code=person.resident_code),
            family_name="\ufa10本",
            family_name_kana="ﾂｶﾓﾄ",
            keep_old_family_name=True,
            reason="婚姻",
        ),
    )
    with session_maker() as s:
        r = s.get(Resident, person.id)
        assert (
            r is not None and r.family_name == "\ufa10本"
        )  # compatibility ideograph kept (NFC would change it)
        assert (r.old_family_name, r.old_family_name_kana) == (person.family_name, person.family_name_kana)
        assert r.family_name_kana == "ツカモト" and r.kana_search_key.startswith("ツカモト")
        for name in ("塚本", "つかもと", "ﾂｶﾓﾄ", "カモト"):
            page = service.search(s, CLERK_A, SearchQuery(name=name), today=TODAY)
            assert person.resident_code in [i.resident_code for i in page.items], name
        [row] = s.scalars(select(ChangeRecord).where(ChangeRecord.resident_id == person.id)).all()
        assert (
            row.before["family_name"] == person.family_name
            and row.after["old_family_name"] == person.family_name
        )


def test_half_width_and_bad_kana_on_input() -> None:
    with pytest.raises(ValidationError, match="katakana_only"):
        baby(given_name_kana="Hanako")
    with pytest.raises(ValidationError, match="control_characters"):
        baby(given_name="花\x00子")
    assert baby(family_name_kana="ﾔﾏﾀﾞ").family_name_kana == "ヤマダ"


def test_corrections_and_restoration_on_a_removed_record(
    world: list[str], session_maker: sessionmaker[Session]
) -> None:
    with session_maker() as s:
        person = single(s)
    run(
        session_maker,
        service.death,
        CLERK_A,
        Death(**dates(1, 10), target=Target(resident_code=person.resident_code)),
    )
    refused(
        session_maker,
        service.ex_officio_correction,
        CLERK_A,
        ExOfficioCorrection(
            **dates(),
            target=Target(resident_code=person.resident_code),
            changes={"birth_date": days_ago(5).isoformat()},
        ),
        "changes.birth_date",
        "birth_after_death",
    )
    run(
        session_maker,
        service.ex_officio_correction,
        CLERK_A,
        ExOfficioCorrection(
            **dates(), target=Target(resident_code=person.resident_code), changes={"given_name": "訂正"}
        ),
    )
    run(
        session_maker,
        service.ex_officio_restoration,
        CLERK_A,
        ExOfficioRestoration(
            **dates(), target=Target(resident_code=person.resident_code), reason="誤った死亡届"
        ),
    )
    with session_maker() as s:
        r = s.get(Resident, person.id)
        assert r is not None and (r.status, r.given_name, r.relationship) == ("active", "訂正", "世帯主")
        invariants(s)
    refused(
        session_maker,
        service.ex_officio_restoration,
        CLERK_A,
        ExOfficioRestoration(**dates(), target=Target(resident_code=person.resident_code)),
        "resident_code",
        "not_removed",
    )
    run(
        session_maker,
        service.ex_officio_removal,
        CLERK_A,
        ExOfficioRemoval(
            **dates(), target=Target(resident_code=person.resident_code), reason="居住の実態なし"
        ),
    )


def test_one_active_record_per_code(
    world: list[str], session_maker: sessionmaker[Session], registry: Registry
) -> None:
    with session_maker() as s:
        person = single(s, A)
    run(
        session_maker,
        service.move_out,
        CLERK_A,
        MoveOut(
            **dates(3, 2),
            targets=[Target(resident_code=person.resident_code)],
            destination_municipality_code=B,
            destination_address="新宿区",
        ),
    )
    drain(session_maker, registry)
    run(
        session_maker,
        service.move_in,
        CLERK_B,
        MoveIn(
            **dates(0, 1),
            persons=[
                MoveInPerson(
                    resident_code=person.resident_code,
                    family_name=person.family_name,
                    given_name=person.given_name,
                    birth_date=person.birth_date,
                    sex=sex_of(person),
                )
            ],
            address=Address(town="西新宿", banchi="1"),
            household=HouseholdChoice(),
        ),
    )
    # The 除票 in 千代田区 cannot come back while the person lives in 新宿区.
    refused(
        session_maker,
        service.ex_officio_restoration,
        CLERK_A,
        ExOfficioRestoration(**dates(), target=Target(resident_code=person.resident_code)),
        "resident_code",
        "one_active_record",
    )


def test_resident_code_change_keeps_the_individual_number(
    world: list[str], session_maker: sessionmaker[Session]
) -> None:
    with session_maker() as s:
        person = single(s)
    result = run(
        session_maker,
        service.resident_code_change,
        CLERK_A,
        ResidentCodeChange(**dates(0, 0), target=Target(resident_code=person.resident_code)),
    )
    new = result.records[0].resident_code
    assert new != person.resident_code
    with session_maker() as s:
        r = s.get(Resident, person.id)
        assert r is not None and r.resident_code == new and r.individual_number == person.individual_number
        old = s.get(ResidentCode, person.resident_code)
        assert old is not None and old.status == "retired" and old.replaced_by == new
        event = s.scalars(select(OutboxEvent).where(OutboxEvent.key == new)).one()
        assert event.payload["previous_resident_code"] == person.resident_code
        assert [h.kind for h in service.history(s, CLERK_A, new)] == ["resident_code_change"]


def test_emigration_and_return(world: list[str], session_maker: sessionmaker[Session]) -> None:
    with session_maker() as s:
        person = single(s)
    run(
        session_maker,
        service.emigration,
        CLERK_A,
        Emigration(
            **dates(200, 200),
            targets=[Target(resident_code=person.resident_code)],
            destination_country="アメリカ合衆国",
        ),
    )
    back = Immigration(
        **dates(1, 3), resident_code=person.resident_code, previous_address="アメリカ合衆国", address=ADDRESS
    )
    run(session_maker, service.immigration, CLERK_A, back)
    with session_maker() as s:
        r = s.get(Resident, person.id)
        assert r is not None and r.status == "active" and r.previous_address == "アメリカ合衆国"
        assert r.resident_since == days_ago(3) and r.town == "神田錦町"
        kinds = [h.kind for h in service.history(s, CLERK_A, person.resident_code)]
        assert kinds == ["emigration", "immigration"]
    # A new person from abroad gets a new code.
    new = run(
        session_maker,
        service.immigration,
        CLERK_A,
        Immigration(
            **dates(1, 2),
            person=baby(nationality="ブラジル", residence_status="定住者"),
            birth_date=date(1990, 5, 1),
            previous_address="ブラジル連邦共和国",
            address=ADDRESS,
        ),
        cipher=CIPHER,
    )
    with session_maker() as s:
        r2 = s.scalars(select(Resident).where(Resident.resident_code == new.records[0].resident_code)).one()
        assert r2.foreign_resident_since == days_ago(2) and r2.relationship == "世帯主"


def test_ex_officio_entry(world: list[str], session_maker: sessionmaker[Session]) -> None:
    with session_maker() as s:
        head = family(s)[0]
    refused(
        session_maker,
        service.ex_officio_entry,
        CLERK_A,
        ExOfficioEntry(
            **dates(),
            person=baby(),
            birth_date=date(1980, 1, 1),
            address=ADDRESS,
            household=HouseholdChoice(join_household_of=head.resident_code),
        ),
        "household.relationships",
        "relationship_required",
        cipher=CIPHER,
    )
    ok = run(
        session_maker,
        service.ex_officio_entry,
        CLERK_A,
        ExOfficioEntry(**dates(), person=baby(), birth_date=date(1980, 1, 1), address=ADDRESS),
        cipher=CIPHER,
    )
    with session_maker() as s:
        r = s.scalars(select(Resident).where(Resident.resident_code == ok.records[0].resident_code)).one()
        assert r.relationship == "世帯主" and r.town == "神田錦町"


# --- DV restriction, search, history ---------------------------------------------------------------


def test_restricted_persons_are_hidden_from_third_parties(
    world: list[str], session_maker: sessionmaker[Session]
) -> None:
    with session_maker() as s:
        person = single(s)
    with session_maker.begin() as s:
        service.set_restriction(
            s,
            CLERK_A,
            SetRestriction(
                resident_code=person.resident_code,
                reason="DV",
                starts_on=days_ago(1),
                ends_on=days_ago(1) + timedelta(days=365),
            ),
            today=TODAY,
        )
        assert service.is_restricted(s, person.resident_code, TODAY)
        assert not service.is_restricted(s, person.resident_code, days_ago(2))
    query = SearchQuery(resident_code=person.resident_code)
    with session_maker.begin() as s:
        assert service.search(s, CLERK_A, query, purpose="third_party", today=TODAY).items == []
        [hit] = service.search(s, CLERK_A, query, today=TODAY).items
        assert hit.restricted
        with pytest.raises(AccessDenied, match="dv_restricted"):
            service.get_record(s, CLERK_A, person.resident_code, purpose="third_party", today=TODAY)
    with session_maker.begin() as s:
        assert service.get_record(s, CLERK_A, person.resident_code, today=TODAY).restricted
        entries = s.scalars(select(AuditEntry).where(AuditEntry.subject == person.resident_code)).all()
        flagged = [(e.action, e.flags) for e in entries if "dv_restricted" in e.flags]
        assert ("refuse", ["dv_restricted"]) in flagged and ("read", ["dv_restricted"]) in flagged
        assert len(flagged) == len(entries)  # every access since the measure began is flagged
    with session_maker.begin() as s:
        assert (
            service.lift_restriction(
                s,
                CLERK_A,
                LiftRestriction(
                    resident_code=person.resident_code, reason="期間満了前の終了申出", lifted_on=TODAY
                ),
                today=TODAY,
            )
            == 1
        )
        assert not service.is_restricted(s, person.resident_code, TODAY)
        assert service.search(s, CLERK_A, query, purpose="third_party", today=TODAY).total == 1
    # The network learns the whole state each time (set, then lifted), never the reason.
    with session_maker() as s:
        sent = s.scalars(
            select(OutboxEvent)
            .where(OutboxEvent.type == "register.restriction_changed")
            .order_by(OutboxEvent.seq)
        ).all()
    assert [e.key for e in sent] == [person.resident_code] * 2
    set_, lifted = (e.payload["measures"] for e in sent)
    assert [m["lifted_on"] for m in set_] == [None]
    assert [m["lifted_on"] for m in lifted] == [TODAY.isoformat()]
    assert set_[0]["id"] == lifted[0]["id"] and "DV" not in str(sent[-1].payload)


def test_search_by_name_birth_date_address_code_with_pages(
    world: list[str], session_maker: sessionmaker[Session]
) -> None:
    with session_maker.begin() as s:
        person = single(s)
        everyone = service.search(s, CLERK_A, SearchQuery(page_size=100), today=TODAY)
        in_a = s.scalar(
            select(func.count()).where(Resident.municipality_code == A, Resident.status == "active")
        )
        assert everyone.total == in_a and all(i.municipality_code == A for i in everyone.items)
        page2 = service.search(s, CLERK_A, SearchQuery(page=2, page_size=5), today=TODAY)
        assert [i.resident_code for i in page2.items] == [i.resident_code for i in everyone.items[5:10]]
        by = {
            "kanji": SearchQuery(name=person.family_name + person.given_name[:1]),
            "kana prefix": SearchQuery(name=person.family_name_kana[:2]),
            "birth": SearchQuery(birth_date=person.birth_date),
            "address": SearchQuery(address=person.banchi),
            "code": SearchQuery(resident_code=person.resident_code),
        }
        for label, query in by.items():
            codes = [i.resident_code for i in service.search(s, CLERK_A, query, today=TODAY).items]
            assert person.resident_code in codes, label
        reads = s.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "read"))
        assert reads and reads >= everyone.total


def test_history_reconstructs_every_earlier_state(
    world: list[str], session_maker: sessionmaker[Session]
) -> None:
    with session_maker() as s:
        person = single(s)
    states = []
    with session_maker() as s:
        states.append(service.snapshot(s.get_one(Resident, person.id)))
    steps = [
        (
            service.relocation,
            Relocation(**dates(5, 6), targets=[Target(resident_code=person.resident_code)], address=ADDRESS),
        ),
        (
            service.name_change,
            NameChange(**dates(3, 4), target=Target(resident_code=person.resident_code), family_name="改名"),
        ),
        (service.death, Death(**dates(1, 2), target=Target(resident_code=person.resident_code))),
    ]
    for fn, command in steps:
        run(session_maker, fn, CLERK_A, command)
        with session_maker() as s:
            states.append(service.snapshot(s.get_one(Resident, person.id)))
    with session_maker() as s:
        rows = s.scalars(
            select(ChangeRecord).where(ChangeRecord.resident_id == person.id).order_by(ChangeRecord.seq)
        ).all()
        assert [r.resident_version for r in rows] == [
            person.version + 1,
            person.version + 2,
            person.version + 3,
        ]
        assert service.reconstruct(s, person.id, upto_seq=0) == states[0]
        for row, expected in zip(rows, states[1:], strict=True):
            assert service.reconstruct(s, person.id, upto_seq=row.seq) == expected


def test_unknown_record(world: list[str], session_maker: sessionmaker[Session]) -> None:
    code = ResidentCodeGenerator(random.Random(5)).generate()
    refused(
        session_maker,
        service.name_change,
        CLERK_A,
        NameChange(**dates(), target=Target(resident_code=code), family_name="誰"),
        "resident_code",
        "not_found",
    )
    with session_maker() as s, pytest.raises(NotFound):
        service.get_record(s, CLERK_A, code)


# --- bulk path -------------------------------------------------------------------------------------


def test_batch_applies_the_same_changes_as_single_events(
    world: list[str], session_maker: sessionmaker[Session]
) -> None:
    with session_maker() as s:
        members = family(s)
        person = single(s)
    commands: list[NameChange | Relocation] = [
        NameChange(
            **dates(4, 5),
            target=Target(resident_code=person.resident_code, version=person.version),
            family_name="一括",
            family_name_kana="ｲｯｶﾂ",
            keep_old_family_name=True,
        ),
        Relocation(
            **dates(3, 4), targets=[Target(resident_code=m.resident_code) for m in members], address=ADDRESS
        ),
        # The same person again in the same batch: versions go up one per event.
        NameChange(**dates(2, 3), target=Target(resident_code=person.resident_code), given_name="二回目"),
    ]
    with session_maker.begin() as s:
        assert service.apply_batch(s, CLERK_A, commands, today=TODAY) == 2 + len(members)
    with session_maker() as s:
        r = s.get_one(Resident, person.id)
        assert (r.family_name, r.given_name, r.old_family_name) == ("一括", "二回目", person.family_name)
        assert r.family_name_kana == "イッカツ" and r.version == person.version + 2
        assert person.resident_code in [
            i.resident_code
            for i in service.search(s, CLERK_A, SearchQuery(name="イッカツ"), today=TODAY).items
        ]
        rows = s.scalars(
            select(ChangeRecord).where(ChangeRecord.resident_id == person.id).order_by(ChangeRecord.seq)
        ).all()
        assert [row.resident_version for row in rows] == [person.version + 1, person.version + 2]
        assert rows[1].before == {"given_name": person.given_name} and rows[1].after == {
            "given_name": "二回目"
        }
        for m in members:
            moved = s.get_one(Resident, m.id)
            assert moved.town == "神田錦町" and moved.version == m.version + 1
            assert service.reconstruct(s, m.id) == service.snapshot(moved)
        assert s.get_one(Household, members[0].household_id).town == "神田錦町"
        events = s.scalars(select(OutboxEvent).where(OutboxEvent.type == "register.identity_changed")).all()
        assert len(events) == 2 + len(members)
        audited = s.scalars(select(AuditEntry).where(AuditEntry.subject == person.resident_code)).all()
        assert [e.action for e in audited] == ["update", "update", "read"]  # two events, one search


def test_batch_is_all_or_nothing(world: list[str], session_maker: sessionmaker[Session]) -> None:
    with session_maker() as s:
        head, wife = family(s)[:2]
        person = single(s)
    good = NameChange(**dates(), target=Target(resident_code=person.resident_code), family_name="良")
    stale = NameChange(
        **dates(), target=Target(resident_code=head.resident_code, version=head.version + 5), family_name="古"
    )
    with session_maker() as s:
        before = state(s)
    with pytest.raises(ConflictError) as caught, session_maker.begin() as s:
        service.apply_batch(s, CLERK_A, [good, stale], today=TODAY)
    assert (caught.value.field, caught.value.rule) == ("commands[1].version", "stale_version")
    partial = Relocation(**dates(), targets=[Target(resident_code=wife.resident_code)], address=ADDRESS)
    with pytest.raises(RegisterError) as refused_batch, session_maker.begin() as s:
        service.apply_batch(s, CLERK_A, [good, partial], today=TODAY)
    assert (refused_batch.value.field, refused_batch.value.rule) == (
        "commands[1].targets",
        "bulk_whole_household",
    )
    with session_maker() as s:
        assert state(s) == before
