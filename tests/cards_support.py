"""Shared fixtures and helpers of the card tests (tests/test_cards_*.py)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from kiban.cards import service
from kiban.cards.documents import issue_notice
from kiban.cards.handlers import register_handlers as cards_handlers
from kiban.cards.manufacturer import Manufacturer, card_path, receive_shipments
from kiban.cards.models import ApplicationForm, Card, QueueMessage, Transition
from kiban.cards.service import Actor, Application, IdentityCheck
from kiban.cards.softcard import SoftCard
from kiban.core.events import Registry, drain
from kiban.core.identifiers import IndividualNumberCipher, ResidentCodeGenerator
from kiban.core.models.events import OutboxEvent
from kiban.jpki import service as jpki
from kiban.jpki.handlers import register_handlers as jpki_handlers
from kiban.jpki.keys import FileKeyStore
from kiban.numbering import service as numbering
from kiban.numbering.notices import notify_assigned
from kiban.register.handlers import register_handlers as register_handlers_
from kiban.register.loader import load_population
from kiban.register.models import Resident
from kiban.register.population import generate_population

A = "131016"  # 千代田区
CLERK = Actor("clerk-a", "clerk", A)
CALL = Actor("agent-1", "call_centre")
OPERATOR = Actor("jlis-1", "national_operator")
CIPHER = IndividualNumberCipher(bytes(range(32)))
PINS = {"user_auth": "1234", "signature": "ABC123", "juki": "5678", "face": "9012"}
ID_OK = IdentityCheck(documents=("driving_licence",), checked_by="clerk-a")
TRANSPORT = "transport passphrase 131016"


@pytest.fixture
def registry() -> Registry:
    reg = Registry()
    register_handlers_(reg)
    jpki_handlers(reg)
    cards_handlers(reg)
    return reg


@pytest.fixture
def world(engine: Engine, session_maker: sessionmaker[Session], registry: Registry) -> list[str]:
    households = list(generate_population([A], 40, seed=7, as_of=date(2025, 4, 1)))
    with session_maker.begin() as s:
        codes = numbering.issue_resident_codes(s, 40, ResidentCodeGenerator(random.Random(7)))
    load_population(engine, households, iter(codes))
    with session_maker.begin() as s:
        assigned = numbering.assign_individual_numbers_bulk(s, codes, CIPHER)
        notify_assigned(s, assigned, dict.fromkeys(codes, A))
    drain(session_maker, registry)
    return codes


@pytest.fixture
def ks(tmp_path: Path) -> FileKeyStore:
    return FileKeyStore(tmp_path / "keys")


@pytest.fixture
def ca(session_maker: sessionmaker[Session], ks: FileKeyStore) -> FileKeyStore:
    with session_maker.begin() as s:
        jpki.init_hierarchies(
            s, ks, "http://127.0.0.1:8000", algorithm="p256", now=datetime.now(UTC) - timedelta(days=1)
        )
    return ks


@pytest.fixture
def s(session_maker: sessionmaker[Session]) -> Iterator[Session]:
    with session_maker() as session:
        yield session


def adults(s: Session, *, non_head: bool = False, min_age: int = 20) -> list[Resident]:
    cutoff = date.today().replace(year=date.today().year - min_age)
    query = select(Resident).where(
        Resident.status == "active", Resident.birth_date <= cutoff, Resident.period_of_stay_end.is_(None)
    )
    if non_head:
        query = query.where(Resident.relationship != "世帯主")
    return list(s.scalars(query.order_by(Resident.resident_code)))


def form(s: Session, code: str) -> str:
    return service.issue_forms(s, CLERK, [code], A)[code]


def notified(
    s: Session, code: str, tmp_path: Path, session_maker: sessionmaker[Session]
) -> tuple[Card, SoftCard]:
    """A card applied for, checked, produced, shipped and notified; returns it and the blank chip."""
    card = service.apply(s, CLERK, Application(form(s, code)))
    service.check(s, OPERATOR, card.card_id)
    service.order_production(s, OPERATOR)
    s.commit()
    Manufacturer(tmp_path / "cards", TRANSPORT, algorithm="p256").run(session_maker)
    receive_shipments(session_maker)
    issue_notice(s, CLERK, card.card_id)
    s.commit()
    soft = SoftCard.open(card_path(tmp_path / "cards", A, card.card_id), TRANSPORT)
    return service.get_card(s, card.card_id), soft


def snapshot(s: Session) -> dict[str, Any]:
    s.expire_all()
    return {
        "cards": sorted((c.card_id, c.state, c.version) for c in s.scalars(select(Card))),
        "forms": sorted(f.application_id for f in s.scalars(select(ApplicationForm))),
        "transitions": s.scalar(select(func.count()).select_from(Transition)),
        "queue": s.scalar(select(func.count()).select_from(QueueMessage)),
        "events": s.scalar(select(func.count()).select_from(OutboxEvent)),
    }
