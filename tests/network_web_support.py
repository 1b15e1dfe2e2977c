"""What the network's API and UI tests share: a populated network, the app, logged-in clients."""

from __future__ import annotations

import json
import random
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from kiban.core import accounts
from kiban.core.accounts import create_user
from kiban.core.audit import AuditEntry
from kiban.core.config import Settings
from kiban.core.events import Registry, drain, emit
from kiban.core.identifiers import IndividualNumberCipher, ResidentCodeGenerator
from kiban.network import api
from kiban.network import service as network
from kiban.network.handlers import register_handlers as network_handlers
from kiban.network.models import BulkJob, NationalIdentity, Provision
from kiban.numbering import service as numbering
from kiban.numbering.notices import notify_assigned
from kiban.register.handlers import register_handlers
from kiban.register.loader import load_population
from kiban.register.models import Resident
from kiban.register.population import generate_population
from kiban.web.app import WebOptions, add_template_dir, create_app

A = "131016"  # 千代田区 (東京都)
B = "212016"  # 岐阜市 (岐阜県)
PASSWORD = "correct horse battery"
HTML = {"accept": "text/html,application/xhtml+xml"}
JST = ZoneInfo("Asia/Tokyo")
CIPHER = IndividualNumberCipher(bytes(range(32)))
DATA = json.loads(resources.files("kiban.network").joinpath("data/uses.json").read_text(encoding="utf-8"))
USES = {u["code"]: u for u in DATA["uses"]}


def capability(app: FastAPI) -> None:
    add_template_dir(app, Path(api.__file__).parent / "templates", prefix="network")
    api.register_web(app)


@dataclass
class World:
    app: FastAPI
    factory: sessionmaker[Session]
    registry: Registry
    codes: list[str]
    data_dir: Path

    def client(self, username: str) -> TestClient:
        client = TestClient(self.app, raise_server_exceptions=False)
        page = client.get("/login", headers=HTML)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token
        data = {"username": username, "password": PASSWORD, "csrf_token": token.group(1)}
        response = client.post("/login", data=data, headers=HTML, follow_redirects=False)
        assert response.status_code == 303, response.text
        client.headers["X-CSRF-Token"] = client.get("/api/session").json()["csrf_token"]
        return client

    def person(self, code: str) -> NationalIdentity:
        with self.factory() as s:
            return s.scalars(
                select(NationalIdentity).where(
                    NationalIdentity.resident_code == code, NationalIdentity.is_current.is_(True)
                )
            ).one()

    def in_municipality(self, municipality: str) -> list[str]:
        with self.factory() as s:
            return list(
                s.scalars(
                    select(NationalIdentity.resident_code)
                    .where(NationalIdentity.municipality_code == municipality, NationalIdentity.is_current)
                    .order_by(NationalIdentity.resident_code)
                )
            )

    def counts(self) -> tuple[int, int, int]:
        """(provision log rows, audit entries, bulk jobs): what a refused bad input must not change."""
        with self.factory() as s:
            return (
                s.scalar(select(func.count()).select_from(Provision)) or 0,
                s.scalar(select(func.count()).select_from(AuditEntry)) or 0,
                s.scalar(select(func.count()).select_from(BulkJob)) or 0,
            )

    def provisions(self) -> list[Provision]:
        with self.factory() as s:
            return list(s.scalars(select(Provision).order_by(Provision.id)))

    def change(self, code: str, **changes: Any) -> str:
        """A ``register.identity_changed`` message about ``code`` (the current items, changed), delivered."""
        row = self.person(code)
        payload: dict[str, Any] = {
            "resident_code": code,
            "municipality_code": row.municipality_code,
            "family_name": row.family_name,
            "given_name": row.given_name,
            "family_name_kana": row.family_name_kana,
            "given_name_kana": row.given_name_kana,
            "birth_date": row.birth_date.isoformat(),
            "sex": row.sex,
            "address_text": row.address,
            "status": "active",
            "reason": "relocation",
            "reason_ja": "転居",
            "effective_on": datetime.now(JST).date().isoformat(),
        }
        payload.update(changes)
        with self.factory.begin() as s:
            event = emit(s, network.IDENTITY_CHANGED_IN, code, payload)
        drain(self.factory, self.registry)
        return str(getattr(event, "id", ""))


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accounts, "SCRYPT_N", 2**4)


@pytest.fixture
def world(
    engine: Engine, session_maker: sessionmaker[Session], db_url: str, tmp_path: Path
) -> Iterator[World]:
    """40 numbered residents of 千代田区 and 岐阜市 in both copies, the agency registry, staff accounts."""
    registry = Registry()
    register_handlers(registry)
    network_handlers(registry)
    households = list(generate_population([A, B], 40, seed=8, as_of=date(2025, 4, 1)))
    with session_maker.begin() as s:
        codes = numbering.issue_resident_codes(s, 40, ResidentCodeGenerator(random.Random(8)))
    load_population(engine, households, iter(codes))
    with session_maker.begin() as s:
        assigned = numbering.assign_individual_numbers_bulk(s, codes, CIPHER)
        where = {c: m for c, m in s.execute(select(Resident.resident_code, Resident.municipality_code))}
        notify_assigned(s, assigned, where)
    drain(session_maker, registry)
    with session_maker.begin() as s:
        network.seed_copies(s)
        network.load_registry(s)
        create_user(s, "nenkin", PASSWORD, "agency", organisation="nenkin", display_name="年金 担当")
        create_user(s, "passport", PASSWORD, "agency", organisation="mofa-passport", display_name="旅券 担当")
        create_user(s, "ghost", PASSWORD, "agency", organisation="no-such-agency", display_name="未登録")
        create_user(s, "chiyoda", PASSWORD, "clerk", municipality_code=A, display_name="千代田 職員")
        create_user(s, "gifu", PASSWORD, "clerk", municipality_code=B, display_name="岐阜 職員")
        create_user(s, "operator", PASSWORD, "national_operator", display_name="運用 太郎")
    settings = Settings(data_dir=tmp_path / "data", database_url_override=db_url)
    settings.ensure_dirs()
    app = create_app(
        settings, options=WebOptions(login_burst=1000, deliver_events=False), capabilities=[capability]
    )
    yield World(app, session_maker, registry, codes, settings.data_dir)
    app.state.engine.dispose()


@pytest.fixture
def nenkin(world: World) -> Iterator[TestClient]:
    client = world.client("nenkin")
    yield client
    client.close()


@pytest.fixture
def operator(world: World) -> Iterator[TestClient]:
    client = world.client("operator")
    yield client
    client.close()


@pytest.fixture
def chiyoda(world: World) -> Iterator[TestClient]:
    client = world.client("chiyoda")
    yield client
    client.close()


def csv_file(rows: list[str], header: str = "resident_code") -> bytes:
    return ("\r\n".join([header, *rows]) + "\r\n").encode()


def this_month() -> str:
    return datetime.now(UTC).astimezone(JST).strftime("%Y-%m")


def new_id() -> str:
    return str(uuid.uuid4())
