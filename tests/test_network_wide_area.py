"""広域交付 (SPEC K2, issue 4 item 4): one's own 住民票の写し at another municipality's counter."""

from __future__ import annotations

import io
import random
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pypdf import PdfReader
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from kiban.core import accounts
from kiban.core.accounts import create_user
from kiban.core.audit import AuditEntry
from kiban.core.config import Settings
from kiban.core.documents import KeyDirectorySigners
from kiban.core.events import Registry, drain
from kiban.core.identifiers import IndividualNumberCipher, ResidentCodeGenerator
from kiban.core.models.documents import IssuedDocument
from kiban.network import service as network
from kiban.network.handlers import register_handlers as network_handlers
from kiban.network.wide_area import Identification, PhotoId, wide_area_resident_copy
from kiban.network.wide_area_api import router as wide_area_router
from kiban.numbering import service as numbering
from kiban.numbering.notices import notify_assigned
from kiban.register import service
from kiban.register.documents import CopyOptions
from kiban.register.handlers import register_handlers
from kiban.register.loader import load_population
from kiban.register.models import Resident
from kiban.register.population import generate_population
from kiban.register.rules import AccessDenied, NotFound, RegisterError
from kiban.register.schemas import Actor, Death, Target
from kiban.web.app import WebOptions, create_app

A = "212016"  # 岐阜市: where the person lives
B = "131016"  # 千代田区: where they ask
CLERK_B = Actor(username="clerk-b", municipality_code=B)
CLERK_A = Actor(username="clerk-a", municipality_code=A)
CIPHER = IndividualNumberCipher(bytes(range(32)))
WHEN = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)
TODAY = date(2026, 11, 25)


@pytest.fixture
def signers(tmp_path_factory: pytest.TempPathFactory) -> KeyDirectorySigners:
    return KeyDirectorySigners(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def world(engine: Engine, session_maker: sessionmaker[Session]) -> None:
    registry = Registry()
    register_handlers(registry)
    network_handlers(registry)
    households = list(generate_population([A, B], 40, seed=21, as_of=date(2025, 4, 1)))
    with session_maker.begin() as s:
        codes = numbering.issue_resident_codes(s, 40, ResidentCodeGenerator(random.Random(21)))
    load_population(engine, households, iter(codes))
    with session_maker.begin() as s:
        assigned = numbering.assign_individual_numbers_bulk(s, codes, CIPHER)
        where = {c: m for c, m in s.execute(select(Resident.resident_code, Resident.municipality_code))}
        notify_assigned(s, assigned, where)
    drain(session_maker, registry)
    with session_maker.begin() as s:
        network.seed_copies(s)


@pytest.fixture
def s(session_maker: sessionmaker[Session]) -> Iterator[Session]:
    with session_maker() as session:
        yield session


def family(s: Session) -> list[Resident]:
    """An active household of A with at least two members, head first."""
    rows = s.scalars(
        select(Resident)
        .where(Resident.municipality_code == A, Resident.status == "active")
        .order_by(Resident.household_id, Resident.relationship != "世帯主", Resident.birth_date)
    ).all()
    groups: dict[Any, list[Resident]] = {}
    for r in rows:
        groups.setdefault(r.household_id, []).append(r)
    return next(g for g in groups.values() if len(g) >= 2 and g[0].relationship == "世帯主")


def ident(r: Resident, **over: Any) -> Identification:
    values: dict[str, Any] = {
        "document": PhotoId.MY_NUMBER_CARD,
        "family_name": r.family_name,
        "given_name": r.given_name,
        "birth_date": r.birth_date,
        "resident_code": r.resident_code,
    }
    values.update(over)
    return Identification(**values)


def text_of(pdf: bytes) -> str:
    return "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)


def issue(
    session_maker: sessionmaker[Session], signers: KeyDirectorySigners, who: Identification, **kw: Any
) -> Any:
    with session_maker.begin() as tx:
        return wide_area_resident_copy(tx, CLERK_B, who, signers=signers, issued_at=WHEN, today=TODAY, **kw)


def test_a_resident_of_a_gets_their_own_copy_at_b_logged_at_both(
    world: None, session_maker: sessionmaker[Session], signers: KeyDirectorySigners, s: Session
) -> None:
    person = family(s)[0]
    printed = issue(session_maker, signers, ident(person))
    text = text_of(printed.pdf)
    assert "住民票の写し" in text and f"{person.family_name}　{person.given_name}" in text
    assert "本籍" not in printed.data["記載事項"] and "個人番号" not in printed.data["記載事項"]
    if person.honseki:
        assert person.honseki not in text
    ledger = s.scalars(select(IssuedDocument).where(IssuedDocument.serial == printed.serial)).one()
    assert ledger.municipality_code == A and ledger.subject_resident_code == person.resident_code
    assert ledger.issuer == f"clerk-b@{B}"
    entries = s.scalars(select(AuditEntry).where(AuditEntry.subject == person.resident_code)).all()
    at_a = [e for e in entries if e.organisation == A and e.detail.get("serial") == printed.serial]
    at_b = [e for e in entries if e.organisation == B and e.detail.get("serial") == printed.serial]
    assert [(e.action, e.purpose, e.actor) for e in at_a] == [("read", "住民票の写しの交付", f"clerk-b@{B}")]
    assert [(e.action, e.purpose, e.actor) for e in at_b] == [("read", "住民票の写しの広域交付", "clerk-b")]
    assert (
        at_b[0].detail["residence_municipality"] == A and at_b[0].detail["identification"] == "my_number_card"
    )


def test_the_household_copy_by_card_number_with_the_number_for_the_person(
    world: None, session_maker: sessionmaker[Session], signers: KeyDirectorySigners, s: Session
) -> None:
    members = family(s)
    person = members[-1]
    assert person.individual_number
    who = ident(person, resident_code=None, individual_number=person.individual_number)
    printed = issue(session_maker, signers, who, household=True, options=CopyOptions(individual_number=True))
    printed_codes = {p["個人番号"] for p in printed.data["世帯員"]}
    assert printed_codes == {m.individual_number for m in members}
    at_b = s.scalars(
        select(AuditEntry).where(AuditEntry.organisation == B, AuditEntry.purpose == "住民票の写しの広域交付")
    ).all()
    assert sorted(e.subject for e in at_b) == sorted(m.resident_code for m in members)
    assert all(m.individual_number not in repr((e.items, e.detail)) for e in at_b for m in members)


@pytest.mark.parametrize(
    ("over", "error", "field", "rule"),
    [
        ({"given_name": "別人"}, AccessDenied, "identification", "identity_mismatch"),
        ({"birth_date": date(1900, 1, 2)}, AccessDenied, "identification", "identity_mismatch"),
        ({"resident_code": "12345678903"}, NotFound, "identification", "not_found"),
        ({"resident_code": "12345678906"}, RegisterError, "identification.resident_code", "check_digit"),
        ({"individual_number": "123456789018"}, RegisterError, "identification", "one_of"),
        ({"document": "library_card"}, RegisterError, "identification.document", "photo_id"),
        ({"family_name": " "}, RegisterError, "identification.family_name", "required"),
    ],
)
def test_refusals_name_field_and_rule_and_print_nothing(
    world: None,
    session_maker: sessionmaker[Session],
    signers: KeyDirectorySigners,
    s: Session,
    over: dict[str, Any],
    error: type[Exception],
    field: str,
    rule: str,
) -> None:
    person = family(s)[0]
    with session_maker() as tx:
        with pytest.raises(error) as err:
            wide_area_resident_copy(tx, CLERK_B, ident(person, **over), signers=signers, issued_at=WHEN)
        if isinstance(err.value, AccessDenied | NotFound):
            tx.commit()  # the refusal's audit entry, as the API keeps it
    assert (err.value.field, err.value.rule) == (field, rule)
    assert s.scalar(select(func.count()).select_from(IssuedDocument)) == 0
    if isinstance(err.value, AccessDenied):
        refusal = s.scalars(select(AuditEntry).where(AuditEntry.action == "refuse")).one()
        assert refusal.organisation == B and refusal.detail["rule"] == rule


def test_no_honseki_no_own_municipality_no_removed_person_no_other_role(
    world: None, session_maker: sessionmaker[Session], signers: KeyDirectorySigners, s: Session
) -> None:
    person = family(s)[0]
    cases: list[tuple[Any, str]] = [
        (
            lambda tx: wide_area_resident_copy(tx, CLERK_B, ident(person), options=CopyOptions(honseki=True)),
            "not_in_wide_area",
        ),
        (lambda tx: wide_area_resident_copy(tx, CLERK_A, ident(person)), "same_municipality"),
        (
            lambda tx: wide_area_resident_copy(
                tx, Actor(username="x", municipality_code=B, role="agency"), ident(person)
            ),
            "clerk_only",
        ),
    ]
    for call, rule in cases:
        with session_maker.begin() as tx, pytest.raises(RegisterError) as err:
            call(tx)
        assert err.value.rule == rule
    # After a death the copy is refused (the national copy has a 除票).
    registry = Registry()
    register_handlers(registry)
    network_handlers(registry)
    lone = s.scalars(
        select(Resident).where(
            Resident.municipality_code == A, Resident.status == "active", Resident.relationship != "世帯主"
        )
    ).first()
    assert lone is not None
    with session_maker.begin() as tx:
        service.death(
            tx,
            CLERK_A,
            Death(
                notified_on=TODAY,
                effective_on=TODAY - timedelta(days=1),
                target=Target(resident_code=lone.resident_code),
            ),
            today=TODAY,
        )
    drain(session_maker, registry)
    with session_maker.begin() as tx, pytest.raises(AccessDenied) as refused:
        wide_area_resident_copy(tx, CLERK_B, ident(lone), signers=signers)
    assert refused.value.rule == "dead_or_removed"
    assert s.scalar(select(func.count()).select_from(IssuedDocument)) == 0


# --- the clerk's API ---------------------------------------------------------------------------------

PASSWORD = "correct horse battery"
HTML = {"accept": "text/html,application/xhtml+xml"}


def login(app: Any, username: str) -> TestClient:
    client = TestClient(app, raise_server_exceptions=False)
    page = client.get("/login", headers=HTML)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token
    data = {"username": username, "password": PASSWORD, "csrf_token": token.group(1)}
    assert client.post("/login", data=data, headers=HTML, follow_redirects=False).status_code == 303
    client.headers["X-CSRF-Token"] = client.get("/api/session").json()["csrf_token"]
    return client


def test_the_clerks_api_prints_the_copy_and_refuses_others(
    world: None,
    session_maker: sessionmaker[Session],
    s: Session,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(accounts, "SCRYPT_N", 2**4)
    with session_maker.begin() as tx:
        create_user(tx, "chiyoda", PASSWORD, "clerk", municipality_code=B, display_name="千代田 職員")
        create_user(tx, "operator", PASSWORD, "national_operator", display_name="運用 太郎")
    settings = Settings(data_dir=tmp_path / "data", database_url_override=db_url)
    settings.ensure_dirs()
    app = create_app(
        settings,
        options=WebOptions(login_burst=1000, deliver_events=False),
        capabilities=[lambda a: a.include_router(wide_area_router)],
    )
    person = family(s)[0]
    body = {
        "document": "driving_licence",
        "family_name": person.family_name,
        "given_name": person.given_name,
        "birth_date": person.birth_date.isoformat(),
        "resident_code": person.resident_code,
    }
    try:
        clerk = login(app, "chiyoda")
        response = clerk.post("/api/network/wide-area/resident-copy", json=body)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/pdf"
        assert f"{person.family_name}　{person.given_name}" in text_of(response.content)
        serial = response.headers["X-Document-Serial"]
        assert (
            s.scalars(select(IssuedDocument.municipality_code).where(IssuedDocument.serial == serial)).one()
            == A
        )

        wrong = clerk.post("/api/network/wide-area/resident-copy", json={**body, "given_name": "別人"})
        assert wrong.status_code == 403
        assert [(e["field"], e["rule"]) for e in wrong.json()["errors"]] == [
            ("identification", "identity_mismatch")
        ]
        s.expire_all()
        assert s.scalars(select(AuditEntry.organisation).where(AuditEntry.action == "refuse")).all() == [B]
        honseki = clerk.post(
            "/api/network/wide-area/resident-copy", json={**body, "items": {"honseki": True}}
        )
        assert honseki.status_code == 422
        operator = login(app, "operator")
        assert operator.post("/api/network/wide-area/resident-copy", json=body).status_code == 403
        assert s.scalar(select(func.count()).select_from(IssuedDocument)) == 1
    finally:
        app.state.engine.dispose()
