"""Events reach handlers in a running process: discovery of handler modules, background delivery."""

from __future__ import annotations

import random
import time
from datetime import date

from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from kiban.core.config import Settings
from kiban.core.dispatch import build_registry, handler_modules
from kiban.core.events import pending_count
from kiban.core.identifiers import IndividualNumberCipher, ResidentCodeGenerator
from kiban.numbering import service as numbering
from kiban.numbering.notices import notify_assigned
from kiban.register.loader import load_population
from kiban.register.models import Resident
from kiban.register.population import generate_population
from kiban.web.app import create_app


def test_registry_has_the_register_handlers() -> None:
    assert "kiban.register.handlers" in handler_modules()
    registry = build_registry()
    names = {s.name for s in registry.handlers_for("numbering.number_assigned")}
    assert "register.apply_individual_number" in names


def test_served_app_delivers_events_in_the_background(
    engine: Engine, session_maker: sessionmaker[Session], db_url: str, tmp_path
) -> None:
    households = list(generate_population(["131041"], 10, seed=5, as_of=date(2025, 4, 1)))
    with session_maker.begin() as s:
        codes = numbering.issue_resident_codes(s, 10, ResidentCodeGenerator(random.Random(5)))
    load_population(engine, households, iter(codes))
    with session_maker.begin() as s:
        assigned = numbering.assign_individual_numbers_bulk(s, codes, IndividualNumberCipher(bytes(32)))
        notify_assigned(s, assigned, dict.fromkeys(codes, "131041"))
    settings = Settings(data_dir=tmp_path, database_url_override=db_url)
    with TestClient(create_app(settings)):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with session_maker() as s:
                if pending_count(s) == 0:
                    break
            time.sleep(0.1)
    with session_maker() as s:
        stored = dict(s.execute(select(Resident.resident_code, Resident.individual_number)).all())
        assert pending_count(s) == 0
    assert stored == assigned


def test_metrics_show_the_outbox(session_maker: sessionmaker[Session], db_url: str, tmp_path) -> None:
    from kiban.core.events import emit
    from kiban.web.app import WebOptions

    with session_maker.begin() as s:
        for i in range(4):
            emit(s, "test.nobody_listens", f"k{i}", {"i": i})
    settings = Settings(data_dir=tmp_path, database_url_override=db_url)
    client = TestClient(create_app(settings, options=WebOptions(deliver_events=False)))
    body = client.get("/metrics").text
    assert 'kiban_events{state="undelivered"} 4.0' in body
    assert 'kiban_events{state="parked"} 0.0' in body
