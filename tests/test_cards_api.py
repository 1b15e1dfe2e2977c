"""The counter, the call centre and the JSON API over TestClient (both engines)."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from kiban.cards import api, service, states, storage
from kiban.cards.documents import issue_notice
from kiban.cards.manufacturer import Manufacturer, receive_shipments
from kiban.cards.service import Actor, Application
from kiban.cards.softcard import SoftCard
from kiban.core import accounts
from kiban.core.accounts import create_user
from kiban.core.config import Settings
from kiban.core.identifiers import ResidentCodeGenerator
from kiban.jpki import service as jpki
from kiban.jpki.keys import FileKeyStore
from kiban.numbering import service as numbering
from kiban.register.loader import load_population
from kiban.register.models import Resident
from kiban.register.population import generate_population
from kiban.web.app import WebOptions, add_template_dir, create_app

A = "131016"
PASSWORD = "correct horse battery"
HTML = {"accept": "text/html,application/xhtml+xml"}
OPERATOR = Actor("jlis-1", "national_operator")
PINS = {"pin_user_auth": "1234", "pin_signature": "ABC123", "pin_juki": "5678", "pin_face": "9012"}


def capability(app: FastAPI) -> None:
    add_template_dir(app, Path(api.__file__).parent / "templates", prefix="cards")
    api.register_web(app)


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accounts, "SCRYPT_N", 2**4)


@dataclass
class World:
    app: FastAPI
    factory: sessionmaker[Session]
    data_dir: Path
    card_id: str
    person: dict[str, Any]

    def client(self, username: str) -> TestClient:
        client = TestClient(self.app, raise_server_exceptions=False)
        page = client.get("/login", headers=HTML)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token
        data = {"username": username, "password": PASSWORD, "csrf_token": token.group(1)}
        assert client.post("/login", data=data, headers=HTML, follow_redirects=False).status_code == 303
        client.headers["X-CSRF-Token"] = client.get("/api/session").json()["csrf_token"]
        return client


def prepare_card(
    factory: sessionmaker[Session], settings: Settings, *, algorithm: str = "p256"
) -> tuple[str, dict[str, Any]]:
    """An adult's card, produced into the data directory's shipment folder and noticed."""
    with factory.begin() as s:
        person = next(
            r
            for r in s.scalars(
                select(Resident).where(Resident.status == "active").order_by(Resident.resident_code)
            )
            if (date.today() - r.birth_date).days > 20 * 366 and r.period_of_stay_end is None
        )
        info = {
            "code": person.resident_code,
            "birth": person.birth_date,
            "town": person.town,
            "kana": f"{person.family_name_kana}{person.given_name_kana}",
        }
        clerk = Actor("chiyoda", "clerk", A)
        form = service.issue_forms(s, clerk, [person.resident_code], A)[person.resident_code]
        card = service.apply(s, clerk, Application(form))
        service.check(s, OPERATOR, card.card_id)
        service.order_production(s, OPERATOR)
        card_id = card.card_id
    Manufacturer(
        storage.shipped_dir(settings.data_dir),
        storage.transport_passphrase(settings.keys_dir),
        algorithm=algorithm,  # type: ignore[arg-type]
    ).run(factory)
    receive_shipments(factory)
    with factory.begin() as s:
        issue_notice(s, Actor("chiyoda", "clerk", A), card_id)
    return card_id, info


@pytest.fixture
def world(
    engine: Engine, session_maker: sessionmaker[Session], db_url: str, tmp_path: Path
) -> Iterator[World]:
    households = list(generate_population([A], 20, seed=5, as_of=date(2025, 4, 1)))
    with session_maker.begin() as s:
        codes = numbering.issue_resident_codes(s, 20, ResidentCodeGenerator(random.Random(5)))
    load_population(engine, households, iter(codes))
    settings = Settings(data_dir=tmp_path / "data", database_url_override=db_url)
    settings.ensure_dirs()
    with session_maker.begin() as s:
        jpki.init_hierarchies(s, FileKeyStore(settings.keys_dir), "http://127.0.0.1:8000", algorithm="p256")
        create_user(s, "chiyoda", PASSWORD, "clerk", municipality_code=A, display_name="千代田 職員")
        create_user(s, "shinjuku", PASSWORD, "clerk", municipality_code="131041", display_name="新宿 職員")
        create_user(s, "agent", PASSWORD, "call_centre", display_name="受付 一郎")
        create_user(s, "operator", PASSWORD, "national_operator", display_name="機構 職員")
    card_id, person = prepare_card(session_maker, settings)
    app = create_app(
        settings, options=WebOptions(login_burst=1000, deliver_events=False), capabilities=[capability]
    )
    yield World(app, session_maker, settings.data_dir, card_id, person)
    app.state.engine.dispose()


def state_of(world: World) -> str:
    with world.factory() as s:
        return service.get_card(s, world.card_id).state


def test_hand_over_at_the_counter(world: World) -> None:
    clerk = world.client("chiyoda")
    page = clerk.get("/cards", headers=HTML)
    assert page.status_code == 200 and world.card_id in page.text
    shipped = storage.shipped_dir(world.data_dir) / A / f"{world.card_id}.kcard"
    assert shipped.is_file()
    # without an identity check: refused on the page, nothing changed, the shipped card still blank
    refused = clerk.post(
        f"/cards/{world.card_id}/hand-over", data={**PINS, "holder_passphrase": "holder pass 1"}, headers=HTML
    )
    assert refused.status_code == 422 and "本人確認書類" in refused.text
    bad_pin = clerk.post(
        f"/cards/{world.card_id}/hand-over",
        data={
            **PINS,
            "pin_signature": "abc",
            "documents": ["driving_licence"],
            "holder_passphrase": "holder pass 1",
        },
        headers=HTML,
    )
    assert bad_pin.status_code == 422 and "暗証番号の形式" in bad_pin.text
    assert state_of(world) == states.NOTIFIED
    assert not storage.issued_path(world.data_dir, world.card_id).exists()
    blank = SoftCard.open(shipped, storage.transport_passphrase(world.data_dir / "keys"))
    assert not any(p.is_set for p in blank.pin_status())
    # the hand-over
    done = clerk.post(
        f"/cards/{world.card_id}/hand-over",
        data={
            **PINS,
            "documents": ["health_insurance", "pension_book"],
            "holder_passphrase": "holder pass 1",
        },
        headers=HTML,
        follow_redirects=False,
    )
    assert done.status_code == 303, done.text
    assert state_of(world) == states.ACTIVE
    assert not shipped.exists()
    card = SoftCard.open(storage.issued_path(world.data_dir, world.card_id), "holder pass 1")
    assert card.certificate("user_auth") is not None and card.certificate("signature") is not None
    card.sign_challenge("1234", b"kiosk")
    page = clerk.get(f"/cards/{world.card_id}?done=hand-over", headers=HTML)
    assert "カードを交付しました。" in page.text and "交付済み" in page.text
    assert clerk.get(f"/api/cards/{world.card_id}").json()["state"] == "active"
    # another municipality's clerk sees nothing of it
    other = world.client("shinjuku")
    assert other.get(f"/api/cards/{world.card_id}").status_code == 403
    # suspension at the counter, a replay refused, then found
    first = clerk.post(f"/api/cards/{world.card_id}/suspend", json={"reason": "lost", "request_id": "r-1"})
    assert first.status_code == 200 and first.json()["state"] == "suspended"
    again = clerk.post(f"/api/cards/{world.card_id}/suspend", json={"reason": "lost", "request_id": "r-1"})
    assert again.status_code == 409 and again.json()["errors"][0]["rule"] == "replayed_request"
    assert (
        clerk.post(f"/cards/{world.card_id}/found", headers=HTML, follow_redirects=False).status_code == 303
    )
    assert state_of(world) == states.ACTIVE
    # found again: the held certificates were revoked, new ones are issued at the counter
    page = clerk.get(f"/cards/{world.card_id}", headers=HTML)
    assert "電子証明書の再発行" in page.text
    wrong = clerk.post(
        f"/cards/{world.card_id}/certificates",
        data={
            "documents": ["passport"],
            "pin_user_auth": "9999",
            "pin_signature": "ABC123",
            "holder_passphrase": "holder pass 1",
        },
        headers=HTML,
    )
    assert wrong.status_code == 422 and "暗証番号が違います" in wrong.text
    redone = clerk.post(
        f"/cards/{world.card_id}/certificates",
        data={
            "documents": ["passport"],
            "pin_user_auth": "1234",
            "pin_signature": "ABC123",
            "holder_passphrase": "holder pass 1",
        },
        headers=HTML,
        follow_redirects=False,
    )
    assert redone.status_code == 303, redone.text
    with world.factory() as s:
        serial = service.get_card(s, world.card_id).user_auth_serial
        assert serial is not None and jpki.find_certificate(s, serial).status == "good"
    # PIN reset at the counter, after the identity check
    reset = clerk.post(
        f"/cards/{world.card_id}/reset-pin",
        data={
            "documents": ["residence_card"],
            "kind": "user_auth",
            "new_pin": "4321",
            "holder_passphrase": "holder pass 1",
        },
        headers=HTML,
        follow_redirects=False,
    )
    assert reset.status_code == 303, reset.text
    SoftCard.open(storage.issued_path(world.data_dir, world.card_id), "holder pass 1").sign_challenge(
        "4321", b"x"
    )
    # re-issue of a card once reported lost: a new application, express
    reissued = clerk.post(f"/cards/{world.card_id}/reissue", headers=HTML, follow_redirects=False)
    assert reissued.status_code == 303
    new_id = reissued.headers["location"].split("/")[2].split("?")[0]
    with world.factory() as s:
        new = service.get_card(s, new_id)
        assert new.express and new.express_reason == "loss" and new.state == states.APPLIED
    assert new_id in clerk.get("/cards", headers=HTML).text  # on the express list, 処理中
    again = clerk.post(f"/cards/{world.card_id}/reissue", headers=HTML)
    assert again.status_code == 409 and "すでに申請中" in again.text


def test_call_centre_identifies_and_suspends(world: World) -> None:
    clerk = world.client("chiyoda")
    clerk.post(
        f"/cards/{world.card_id}/hand-over",
        data={**PINS, "documents": ["passport"], "holder_passphrase": "holder pass 1"},
        headers=HTML,
    )
    assert state_of(world) == states.ACTIVE
    agent = world.client("agent")
    assert agent.get("/cards", headers=HTML).status_code == 403  # the counter is for clerks
    assert agent.post("/cards/call-centre/calls", headers=HTML).status_code == 200
    page = agent.get("/cards/call-centre", headers=HTML)
    call_id = int(re.search(r"/cards/call-centre/calls/(\d+)/answer", page.text).group(1))  # type: ignore[union-attr]
    assert "通話" in page.text
    agent.post(f"/cards/call-centre/calls/{call_id}/answer", headers=HTML)
    # the API refuses a suspension without an identified call
    no_call = agent.post(f"/api/cards/{world.card_id}/suspend", json={"reason": "lost"})
    assert no_call.status_code == 422
    unidentified = agent.post(
        f"/api/cards/{world.card_id}/suspend", json={"reason": "lost", "call_id": call_id}
    )
    assert unidentified.status_code == 403
    person = world.person
    wrong = agent.post(
        f"/cards/call-centre/calls/{call_id}/identify",
        data={
            "card_id": world.card_id,
            "birth_date": "1901-01-01",
            "name_kana": person["kana"],
            "town": person["town"],
        },
        headers=HTML,
    )
    assert "一致しません" in wrong.text
    right = agent.post(
        f"/cards/call-centre/calls/{call_id}/identify",
        data={
            "card_id": world.card_id,
            "birth_date": person["birth"].isoformat(),
            "name_kana": person["kana"],
            "town": person["town"],
        },
        headers=HTML,
    )
    assert "本人確認ができました。" in right.text
    done = agent.post(
        f"/cards/call-centre/calls/{call_id}/suspend",
        data={"card_id": world.card_id, "reason": "lost"},
        headers=HTML,
    )
    assert done.status_code == 200 and "一時停止しました" in done.text
    assert state_of(world) == states.SUSPENDED
    twice = agent.post(
        f"/cards/call-centre/calls/{call_id}/suspend", data={"card_id": world.card_id}, headers=HTML
    )
    assert twice.status_code == 409 and "すでに一時停止中" in twice.text
    assert "応答率" in agent.get("/cards/call-centre", headers=HTML).text
    assert agent.get("/api/cards/queues").json() == {"manufacturer": 0, "municipality": 0}
    # the home page's links: the call centre's 「カードの一時停止」, J-LIS's national overview
    assert "待ち呼" in agent.get("/cards/suspend", headers=HTML).text
    overview = world.client("operator").get("/cards", headers=HTML)
    assert overview.status_code == 200 and "全国" in overview.text and "一時停止" in overview.text
