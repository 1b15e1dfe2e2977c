"""The register writes the 個人番号 notified by the numbering role, once, and only for the right record."""

from __future__ import annotations

import random
from datetime import date

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from kiban.core.events import Registry, drain, emit
from kiban.core.identifiers import IndividualNumberCipher, ResidentCodeGenerator
from kiban.numbering import service as numbering
from kiban.numbering.notices import notify_assigned
from kiban.register.handlers import apply_individual_number, register_handlers
from kiban.register.loader import load_population
from kiban.register.models import Resident
from kiban.register.population import generate_population


@pytest.fixture
def world(engine: Engine, session_maker: sessionmaker[Session]) -> list[str]:
    households = list(generate_population(["131016"], 40, seed=3, as_of=date(2025, 4, 1)))
    with session_maker.begin() as s:
        codes = numbering.issue_resident_codes(s, 40, ResidentCodeGenerator(random.Random(3)))
    load_population(engine, households, iter(codes))
    return codes


def test_notified_numbers_reach_the_register_exactly_once(
    world: list[str], session_maker: sessionmaker[Session]
) -> None:
    cipher = IndividualNumberCipher(bytes(range(32)))
    with session_maker.begin() as s:
        assigned = numbering.assign_individual_numbers_bulk(s, world, cipher)
        notify_assigned(s, assigned, dict.fromkeys(world, "131016"))
    registry = Registry()
    register_handlers(registry)
    assert drain(session_maker, registry) == 40
    # Replaying every event (same ids) changes nothing: versions stay where they were.
    with session_maker() as s:
        before = dict(s.execute(select(Resident.resident_code, Resident.version)).all())
        numbers = dict(s.execute(select(Resident.resident_code, Resident.individual_number)).all())
    assert numbers == assigned
    assert drain(session_maker, registry) == 0
    with session_maker() as s:
        after = dict(s.execute(select(Resident.resident_code, Resident.version)).all())
    assert after == before


def test_a_notice_whose_key_and_payload_disagree_is_refused(
    world: list[str], session_maker: sessionmaker[Session]
) -> None:
    cipher = IndividualNumberCipher(bytes(range(32)))
    with session_maker.begin() as s:
        number = numbering.assign_individual_number(s, world[0], cipher)
        event = emit(
            s,
            "numbering.number_assigned",
            world[1],
            {"resident_code": world[0], "individual_number": number, "municipality_code": "131016"},
        )
    with session_maker.begin() as s, pytest.raises(ValueError, match="key_match"):
        apply_individual_number(s, event)
    with session_maker() as s:
        query = select(Resident.individual_number).where(Resident.resident_code.in_(world[:2]))
        stored = s.scalars(query).all()
    assert stored == [None, None]


def test_a_malformed_number_is_refused(world: list[str], session_maker: sessionmaker[Session]) -> None:
    with session_maker.begin() as s:
        event = emit(
            s,
            "numbering.number_assigned",
            world[0],
            {"resident_code": world[0], "individual_number": "123456789012", "municipality_code": "131016"},
        )
    with session_maker.begin() as s, pytest.raises(ValueError, match="check_digit"):
        apply_individual_number(s, event)
