"""DV等支援措置 travel to the network (issue 4 item 1): its own copy, state replaces state, replay-safe.

The register emits ``register.restriction_changed`` with the municipality's whole current set of
measures for a person (no reason); the network keeps a copy per (住民票コード, municipality) and its
DV check reads that copy, never the register's table.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from kiban.core.events import DomainEvent, Registry, drain
from kiban.core.identifiers import IndividualNumberCipher, ResidentCodeGenerator
from kiban.network import service as network
from kiban.network.handlers import register_handlers as network_handlers
from kiban.network.models import QuarantinedMessage, RestrictionCopy, RestrictionSet
from kiban.numbering import service as numbering
from kiban.register import service
from kiban.register.handlers import register_handlers
from kiban.register.loader import load_population
from kiban.register.models import Resident, Restriction
from kiban.register.population import generate_population
from kiban.register.schemas import Actor, LiftRestriction, SetRestriction

A = "131016"  # 千代田区
B = "212016"  # 岐阜市
TODAY = date(2026, 11, 25)
CIPHER = IndividualNumberCipher(bytes(range(32)))
T0 = datetime(2026, 11, 25, 1, 0, tzinfo=UTC)
CODE = ResidentCodeGenerator(random.Random(77)).generate()


@pytest.fixture
def registry() -> Registry:
    reg = Registry()
    register_handlers(reg)
    network_handlers(reg)
    return reg


@pytest.fixture
def world(engine: Engine, session_maker: sessionmaker[Session], registry: Registry) -> list[str]:
    """10 residents of 千代田区 and 岐阜市 in both copies, with the agency registry."""
    households = list(generate_population([A, B], 10, seed=3, as_of=date(2025, 4, 1)))
    with session_maker.begin() as s:
        codes = numbering.issue_resident_codes(s, 10, ResidentCodeGenerator(random.Random(3)))
    load_population(engine, households, iter(codes))
    with session_maker.begin() as s:
        network.seed_copies(s)
        network.load_registry(s)
    return codes


@pytest.fixture
def s(session_maker: sessionmaker[Session]) -> Iterator[Session]:
    with session_maker() as session:
        yield session


def resident(s: Session, code: str) -> Resident:
    return s.scalars(select(Resident).where(Resident.resident_code == code)).one()


def state_event(
    measures: list[dict[str, Any]],
    *,
    at: datetime = T0,
    code: str = CODE,
    municipality: str = A,
    event_id: str | None = None,
    **extra: Any,
) -> DomainEvent:
    return DomainEvent(
        id=event_id or str(uuid.uuid4()),
        type="register.restriction_changed",
        key=code,
        schema_version=1,
        occurred_at=at,
        payload={"resident_code": code, "municipality_code": municipality, "measures": measures, **extra},
        source="test",
    )


def measure(
    n: int, starts: date = date(2026, 1, 1), ends: date = date(2027, 1, 1), lifted: date | None = None
):
    return {
        "id": f"m-{n}",
        "starts_on": starts.isoformat(),
        "ends_on": ends.isoformat(),
        "lifted_on": lifted.isoformat() if lifted else None,
    }


def apply(session_maker: sessionmaker[Session], event: DomainEvent) -> str:
    with session_maker.begin() as s:
        return network.apply_restrictions(s, event)


def held(s: Session, code: str = CODE) -> dict[str, list[tuple[str, date, date, date | None]]]:
    s.rollback()  # a fresh snapshot
    out: dict[str, list[tuple[str, date, date, date | None]]] = {}
    for row in s.scalars(
        select(RestrictionCopy)
        .where(RestrictionCopy.resident_code == code)
        .order_by(RestrictionCopy.municipality_code, RestrictionCopy.measure_id)
    ):
        out.setdefault(row.municipality_code, []).append(
            (row.measure_id, row.starts_on, row.ends_on, row.lifted_on)
        )
    return out


def quarantine_rules(s: Session) -> list[tuple[str, str]]:
    s.rollback()
    return [(q.field, q.rule) for q in s.scalars(select(QuarantinedMessage).order_by(QuarantinedMessage.id))]


def test_a_measure_set_and_lifted_at_the_register_reaches_the_network_copy(
    world: list[str], session_maker: sessionmaker[Session], registry: Registry, s: Session
) -> None:
    code = world[1]
    municipality = resident(s, code).municipality_code
    clerk = Actor(username="clerk", municipality_code=municipality)
    with session_maker.begin() as tx:
        service.set_restriction(
            tx,
            clerk,
            SetRestriction(
                resident_code=code,
                reason="DV（配偶者）",
                starts_on=TODAY,
                ends_on=TODAY + timedelta(days=365),
            ),
            today=TODAY,
        )
    assert not network.is_restricted(s, code, TODAY)  # not before the event is delivered
    drain(session_maker, registry)
    s.rollback()
    assert network.is_restricted(s, code, TODAY)
    [copy] = network.restrictions_of(s, code)
    assert (copy.municipality_code, copy.starts_on, copy.ends_on, copy.lifted_on) == (
        municipality,
        TODAY,
        TODAY + timedelta(days=365),
        None,
    )
    # The reason stays in the municipality: no column carries it, and the event did not either.
    assert "reason" not in {c.name for c in RestrictionCopy.__table__.columns}
    pension = _ask(session_maker, code)
    assert pension.outcome == "provided" and pension.restricted

    with session_maker.begin() as tx:
        service.lift_restriction(
            tx, clerk, LiftRestriction(resident_code=code, reason="申出の終了", lifted_on=TODAY), today=TODAY
        )
    drain(session_maker, registry)
    s.rollback()
    [copy] = network.restrictions_of(s, code)
    assert copy.lifted_on == TODAY
    assert not network.is_restricted(s, code, TODAY)
    assert network.is_restricted(s, code, TODAY - timedelta(days=1)) is False  # started TODAY
    assert not _ask(session_maker, code).restricted


def _ask(session_maker: sessionmaker[Session], code: str) -> Any:
    with session_maker.begin() as s:
        return network.provide(s, "nenkin", "pension_status_check", {"resident_code": code}, on=TODAY)


def test_the_network_reads_its_own_copy_not_the_register_table(
    world: list[str], session_maker: sessionmaker[Session], registry: Registry, s: Session
) -> None:
    code = world[2]
    clerk = Actor(username="clerk", municipality_code=resident(s, code).municipality_code)
    with session_maker.begin() as tx:
        service.set_restriction(
            tx,
            clerk,
            SetRestriction(
                resident_code=code, reason="DV", starts_on=TODAY, ends_on=TODAY + timedelta(days=30)
            ),
            today=TODAY,
        )
    drain(session_maker, registry)
    # The national node has no register: removing the register's rows changes nothing here…
    with session_maker.begin() as tx:
        tx.execute(delete(Restriction))
    assert network.is_restricted(s, code, TODAY) and _ask(session_maker, code).restricted
    # …and a measure that only the event carries is honoured.
    other = world[3]
    municipality = resident(s, other).municipality_code
    assert apply(session_maker, state_event([measure(1)], code=other, municipality=municipality)) == "applied"
    assert network.is_restricted(s, other, TODAY)


def test_each_municipality_has_its_own_set_and_a_new_state_replaces_the_old(
    session_maker: sessionmaker[Session], s: Session
) -> None:
    assert apply(session_maker, state_event([measure(1), measure(2)], at=T0)) == "applied"
    assert apply(session_maker, state_event([measure(9)], at=T0, municipality=B)) == "applied"
    lifted = measure(2, lifted=date(2026, 6, 1))
    assert apply(session_maker, state_event([lifted], at=T0 + timedelta(minutes=1))) == "applied"
    assert held(s) == {
        A: [("m-2", date(2026, 1, 1), date(2027, 1, 1), date(2026, 6, 1))],
        B: [("m-9", date(2026, 1, 1), date(2027, 1, 1), None)],
    }
    # A's empty set ends A's measures only; B's measure keeps the person restricted.
    assert apply(session_maker, state_event([], at=T0 + timedelta(minutes=2))) == "applied"
    assert held(s) == {B: [("m-9", date(2026, 1, 1), date(2027, 1, 1), None)]}
    assert network.is_restricted(s, CODE, date(2026, 11, 25))
    assert not network.is_restricted(s, CODE, date(2027, 1, 2))  # the period is over
    s.expire_all()
    sets = {r.municipality_code: r.measures for r in s.scalars(select(RestrictionSet))}
    assert sets == {A: 0, B: 1}


def test_a_replay_changes_nothing_and_an_older_state_never_wins(
    session_maker: sessionmaker[Session], s: Session
) -> None:
    newer = state_event([measure(1, lifted=date(2026, 3, 1))], at=T0 + timedelta(minutes=5))
    older = state_event([measure(1)], at=T0)
    assert apply(session_maker, newer) == "applied"
    assert apply(session_maker, newer) == "duplicate"
    assert apply(session_maker, older) == "quarantined"
    assert held(s) == {A: [("m-1", date(2026, 1, 1), date(2027, 1, 1), date(2026, 3, 1))]}
    assert quarantine_rules(s) == [("occurred_at", "out_of_order")]
    assert not network.is_restricted(s, CODE, date(2026, 11, 25))  # the lifted state holds


OUTSIDE = "not_identity_information"
BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"reason": "DV"}, "payload.reason", "not_identity_information"),
    (
        {"measures": [{**measure(1), "reason": "DV"}]},
        "payload.measures[0].reason",
        "not_identity_information",
    ),
    ({"measures": "m-1"}, "payload.measures", "required"),
    (
        {"measures": [measure(1, starts=date(2026, 5, 1), ends=date(2026, 4, 1))]},
        "payload.measures[0].ends_on",
        "period",
    ),
    ({"measures": [{**measure(1), "starts_on": "2026/01/01"}]}, "payload.measures[0].starts_on", "iso_date"),
    ({"measures": [measure(1), measure(1)]}, "payload.measures[1].id", "duplicate"),
    ({"measures": [{**measure(1), "id": ""}]}, "payload.measures[0].id", "required"),
    ({"measures": [measure(i) for i in range(101)]}, "payload.measures", "length"),
    ({"measures": [7]}, "payload.measures[0]", "required"),
    ({"municipality_code": "999999"}, "payload.municipality_code", "unknown_municipality"),
    ({"resident_code": "12345678901"}, "payload.resident_code", "check_digit"),
]


@pytest.mark.parametrize(("change", "field", "rule"), BAD, ids=[b[2] + ":" + b[1] for b in BAD])
def test_a_malformed_state_is_quarantined_with_its_reason_and_changes_nothing(
    session_maker: sessionmaker[Session], s: Session, change: dict[str, Any], field: str, rule: str
) -> None:
    assert apply(session_maker, state_event([measure(1)], at=T0)) == "applied"
    before = held(s)
    base = state_event([], at=T0 + timedelta(minutes=1))
    bad = DomainEvent(**{**base.__dict__, "payload": {**base.payload, **change}})
    assert apply(session_maker, bad) == "quarantined"
    assert held(s) == before
    assert quarantine_rules(s) == [(field, rule)]
    s.expire_all()
    [row] = s.scalars(select(QuarantinedMessage)).all()
    # What must not leave the municipality is not kept either.
    assert "DV" not in str(row.document)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(range(5)), repeats=st.lists(st.integers(0, 4), max_size=4))
def test_any_delivery_order_ends_with_the_newest_state(
    session_maker: sessionmaker[Session], order: list[int], repeats: list[int]
) -> None:
    with session_maker.begin() as s:
        s.execute(delete(RestrictionCopy))
        s.execute(delete(RestrictionSet))
        s.execute(delete(QuarantinedMessage))
    states = [
        state_event(
            [measure(j, lifted=date(2026, 2, 1) if j < i else None) for j in range(i + 1)],
            at=T0 + timedelta(seconds=i),
        )
        for i in range(5)
    ]
    seen_newest = -1
    for i in [*order, *repeats]:
        outcome = apply(session_maker, states[i])
        assert outcome == (
            "applied" if i > seen_newest else "duplicate" if i == seen_newest else "quarantined"
        )
        seen_newest = max(seen_newest, i)
    with session_maker() as s:
        assert held(s) == {
            A: [
                (f"m-{j}", date(2026, 1, 1), date(2027, 1, 1), date(2026, 2, 1) if j < 4 else None)
                for j in range(5)
            ]
        }
        assert s.scalar(select(func.count()).select_from(RestrictionSet)) == 1
