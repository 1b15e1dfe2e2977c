"""Kiosk web: the device JSON API (credential headers, base64), the screen, operator pages, drill."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from kiban.core import accounts
from kiban.core.accounts import create_user
from kiban.core.config import Settings
from kiban.kiosk import api
from kiban.kiosk.models import KioskIssuance, KioskRefusal
from kiban.kiosk.service import KioskCredential
from kiban.web.app import WebOptions, add_template_dir, create_app
from kiosk_support import A, B, World, build_world  # noqa: I001 - tests/ is on the path

PASSWORD = "correct horse battery"
HTML = {"accept": "text/html,application/xhtml+xml"}


def capability(app: FastAPI) -> None:
    add_template_dir(app, Path(api.__file__).parent / "templates", prefix="kiosk")
    api.register_web(app)


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accounts, "SCRYPT_N", 2**4)


@pytest.fixture
def setup(
    engine: Engine, session_maker: sessionmaker[Session], db_url: str, tmp_path: Path
) -> Iterator[tuple[World, FastAPI]]:
    world = build_world(engine, session_maker, tmp_path, people=30, holders=4)
    with session_maker.begin() as s:
        create_user(s, "operator", PASSWORD, "national_operator", display_name="機構 職員")
    settings = Settings(data_dir=tmp_path / "data", database_url_override=db_url)
    settings.ensure_dirs()
    app = create_app(
        settings, options=WebOptions(login_burst=1000, deliver_events=False), capabilities=[capability]
    )
    app.state.kiosk_centre = world.centre
    yield world, app
    app.state.engine.dispose()


def headers(cred: KioskCredential) -> dict[str, str]:
    return {
        "X-Kiosk-Id": cred.kiosk_id,
        "X-Kiosk-Credential": cred.credential,
        "X-Kiosk-Interface-Version": cred.interface_version,
    }


def b64(data: bytes | None) -> str:
    assert data is not None
    return base64.b64encode(data).decode()


def kiosk_flow(client: TestClient, world: World, cred: KioskCredential, code: str) -> str:
    h = headers(cred)
    r = client.post("/api/kiosk/sessions", headers=h)
    assert r.status_code == 201, r.text
    sid, challenge = r.json()["session_id"], r.json()["challenge"]
    soft = world.cards[code]
    sig = soft.sign_challenge("1234", base64.b64decode(challenge))
    body = {"challenge": challenge, "certificate": b64(soft.certificate("user_auth")), "signature": b64(sig)}
    r = client.post(f"/api/kiosk/sessions/{sid}/authenticate", headers=h, json=body)
    assert r.status_code == 200, r.text
    assert {d["document_type"] for d in r.json()["documents"]} >= {"resident_copy", "entry_certificate"}
    return sid


def test_device_api_issues_and_refuses(setup: tuple[World, FastAPI]) -> None:
    world, app = setup
    client = TestClient(app, raise_server_exceptions=False)
    code = next(c for c, m in world.municipality.items() if m == A)
    sid = kiosk_flow(client, world, world.kiosk, code)
    h = headers(world.kiosk)
    r = client.post(
        f"/api/kiosk/sessions/{sid}/documents", headers=h, json={"document_type": "resident_copy"}
    )
    assert r.status_code == 200 and r.content.startswith(b"%PDF")
    assert r.headers["X-Kiosk-Fee"] == "200" and r.headers["X-Kiosk-Session"] == sid
    # anyone can check the printed document on the public verification page
    checked = client.post(
        "/verify",
        files={"file": ("doc.pdf", r.content, "application/pdf")},
        headers={"accept": "application/json"},
    )
    assert checked.status_code == 200 and checked.json()["ok"] is True, checked.text
    assert checked.json()["serial"] == r.headers["X-Kiosk-Serial"]
    # swapped session id from another kiosk, oversized body, bad base64, wrong credential
    r = client.post(
        f"/api/kiosk/sessions/{sid}/documents",
        headers=headers(world.other_kiosk),
        json={"document_type": "x"},
    )
    assert r.status_code == 404 and r.json()["rule"] == "other_kiosk" and r.json()["message"]
    r = client.post(f"/api/kiosk/sessions/{sid}/documents", headers=h, content=b"{" + b" " * 20_000 + b"}")
    assert r.status_code == 413 and r.json()["rule"] == "oversized"
    r = client.post(f"/api/kiosk/sessions/{sid}/authenticate", headers=h, json={"challenge": "!!"})
    assert r.status_code == 422 and r.json()["field"] == "challenge"
    r = client.post("/api/kiosk/sessions", headers={**h, "X-Kiosk-Credential": "nope"})
    assert r.status_code == 403 and r.json()["rule"] == "credential"
    assert client.delete(f"/api/kiosk/sessions/{sid}", headers=h).status_code == 204
    with world.session_maker() as s:  # each refusal logged once, with its kiosk and session
        logged = [(r.rule, r.kiosk_id) for r in s.scalars(select(KioskRefusal).order_by(KioskRefusal.id))]
        assert logged == [
            ("other_kiosk", world.other_kiosk.kiosk_id),
            ("oversized", world.kiosk.kiosk_id),
            ("type", world.kiosk.kiosk_id),
            ("credential", world.kiosk.kiosk_id),
        ]
        assert s.scalar(select(func.count()).select_from(KioskIssuance)) == 1
    screen = client.get("/kiosk/screen", headers=HTML)
    assert screen.status_code == 200 and "暗証番号" in screen.text and "カードの取り忘れ" in screen.text


def test_operator_status_page_and_version_drill(setup: tuple[World, FastAPI]) -> None:
    world, app = setup
    client = TestClient(app, raise_server_exceptions=False)
    page = client.get("/login", headers=HTML)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token
    data = {"username": "operator", "password": PASSWORD, "csrf_token": token.group(1)}
    assert client.post("/login", data=data, headers=HTML, follow_redirects=False).status_code == 303
    status = client.get("/kiosk", headers=HTML)
    assert status.status_code == 200 and "seven-0001" in status.text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', status.text)
    assert csrf
    r = client.post(
        "/kiosk/versions/withdraw",
        data={"interface_version": "2", "reason": "v2.3 breaks the interface", "csrf_token": csrf.group(1)},
        headers=HTML,
        follow_redirects=False,
    )
    assert r.status_code == 303
    device = TestClient(app, raise_server_exceptions=False)
    r = device.post("/api/kiosk/sessions", headers=headers(world.kiosk))
    assert r.status_code == 409 and r.json()["rule"] == "version_withdrawn" and "更新" in r.json()["message"]
    older = KioskCredential(world.other_kiosk.kiosk_id, world.other_kiosk.credential, "1")
    code = next(c for c, m in world.municipality.items() if m == B)
    kiosk_flow(device, world, older, code)  # other versions keep working
    assert "v2.3 breaks the interface" in client.get("/kiosk", headers=HTML).text
    # a chain registers a new kiosk; its credential is shown once and works
    csrf_value = csrf.group(1)
    r = client.post(
        "/kiosk/operators",
        data={"operator_id": "family", "name": "ファミリー・デモ", "csrf_token": csrf_value},
        headers=HTML,
        follow_redirects=False,
    )
    assert r.status_code == 303
    form = {
        "operator_id": "family",
        "kiosk_id": "family-0001",
        "store_name": "駅南店",
        "interface_version": "1",
        "csrf_token": csrf_value,
    }
    r = client.post("/kiosk/kiosks", data=form, headers=HTML)
    assert r.status_code == 201
    shown = re.search(r"<code>([^<]+)</code>", r.text)
    assert shown
    new = KioskCredential("family-0001", shown.group(1), "1")
    assert device.post("/api/kiosk/sessions", headers=headers(new)).status_code == 201
    r = client.post("/kiosk/kiosks", data=form, headers=HTML)
    assert r.status_code == 409 and "kiosk_id: unique" in r.text
