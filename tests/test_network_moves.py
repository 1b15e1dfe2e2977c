"""転出証明書情報 through the network (SPEC K2, issue 4 item 4): checked, addressed, applied once."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from kiban.core import master
from kiban.core.events import DomainEvent, Registry, drain, emit, row_to_event
from kiban.core.identifiers import IndividualNumberCipher, ResidentCodeGenerator
from kiban.core.models.events import OutboxEvent
from kiban.network import moves
from kiban.network import service as network
from kiban.network.handlers import register_handlers as network_handlers
from kiban.network.models import QuarantinedMessage
from kiban.numbering import service as numbering
from kiban.numbering.notices import notify_assigned
from kiban.register import service
from kiban.register.handlers import register_handlers
from kiban.register.loader import load_population
from kiban.register.models import MoveOutCertificate, Resident
from kiban.register.population import generate_population
from kiban.register.rules import RegisterError
from kiban.register.schemas import Actor, Address, HouseholdChoice, MoveIn, MoveInPerson, MoveOut, Target

TODAY = date(2026, 11, 25)
A = "131016"  # 千代田区 (東京都)
B = "212016"  # 岐阜市 (岐阜県)
C = "131041"  # 新宿区 (東京都)
CLERK_A = Actor(username="clerk-a", municipality_code=A)
CLERK_B = Actor(username="clerk-b", municipality_code=B)
CIPHER = IndividualNumberCipher(bytes(range(32)))


def full_registry() -> Registry:
    reg = Registry()
    register_handlers(reg)
    network_handlers(reg)
    if not reg.find("network.forward_move_out"):  # until network.handlers calls it itself
        moves.register_handlers(reg)
    return reg


@pytest.fixture
def registry() -> Registry:
    return full_registry()


@pytest.fixture
def world(engine: Engine, session_maker: sessionmaker[Session], registry: Registry) -> list[str]:
    households = list(generate_population([A, B], 30, seed=7, as_of=date(2025, 4, 1)))
    with session_maker.begin() as s:
        codes = numbering.issue_resident_codes(s, 30, ResidentCodeGenerator(random.Random(7)))
    load_population(engine, households, iter(codes))
    with session_maker.begin() as s:
        assigned = numbering.assign_individual_numbers_bulk(s, codes, CIPHER)
        where = {c: m for c, m in s.execute(select(Resident.resident_code, Resident.municipality_code))}
        notify_assigned(s, assigned, where)
    drain(session_maker, registry)
    with session_maker.begin() as s:
        network.seed_copies(s)
    return codes


@pytest.fixture
def s(session_maker: sessionmaker[Session]) -> Iterator[Session]:
    with session_maker() as session:
        yield session


def single(s: Session, municipality: str) -> Resident:
    rows = s.scalars(
        select(Resident).where(Resident.municipality_code == municipality, Resident.status == "active")
    ).all()
    sizes: dict[Any, int] = {}
    for r in rows:
        sizes[r.household_id] = sizes.get(r.household_id, 0) + 1
    return next(r for r in rows if sizes[r.household_id] == 1 and r.relationship == "世帯主")


def move_out(session_maker: sessionmaker[Session], person: Resident, to: str = B) -> None:
    with session_maker.begin() as s:
        service.move_out(
            s,
            CLERK_A,
            MoveOut(
                notified_on=TODAY - timedelta(days=3),
                effective_on=TODAY - timedelta(days=1),
                targets=[Target(resident_code=person.resident_code)],
                destination_municipality_code=to,
                destination_address="岐阜県岐阜市大宮町1番地",
            ),
            today=TODAY,
        )


def move_in_command(person: Resident) -> MoveIn:
    sex: Literal[1, 2] = 1 if person.sex == 1 else 2
    return MoveIn(
        notified_on=TODAY,
        effective_on=TODAY - timedelta(days=1),
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
    )


def certificates(s: Session, code: str) -> list[tuple[str, str, str]]:
    s.expire_all()
    rows = s.scalars(
        select(MoveOutCertificate)
        .where(MoveOutCertificate.resident_code == code)
        .order_by(MoveOutCertificate.role)
    )
    return [(r.role, r.holder_municipality_code, r.status) for r in rows]


def events(s: Session, code: str, event_type: str) -> list[DomainEvent]:
    s.expire_all()
    rows = s.scalars(
        select(OutboxEvent)
        .where(OutboxEvent.key == code, OutboxEvent.type == event_type)
        .order_by(OutboxEvent.seq)
    )
    return [row_to_event(r) for r in rows]


def quarantine_rules(s: Session) -> list[tuple[str, str, str]]:
    s.expire_all()
    rows = s.scalars(select(QuarantinedMessage).order_by(QuarantinedMessage.id))
    return [(q.event_type, q.field, q.rule) for q in rows]


def test_a_move_between_two_municipalities_goes_through_the_network(
    world: list[str], session_maker: sessionmaker[Session], registry: Registry, s: Session
) -> None:
    person = single(s, A)
    code = person.resident_code
    move_out(session_maker, person)
    drain(session_maker, registry)
    [sent] = events(s, code, "register.moved_out")
    [relayed] = events(s, code, moves.MOVE_OUT_FORWARDED)
    # Addressed to the destination, the register's certificate unchanged inside.
    assert relayed.payload["to_municipality_code"] == B
    assert relayed.payload["from_municipality_code"] == A
    assert relayed.payload["origin_event_id"] == sent.id
    assert relayed.payload["certificate"] == sent.payload
    assert certificates(s, code) == [("issued", A, "pending"), ("received", B, "pending")]

    with session_maker.begin() as tx:
        service.move_in(tx, CLERK_B, move_in_command(person), today=TODAY)
    drain(session_maker, registry)
    [back] = events(s, code, moves.MOVE_IN_FORWARDED)
    assert (
        back.payload["to_municipality_code"] == B
        and back.payload["certificate"]["certificate_id"] == (sent.payload["certificate_id"])
    )
    assert certificates(s, code) == [("issued", A, "completed"), ("received", B, "completed")]
    assert quarantine_rules(s) == []
    # The national copy followed: removed in A, active in B.
    versions = network.national_history(s, code)
    assert [(v.municipality_code, v.status) for v in versions][-2:] == [(A, "removed"), (B, "active")]


def test_without_the_network_relay_the_certificate_never_arrives(
    world: list[str], session_maker: sessionmaker[Session], s: Session
) -> None:
    register_only = Registry()
    register_handlers(register_only)
    person = single(s, A)
    move_out(session_maker, person)
    drain(session_maker, register_only)
    assert certificates(s, person.resident_code) == [("issued", A, "pending")]
    with session_maker.begin() as tx, pytest.raises(RegisterError) as refused:
        service.move_in(tx, CLERK_B, move_in_command(person), today=TODAY)
    assert refused.value.rule == "move_out_required"


def _unknown_code() -> str:
    taken = {m.code for m in master.municipalities()}
    return next(
        code
        for code in (master.with_check_digit(f"{n:05d}") for n in range(1000, 99999, 7))
        if code not in taken
    )


@pytest.mark.parametrize(
    ("change", "field", "rule"),
    [
        ({"tax_amount": 120000}, "payload.tax_amount", "not_certificate_information"),
        ({"to_municipality_code": "UNKNOWN"}, "payload.to_municipality_code", "unknown_municipality"),
        ({"to_municipality_code": A}, "payload.to_municipality_code", "same_municipality"),
        ({"from_municipality_code": C}, "payload.from_municipality_code", "origin_mismatch"),
        ({"certificate_id": "not-a-uuid"}, "payload.certificate_id", "uuid"),
        ({"birth_date": "2001-02-30"}, "payload.birth_date", "iso_date"),
        ({"sex": 3}, "payload.sex", "sex_code"),
        ({"individual_number": "123456789012"}, "payload.individual_number", "check_digit"),
        ({"family_name": "山\x1b田"}, "payload.family_name", "control_characters"),
        ({"address": {"town": "x", "honseki": "y"}}, "payload.address", "not_certificate_information"),
    ],
)
def test_a_bad_or_misaddressed_certificate_is_quarantined_and_never_arrives(
    world: list[str],
    session_maker: sessionmaker[Session],
    registry: Registry,
    s: Session,
    change: dict[str, Any],
    field: str,
    rule: str,
) -> None:
    person = single(s, A)
    # A genuine certificate as the register would write it, then spoiled and sent as a new message.
    move_out(session_maker, person)
    [genuine] = events(s, person.resident_code, "register.moved_out")
    if change.get("to_municipality_code") == "UNKNOWN":
        change = {"to_municipality_code": _unknown_code()}
    payload = {**genuine.payload, **change, "certificate_id": change.get("certificate_id", str(uuid.uuid4()))}
    with session_maker.begin() as tx:
        bad = emit(tx, "register.moved_out", person.resident_code, payload)
    drain(session_maker, registry)
    assert (moves.MOVED_OUT, field, rule) in quarantine_rules(s)
    relayed = events(s, person.resident_code, moves.MOVE_OUT_FORWARDED)
    assert [e.payload["origin_event_id"] for e in relayed] == [genuine.id]  # only the genuine one
    received = s.scalars(
        select(MoveOutCertificate.certificate_id).where(
            MoveOutCertificate.resident_code == person.resident_code, MoveOutCertificate.role == "received"
        )
    ).all()
    assert [str(c) for c in received] == [genuine.payload["certificate_id"]]
    # What the quarantine keeps: no 本籍 and nothing that is not 本人確認情報.
    row = s.scalars(select(QuarantinedMessage).where(QuarantinedMessage.event_id == bad.id)).one()
    assert row.document["payload"]["honseki"] == "<withheld>"
    assert row.municipality_code in (A, C)


def test_a_key_that_is_not_the_payloads_code_is_quarantined(
    world: list[str], session_maker: sessionmaker[Session], registry: Registry, s: Session
) -> None:
    person = single(s, A)
    other = single(s, B)
    move_out(session_maker, person)
    [genuine] = events(s, person.resident_code, "register.moved_out")
    with session_maker.begin() as tx:
        emit(
            tx,
            "register.moved_out",
            other.resident_code,
            {**genuine.payload, "certificate_id": str(uuid.uuid4())},
        )
    drain(session_maker, registry)
    assert (moves.MOVED_OUT, "payload.resident_code", "key_match") in quarantine_rules(s)
    assert events(s, other.resident_code, moves.MOVE_OUT_FORWARDED) == []


def test_a_replayed_certificate_applies_once(
    world: list[str], session_maker: sessionmaker[Session], registry: Registry, s: Session
) -> None:
    person = single(s, A)
    move_out(session_maker, person)
    drain(session_maker, registry)
    [genuine] = events(s, person.resident_code, "register.moved_out")
    # The same event again (an operator's replay, a second consumer) …
    with session_maker.begin() as tx:
        assert moves.forward_move_out(tx, genuine) == "duplicate"
    # … and a resend of the same certificate under a new event id.
    with session_maker.begin() as tx:
        emit(tx, "register.moved_out", person.resident_code, genuine.payload)
    drain(session_maker, registry)
    assert drain(session_maker, registry) == 0
    assert len(events(s, person.resident_code, moves.MOVE_OUT_FORWARDED)) == 1
    assert certificates(s, person.resident_code) == [("issued", A, "pending"), ("received", B, "pending")]
    assert quarantine_rules(s) == []
    # The register's handler, given the forwarded event twice, keeps one copy.
    [relayed] = events(s, person.resident_code, moves.MOVE_OUT_FORWARDED)
    from kiban.register.handlers import receive_forwarded_move_out

    with session_maker.begin() as tx:
        receive_forwarded_move_out(tx, relayed)
    assert certificates(s, person.resident_code) == [("issued", A, "pending"), ("received", B, "pending")]


def test_a_misaddressed_move_in_notice_is_quarantined_and_the_move_out_stays_pending(
    world: list[str], session_maker: sessionmaker[Session], registry: Registry, s: Session
) -> None:
    person = single(s, A)
    move_out(session_maker, person)
    drain(session_maker, registry)
    [genuine] = events(s, person.resident_code, "register.moved_out")
    notice = {
        "certificate_id": genuine.payload["certificate_id"],
        "resident_code": person.resident_code,
        "from_municipality_code": A,
        "to_municipality_code": C,  # not where the certificate went
        "effective_on": TODAY.isoformat(),
    }
    with session_maker.begin() as tx:
        emit(tx, "register.moved_in", person.resident_code, notice)
        emit(tx, "register.moved_in", person.resident_code, {**notice, "to_municipality_code": B, "extra": 1})
    drain(session_maker, registry)
    rules = quarantine_rules(s)
    assert (moves.MOVED_IN, "payload.to_municipality_code", "misaddressed") in rules
    assert (moves.MOVED_IN, "payload.extra", "not_certificate_information") in rules
    assert events(s, person.resident_code, moves.MOVE_IN_FORWARDED) == []
    assert certificates(s, person.resident_code) == [("issued", A, "pending"), ("received", B, "pending")]


def test_a_forwarded_message_without_its_certificate_is_refused(
    world: list[str], session_maker: sessionmaker[Session], s: Session
) -> None:
    from kiban.register.handlers import receive_forwarded_move_out

    person = single(s, A)
    with session_maker.begin() as tx:
        event = emit(tx, moves.MOVE_OUT_FORWARDED, person.resident_code, {"to_municipality_code": B})
    with session_maker.begin() as tx, pytest.raises(ValueError, match="required"):
        receive_forwarded_move_out(tx, event)
    assert s.scalar(select(func.count()).select_from(MoveOutCertificate)) == 0


def test_subscribing_the_relay_twice_is_harmless() -> None:
    registry = full_registry()
    moves.register_handlers(registry)
    assert len(registry.find("network.forward_move_out")) == 1
    assert len(registry.find("network.forward_move_in")) == 1


# --- properties: any hostile certificate is a clear error, never anything else ------------------------


def _valid_payload() -> dict[str, Any]:
    return {
        "certificate_id": str(uuid.uuid4()),
        "group_id": str(uuid.uuid4()),
        "resident_code": "12345678903",
        "individual_number": "123456789018",
        "from_municipality_code": A,
        "to_municipality_code": B,
        "destination_address": "岐阜県岐阜市大宮町1番地",
        "planned_move_on": "2026-11-24",
        "notified_on": "2026-11-22",
        "family_name": "山田",
        "given_name": "花子",
        "family_name_kana": "ヤマダ",
        "given_name_kana": "ハナコ",
        "birth_date": "1990-04-01",
        "sex": 2,
        "address": {
            "prefecture": "東京都",
            "municipality": "千代田区",
            "town": "神田錦町",
            "banchi": "1番地",
        },
        "address_text": "東京都千代田区神田錦町1番地",
        "honseki": "東京都千代田区",
    }


def _event(payload: dict[str, Any], key: str = "12345678903") -> DomainEvent:
    from datetime import UTC, datetime

    return DomainEvent(str(uuid.uuid4()), moves.MOVED_OUT, key, 1, datetime.now(UTC), payload, "test")


def test_the_valid_example_passes() -> None:
    assert moves.check_certificate(_event(_valid_payload()))["to_municipality_code"] == B


_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=12), st.lists(st.integers(), max_size=2)
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(_valid_payload())),
    _values,
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12),
)
def test_a_spoiled_certificate_is_refused_with_a_field_and_a_rule(name: str, value: Any, extra: str) -> None:
    from hypothesis import assume

    from kiban.network.service import NetworkError

    spoiled = {**_valid_payload(), name: value}
    try:
        moves.check_certificate(_event(spoiled))
    except NetworkError as exc:
        assert exc.field.startswith("payload.") and exc.rule
    # An item outside the 転出証明書情報 is always refused, whatever its value.
    assume(extra not in moves.CERTIFICATE_KEYS)
    with pytest.raises(NetworkError) as err:
        moves.check_certificate(_event({**_valid_payload(), extra: value}))
    assert (err.value.field, err.value.rule) == (f"payload.{extra}", "not_certificate_information")
