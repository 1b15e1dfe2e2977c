"""個人番号通知書 and 個人番号の変更 (SPEC K3, issue 4 item 3)."""

from __future__ import annotations

import io
import json
import random
import re
import zipfile
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pypdf import PdfReader
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from kiban.core import accounts
from kiban.core.accounts import create_user
from kiban.core.audit import AuditEntry
from kiban.core.config import Settings
from kiban.core.documents import KeyDirectorySigners, content_hash, verify_document
from kiban.core.events import Registry, drain, row_to_event
from kiban.core.identifiers import IndividualNumberCipher, ResidentCodeGenerator
from kiban.core.models.events import OutboxEvent
from kiban.network import service as network
from kiban.network.handlers import register_handlers as network_handlers
from kiban.numbering import api as numbering_api
from kiban.numbering import letters
from kiban.numbering import service as numbering
from kiban.numbering.models import NumberLetter
from kiban.numbering.notices import notify_assigned
from kiban.register import service
from kiban.register.handlers import register_handlers
from kiban.register.loader import load_population
from kiban.register.models import Resident
from kiban.register.population import generate_population
from kiban.register.schemas import Actor, Birth, PersonData
from kiban.web.app import WebOptions, create_app

TODAY = date(2026, 11, 25)
A = "131016"  # 千代田区
CLERK = Actor(username="clerk-a", municipality_code=A)
CIPHER = IndividualNumberCipher(bytes(range(32)))
PRINTED_AT = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)  # 令和8年11月25日 in Japan


@pytest.fixture
def registry() -> Registry:
    reg = Registry()
    register_handlers(reg)
    network_handlers(reg)
    return reg


@pytest.fixture
def signers(tmp_path_factory: pytest.TempPathFactory) -> KeyDirectorySigners:
    return KeyDirectorySigners(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def cutoff(engine: Engine, session_maker: sessionmaker[Session], registry: Registry) -> datetime:
    """20 residents loaded, numbered and in the copies; returns the time after that initial load."""
    households = list(generate_population([A], 20, seed=11, as_of=date(2025, 4, 1)))
    with session_maker.begin() as s:
        codes = numbering.issue_resident_codes(s, 20, ResidentCodeGenerator(random.Random(11)))
    load_population(engine, households, iter(codes))
    with session_maker.begin() as s:
        notify_assigned(
            s, numbering.assign_individual_numbers_bulk(s, codes, CIPHER), dict.fromkeys(codes, A)
        )
    drain(session_maker, registry)
    with session_maker.begin() as s:
        network.seed_copies(s)
    return datetime.now(UTC) + timedelta(microseconds=1)


@pytest.fixture
def s(session_maker: sessionmaker[Session]) -> Iterator[Session]:
    with session_maker() as session:
        yield session


def born(session_maker: sessionmaker[Session], registry: Registry, s: Session) -> str:
    mother = s.scalars(
        select(Resident).where(Resident.relationship == "世帯主", Resident.sex == 2).order_by(Resident.id)
    ).first()
    assert mother is not None
    with session_maker.begin() as tx:
        result = service.birth(
            tx,
            CLERK,
            Birth(
                notified_on=TODAY - timedelta(days=1),
                effective_on=TODAY - timedelta(days=3),
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
            today=TODAY,
            generator=ResidentCodeGenerator(random.Random(99)),
            cipher=CIPHER,
        )
    drain(session_maker, registry)
    return result.records[0].resident_code


def text_of(pdf: bytes) -> str:
    return "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)


def produce(
    session_maker: sessionmaker[Session], signers: KeyDirectorySigners, since: datetime
) -> letters.LetterBatch:
    with session_maker.begin() as tx:
        return letters.produce_letters(
            tx, issuer="batch-op", assigned_since=since, signers=signers, issued_at=PRINTED_AT
        )


def test_a_new_number_gets_one_letter_with_name_number_wareki_and_serial(
    cutoff: datetime,
    session_maker: sessionmaker[Session],
    registry: Registry,
    s: Session,
    signers: KeyDirectorySigners,
) -> None:
    code = born(session_maker, registry, s)
    number = numbering.active_number(s, code)
    assert number is not None
    batch = produce(session_maker, signers, cutoff)
    [letter] = batch.letters
    assert letter.resident_code == code and letter.kind == "assigned" and letter.municipality_code == A
    text = text_of(letter.pdf)
    child = s.scalars(select(Resident).where(Resident.resident_code == code)).one()
    assert f"{child.family_name}　花子" in text
    assert f"{number[:4]} {number[4:8]} {number[8:]}" in text
    assert "令和8年11月25日" in text  # 発行日 in 和暦 (JST)
    assert "令和8年11月22日" in text  # 生年月日
    assert letter.serial in text and letter.serial.startswith(f"{A}-2026-")
    assert "個人番号通知書" in text and "千代田区長" in text
    # Japanese font embedded (a subset), as every Kiban document.
    fonts = [
        f["/BaseFont"]
        for page in PdfReader(io.BytesIO(letter.pdf)).pages
        for f in page["/Resources"]["/Font"].values()
    ]
    assert any(str(name).endswith("IPAexMincho") for name in fonts)
    # The ledger verifies it; the number is in no audit entry.
    assert (
        verify_document(
            s, letter.serial, content_hash(letter.data), letter.issuance.verification_code, signers=signers
        ).reason
        == "valid"
    )
    entries = s.scalars(select(AuditEntry).where(AuditEntry.subject == code)).all()
    assert any(e.purpose == letters.PURPOSE for e in entries)
    assert all(number not in repr((e.items, e.detail)) for e in entries)


def test_never_twice(
    cutoff: datetime,
    session_maker: sessionmaker[Session],
    registry: Registry,
    s: Session,
    signers: KeyDirectorySigners,
) -> None:
    code = born(session_maker, registry, s)
    assert len(produce(session_maker, signers, cutoff).letters) == 1
    again = produce(session_maker, signers, cutoff)
    assert again.letters == [] and again.waiting == []
    # The database refuses a second record for the same number even if a producer tried.
    [row] = s.scalars(select(NumberLetter)).all()
    with session_maker.begin() as tx, pytest.raises(IntegrityError):
        tx.add(
            NumberLetter(
                number=row.number,
                resident_code=code,
                municipality_code=A,
                kind="assigned",
                serial="131016-2026-XXXXXXXXXXXXXXXX",
                batch_id=row.batch_id,
                produced_at=PRINTED_AT,
            )
        )
        tx.flush()
    assert s.scalar(select(func.count()).select_from(NumberLetter)) == 1


def test_the_initial_load_is_left_out_and_letters_come_in_batches(
    cutoff: datetime, session_maker: sessionmaker[Session], signers: KeyDirectorySigners, s: Session
) -> None:
    assert produce(session_maker, signers, cutoff).letters == []
    # Without the cut-off, everyone loaded gets their letter, in batches of the asked size.
    with session_maker.begin() as tx:
        first = letters.produce_letters(tx, limit=8, signers=signers, issued_at=PRINTED_AT)
    with session_maker.begin() as tx:
        rest = letters.produce_letters(tx, limit=50, signers=signers, issued_at=PRINTED_AT)
    assert len(first.letters) == 8 and len(rest.letters) == 12
    assert len({x.resident_code for x in first.letters + rest.letters}) == 20
    assert s.scalar(select(func.count(func.distinct(NumberLetter.batch_id)))) == 2


def test_a_holder_the_copy_does_not_know_waits_for_a_later_batch(
    cutoff: datetime, session_maker: sessionmaker[Session], signers: KeyDirectorySigners
) -> None:
    with session_maker.begin() as tx:
        [code] = numbering.issue_resident_codes(tx, 1, ResidentCodeGenerator(random.Random(5)))
        numbering.assign_individual_number(tx, code, CIPHER)
    batch = produce(session_maker, signers, cutoff)
    assert batch.letters == [] and batch.waiting == [code]


@pytest.mark.parametrize(
    ("kwargs", "field", "rule"),
    [
        ({"limit": 0}, "limit", "range"),
        ({"limit": True}, "limit", "range"),
        ({"issuer": " "}, "issuer", "required"),
        ({"assigned_since": datetime(2026, 1, 1)}, "assigned_since", "timezone"),
    ],
)
def test_bad_batch_requests_name_field_and_rule(
    cutoff: datetime, session_maker: sessionmaker[Session], kwargs: dict[str, object], field: str, rule: str
) -> None:
    with session_maker.begin() as tx, pytest.raises(numbering.NumberingError) as err:
        letters.produce_letters(tx, **kwargs)  # type: ignore[arg-type]
    assert (err.value.field, err.value.rule) == (field, rule)


def test_a_leaked_number_is_changed_the_card_is_flagged_and_a_new_letter_follows(
    cutoff: datetime,
    session_maker: sessionmaker[Session],
    registry: Registry,
    s: Session,
    signers: KeyDirectorySigners,
) -> None:
    code = born(session_maker, registry, s)
    [first] = produce(session_maker, signers, cutoff).letters
    old = numbering.active_number(s, code)
    with session_maker.begin() as tx:
        new = letters.change_individual_number(tx, code, CIPHER, "漏えい（本人の請求）", actor="op-1")
    assert new != old
    with session_maker() as fresh:
        row = fresh.scalars(
            select(OutboxEvent).where(
                OutboxEvent.key == code, OutboxEvent.type == "numbering.number_reissued"
            )
        ).one()
        event = row_to_event(row)
    assert event.payload["card_reissue_required"] is True
    assert event.payload["individual_number"] == new and event.payload["municipality_code"] == A
    assert event.payload["requested_by"] == "person"
    assert "漏えい" not in repr(event.payload)  # the free-text reason stays in the store
    drain(session_maker, registry)
    s.expire_all()
    assert s.scalars(select(Resident.individual_number).where(Resident.resident_code == code)).one() == new
    assert network.national_history(s, code)[-1].individual_number == new
    history = numbering.number_history(s, code)
    assert [(n.number, n.status) for n in history] == [(old, "retired"), (new, "active")]
    [second] = produce(session_maker, signers, cutoff).letters
    assert second.kind == "changed" and second.serial != first.serial
    text = text_of(second.pdf)
    assert f"{new[:4]} {new[4:8]} {new[8:]}" in text and "変更" in text
    assert old is not None and f"{old[:4]} {old[4:8]} {old[8:]}" not in text
    assert [letter.kind for letter in letters.letters_of(s, code)] == ["assigned", "changed"]


def test_a_change_needs_a_reason_and_a_number_and_changes_nothing_otherwise(
    cutoff: datetime, session_maker: sessionmaker[Session], s: Session
) -> None:
    code = s.scalars(select(Resident.resident_code).order_by(Resident.resident_code)).first()
    assert code is not None
    before = numbering.active_number(s, code)
    with session_maker.begin() as tx, pytest.raises(numbering.NumberingError) as err:
        letters.change_individual_number(tx, code, CIPHER, "  ", actor="op-1")
    assert err.value.rule == "reason_required"
    with session_maker.begin() as tx, pytest.raises(numbering.NumberingError) as err:
        letters.change_individual_number(tx, code, CIPHER, "漏えい", actor="op-1", requested_by="x")  # type: ignore[arg-type]
    assert err.value.rule == "one_of"
    s.expire_all()
    assert numbering.active_number(s, code) == before
    assert (
        s.scalar(
            select(func.count())
            .select_from(OutboxEvent)
            .where(OutboxEvent.type == "numbering.number_reissued")
        )
        == 0
    )


# --- the national operator's API ---------------------------------------------------------------------

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


def test_the_operator_api_downloads_a_batch_and_changes_a_number(
    cutoff: datetime,
    session_maker: sessionmaker[Session],
    registry: Registry,
    s: Session,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(accounts, "SCRYPT_N", 2**4)
    code = born(session_maker, registry, s)
    with session_maker.begin() as tx:
        create_user(tx, "operator", PASSWORD, "national_operator", display_name="運用 太郎")
        create_user(tx, "clerk", PASSWORD, "clerk", municipality_code=A, display_name="千代田 職員")
    settings = Settings(data_dir=tmp_path / "data", database_url_override=db_url)
    settings.ensure_dirs()
    (settings.keys_dir / "numbering.key").write_bytes(bytes(range(32)))
    (settings.keys_dir / "numbering.key").chmod(0o600)
    app = create_app(
        settings,
        options=WebOptions(login_burst=1000, deliver_events=False),
        capabilities=[lambda a: a.include_router(numbering_api.router)],
    )
    try:
        operator = login(app, "operator")
        response = operator.post(
            "/api/numbering/letters", json={"limit": 10, "assigned_since": cutoff.isoformat()}
        )
        assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
        archive = zipfile.ZipFile(io.BytesIO(response.content))
        manifest = json.loads(archive.read("manifest.json"))
        [entry] = manifest["letters"]
        assert entry["resident_code"] == code and entry["kind"] == "assigned"
        number = numbering.active_number(s, code)
        assert number is not None and number not in json.dumps(manifest)
        assert f"{number[:4]} {number[4:8]} {number[8:]}" in text_of(archive.read(entry["file"]))
        again = operator.post(
            "/api/numbering/letters", json={"limit": 10, "assigned_since": cutoff.isoformat()}
        )
        assert json.loads(zipfile.ZipFile(io.BytesIO(again.content)).read("manifest.json"))["letters"] == []

        bad = operator.post("/api/numbering/number-change", json={"resident_code": code, "reason": " "})
        assert bad.status_code == 422
        assert [(e["field"], e["rule"]) for e in bad.json()["errors"]] == [("reason", "reason_required")]
        changed = operator.post(
            "/api/numbering/number-change",
            json={"resident_code": code, "reason": "漏えい", "requested_by": "mayor"},
        )
        assert changed.status_code == 200, changed.text
        assert changed.json() == {
            "resident_code": code,
            "card_reissue_required": True,
            "letter": "next_batch",
        }
        s.expire_all()
        assert numbering.active_number(s, code) != number

        clerk = login(app, "clerk")
        assert clerk.post("/api/numbering/letters", json={}).status_code == 403
        assert (
            clerk.post(
                "/api/numbering/number-change", json={"resident_code": code, "reason": "x"}
            ).status_code
            == 403
        )
    finally:
        app.state.engine.dispose()
