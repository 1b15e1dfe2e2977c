"""The register's side of the network (issue 4): numbers only requested in distributed mode; statuses.

- Distributed mode (``KIBAN_EVENT_TRANSPORT=nats``): a 出生 gives a new 住民票コード and *requests*
  the 個人番号 — the ``register.identity_changed`` goes up without one, the national node's
  numberer assigns it and ``numbering.number_assigned`` comes back down to the register. The
  municipal node never reads a number key. Embedded mode keeps assigning in the same transaction.
  The two nodes are two databases here; the events travel by hand (the NATS path is
  tests/test_network_distributed.py).
- ``register.service.statuses``: the bulk status reader other capabilities use (the cards intake).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from kiban.core.events import apply_event, row_to_event
from kiban.core.identifiers import IndividualNumberCipher, ResidentCodeGenerator
from kiban.core.models.events import OutboxEvent
from kiban.network.distributed import municipal_registry, national_registry
from kiban.network.models import NationalIdentity
from kiban.numbering import service as numbering
from kiban.numbering.models import IndividualNumber
from kiban.register import service
from kiban.register.loader import load_population
from kiban.register.models import Resident
from kiban.register.population import generate_population
from kiban.register.schemas import (
    Actor,
    Address,
    Birth,
    Death,
    HouseholdChoice,
    Immigration,
    PersonData,
    Target,
)
from test_network_distributed import national, national_template, national_url  # noqa: F401 - fixtures

A = "131016"  # 千代田区
TODAY = date(2026, 11, 25)
CLERK = Actor(username="clerk-a", municipality_code=A)
MUNICIPAL_CIPHER = IndividualNumberCipher(bytes(range(32)))
NATIONAL_CIPHER = IndividualNumberCipher(bytes(range(32, 64)))


@pytest.fixture
def town(engine: Engine, session_maker: sessionmaker[Session]) -> list[str]:
    """30 residents of 千代田区 loaded in bulk (no events), with 住民票コード and 個人番号."""
    households = list(generate_population([A], 30, seed=21, as_of=date(2025, 4, 1)))
    with session_maker.begin() as s:
        codes = numbering.issue_resident_codes(s, 30, ResidentCodeGenerator(random.Random(21)))
    load_population(engine, households, iter(codes))
    with session_maker.begin() as s:
        for code, number in numbering.assign_individual_numbers_bulk(s, codes, MUNICIPAL_CIPHER).items():
            s.execute(update(Resident).where(Resident.resident_code == code).values(individual_number=number))
    return codes


def _mother(session_maker: sessionmaker[Session]) -> Resident:
    with session_maker() as s:
        return s.scalars(
            select(Resident)
            .where(Resident.status == "active", Resident.sex == 2)
            .order_by(Resident.resident_code)
        ).first()  # type: ignore[return-value]


def _birth(household_of: str, seed: int) -> Birth:
    person = PersonData(
        family_name="山田", given_name="花子", family_name_kana="ヤマダ", given_name_kana="ハナコ", sex=2
    )
    return Birth(
        notified_on=TODAY - timedelta(days=1),
        effective_on=TODAY - timedelta(days=3),
        person=person,
        household_of=household_of,
    )


def test_in_distributed_mode_the_register_requests_the_number_and_the_national_node_assigns_it(
    town: list[str],
    session_maker: sessionmaker[Session],
    national: sessionmaker[Session],  # noqa: F811 - fixture
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("KIBAN_EVENT_TRANSPORT", "nats")
    monkeypatch.setenv("KIBAN_DATA_DIR", str(tmp_path / "municipal"))  # no number key on this node
    mother = _mother(session_maker)
    with session_maker.begin() as s:
        numbers_before = s.scalar(select(func.count()).select_from(IndividualNumber))
        result = service.birth(
            s,
            CLERK,
            _birth(mother.resident_code, 1),
            today=TODAY,
            generator=ResidentCodeGenerator(random.Random(7)),
        )
    code = result.records[0].resident_code
    with session_maker() as s:
        rows = s.scalars(select(OutboxEvent).where(OutboxEvent.key == code).order_by(OutboxEvent.seq)).all()
        # Only the request: the change goes up without a number; no notice, no number made here.
        assert [r.type for r in rows] == ["register.identity_changed"]
        assert rows[0].payload["individual_number"] is None and rows[0].payload["status"] == "active"
        assert s.scalar(select(func.count()).select_from(IndividualNumber)) == numbers_before
        child = s.scalars(select(Resident).where(Resident.resident_code == code)).one()
        assert child.individual_number is None
    assert not (tmp_path / "municipal" / "keys" / "numbering.key").exists()

    # The national node applies the change (as its consumer does): it assigns the number …
    applied = apply_event(national, national_registry(NATIONAL_CIPHER), row_to_event(rows[0]))
    assert applied.settled
    with national() as n:
        copy = n.scalars(
            select(NationalIdentity).where(
                NationalIdentity.resident_code == code, NationalIdentity.is_current
            )
        ).one()
        [notice] = n.scalars(select(OutboxEvent).where(OutboxEvent.type == "numbering.number_assigned")).all()
        assert notice.payload["resident_code"] == code and notice.payload["municipality_code"] == A
        number = notice.payload["individual_number"]
        assert copy.individual_number == number
    # … and the notice, come down, is written in the register.
    assert apply_event(session_maker, municipal_registry(), row_to_event(notice)).settled
    with session_maker() as s:
        child = s.scalars(select(Resident).where(Resident.resident_code == code)).one()
        assert child.individual_number == number


def test_a_new_person_from_abroad_only_requests_the_number_in_distributed_mode(
    town: list[str], session_maker: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KIBAN_EVENT_TRANSPORT", "nats")
    monkeypatch.setenv("KIBAN_DATA_DIR", str(tmp_path / "municipal"))
    person = PersonData(
        family_name="SMITH", given_name="JOHN", family_name_kana="スミス", given_name_kana="ジョン", sex=1
    )
    command = Immigration(
        notified_on=TODAY - timedelta(days=1),
        effective_on=TODAY - timedelta(days=2),
        person=person,
        birth_date=date(1990, 5, 1),
        previous_address="アメリカ合衆国",
        address=Address(town="丸の内", banchi="一丁目1番1号"),
        household=HouseholdChoice(),
    )
    with session_maker.begin() as s:
        result = service.immigration(
            s, CLERK, command, today=TODAY, generator=ResidentCodeGenerator(random.Random(9))
        )
    code = result.records[0].resident_code
    with session_maker() as s:
        rows = s.scalars(select(OutboxEvent).where(OutboxEvent.key == code)).all()
        assert [r.type for r in rows] == ["register.identity_changed"]
        assert rows[0].payload["individual_number"] is None
        assert s.scalar(select(func.count()).where(IndividualNumber.resident_code == code)) == 0


def test_in_embedded_mode_the_register_assigns_the_number_itself(
    town: list[str], session_maker: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KIBAN_EVENT_TRANSPORT", "embedded")
    assert not service.distributed_numbering()
    mother = _mother(session_maker)
    with session_maker.begin() as s:
        result = service.birth(
            s,
            CLERK,
            _birth(mother.resident_code, 2),
            today=TODAY,
            generator=ResidentCodeGenerator(random.Random(8)),
            cipher=MUNICIPAL_CIPHER,
        )
    code = result.records[0].resident_code
    with session_maker() as s:
        types = s.scalars(select(OutboxEvent.type).where(OutboxEvent.key == code).order_by(OutboxEvent.seq))
        assert list(types) == ["register.identity_changed", "numbering.number_assigned"]
        assert numbering.active_number(s, code) is not None  # assigned here, in the same transaction


@pytest.fixture
def s(session_maker: sessionmaker[Session]) -> Iterator[Session]:
    with session_maker() as session:
        yield session


def test_statuses_reads_many_people_at_once(
    town: list[str], session_maker: sessionmaker[Session], s: Session
) -> None:
    sizes = dict(s.execute(select(Resident.household_id, func.count()).group_by(Resident.household_id)).all())
    dead = next(r.resident_code for r in s.scalars(select(Resident)) if sizes[r.household_id] == 1)
    with session_maker.begin() as w:
        death = Death(
            notified_on=TODAY, effective_on=TODAY - timedelta(days=1), target=Target(resident_code=dead)
        )
        service.death(w, CLERK, death, today=TODAY)
    s.expire_all()
    unknown = "12345678903"
    found = service.statuses(s, [*town, unknown, dead])
    assert set(found) == set(town)  # unknown codes are absent; a code twice is read once
    assert found[dead].status == "removed" and found[dead].removed_reason == "死亡"
    assert found[dead].in_municipality(A) is not None and found[dead].in_municipality("212016") is None
    assert all(found[c].status == "active" and found[c].municipality_code == A for c in town if c != dead)
    assert service.statuses(s, []) == {}
    # Read-only: nothing written (no outbox, no audit).
    assert not s.new and not s.dirty
