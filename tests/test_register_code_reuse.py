"""A person who left and came back has a 除票 and an active record under one 住民票コード in one town;
seal registration and tax data must follow the active record (and not fail on the pair)."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, date, datetime

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, make_transient, sessionmaker

from kiban.core.accounts import create_user
from kiban.core.identifiers import ResidentCodeGenerator
from kiban.numbering import service as numbering
from kiban.register.loader import load_population
from kiban.register.models import Resident
from kiban.register.population import generate_population
from kiban.register.seals import register_seal, synthetic_seal_image
from kiban.register.taxes import record_tax_assessment, tax_assessment


def test_seal_and_tax_follow_the_active_record(engine: Engine, session_maker: sessionmaker[Session]) -> None:
    households = list(generate_population(["131016"], 30, seed=11, as_of=date(2025, 4, 1)))
    with session_maker.begin() as s:
        codes = numbering.issue_resident_codes(s, 30, ResidentCodeGenerator(random.Random(11)))
    load_population(engine, households, iter(codes))
    with session_maker.begin() as s:
        clerk = create_user(s, "clerk131016", "a-long-password-1", "clerk", municipality_code="131016")
        person = s.scalars(
            select(Resident).where(Resident.birth_date < date(1990, 1, 1)).order_by(Resident.resident_code)
        ).first()
        assert person is not None
        code, active_id = person.resident_code, person.id
        # The 除票 of an earlier stay in the same town: same code, closed, older.
        s.expunge(person)
        make_transient(person)
        person.id = uuid.uuid4()
        person.status = "removed"
        person.removed_reason = "転出"
        person.removed_on = date(2019, 3, 31)
        person.removed_at = datetime(2019, 4, 1, tzinfo=UTC)
        person.created_at = datetime(2010, 4, 1, tzinfo=UTC)
        s.add(person)
    with session_maker.begin() as s:
        assert len(s.scalars(select(Resident).where(Resident.resident_code == code)).all()) == 2
        image = synthetic_seal_image("山田", seed=1)
        seal = register_seal(s, clerk, code, image, "image/png", date(2025, 4, 1))
        assert seal.resident_id == active_id
        record_tax_assessment(s, clerk, code, 2025, 3_000_000, 4_000_000, 305_000, today=date(2025, 6, 1))
    with session_maker() as s:
        tax = tax_assessment(s, code, 2025)
        assert tax is not None and tax.resident_id == active_id


def test_death_ends_the_seal_registration(engine: Engine, session_maker: sessionmaker[Session]) -> None:
    from kiban.core.dispatch import build_registry
    from kiban.core.events import drain
    from kiban.register import service
    from kiban.register.schemas import Actor, Death, Target
    from kiban.register.seals import active_seal, seal_history

    households = list(generate_population(["131016"], 40, seed=12, as_of=date(2025, 4, 1)))
    with session_maker.begin() as s:
        codes = numbering.issue_resident_codes(s, 40, ResidentCodeGenerator(random.Random(12)))
    load_population(engine, households, iter(codes))
    alone = next(h for h in households if len(h.members) == 1 and h.members[0].birth_date < date(1990, 1, 1))
    with session_maker() as s:
        code = s.scalars(
            select(Resident.resident_code).where(
                Resident.family_name == alone.members[0].family_name,
                Resident.given_name == alone.members[0].given_name,
                Resident.birth_date == alone.members[0].birth_date,
            )
        ).first()
    assert code is not None
    with session_maker.begin() as s:
        clerk_row = create_user(s, "clerk131016", "a-long-password-1", "clerk", municipality_code="131016")
        image = synthetic_seal_image("山田", seed=2)
        register_seal(s, clerk_row, code, image, "image/png", date(2025, 4, 1))
    day = date(2025, 6, 1)
    with session_maker.begin() as s:
        clerk = Actor(username="clerk131016", municipality_code="131016")
        command = Death(target=Target(resident_code=code), notified_on=day, effective_on=day)
        service.death(s, clerk, command, today=day)
    drain(session_maker, build_registry())
    with session_maker() as s:
        assert active_seal(s, code) is None
        history = seal_history(s, code)
    assert [h.status for h in history] == ["abolished"]
