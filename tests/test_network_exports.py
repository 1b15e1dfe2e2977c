"""Network exports (SPEC K2 "Exports", issue 4 item 7): 人口移動報告 CSV, the CA's feed, codes for 符号."""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from kiban.cli.network_exports import app as cli_app
from kiban.core import accounts
from kiban.core.accounts import create_user
from kiban.core.audit import AuditEntry
from kiban.core.config import Settings
from kiban.core.events import emit
from kiban.core.identifiers import (
    IndividualNumberCipher,
    ResidentCodeGenerator,
    individual_number_check_digit,
)
from kiban.network import exports
from kiban.network.exports_api import router
from kiban.network.models import NationalIdentity
from kiban.numbering import service as numbering
from kiban.register.models import kana_search_key
from kiban.web.app import WebOptions, create_app

OPERATOR = exports.Caller("op-1", "national_operator", "J-LIS")
TODAY = date(2026, 11, 25)
CIPHER = IndividualNumberCipher(bytes(range(32)))
PASSWORD = "correct horse battery"
HTML = {"accept": "text/html,application/xhtml+xml"}


# --- constructed national copy ---------------------------------------------------------------------


_versions: dict[str, int] = {}


def version(
    s: Session,
    code: str,
    municipality: str,
    *,
    status: str = "active",
    reason: str = "initial_load",
    on: date = date(2026, 1, 1),
    birth: date = date(1990, 6, 15),
    sex: int = 1,
) -> None:
    current = s.scalars(
        select(NationalIdentity).where(NationalIdentity.resident_code == code, NationalIdentity.is_current)
    ).one_or_none()
    if current is not None:
        current.is_current = False
        s.flush()
    s.add(
        NationalIdentity(
            resident_code=code,
            prefecture_code=municipality[:2],
            municipality_code=municipality,
            version_no=(current.version_no + 1) if current else 1,
            is_current=True,
            family_name="試験",
            given_name="太郎",
            family_name_kana="シケン",
            given_name_kana="タロウ",
            kana_key=kana_search_key("シケン", "タロウ"),
            birth_date=birth,
            sex=sex,
            address="どこか",
            status=status,
            reason=reason,
            reason_ja=reason,
            effective_on=on,
            event_id=str(uuid.uuid4()),
            event_occurred_at=datetime.now(UTC),
            applied_at=datetime.now(UTC),
        )
    )
    s.flush()


def moved(s: Session, code: str, origin: str, destination: str, on: date, birth: date, sex: int) -> None:
    version(s, code, origin, birth=birth, sex=sex)
    version(s, code, origin, status="removed", reason="move_out", on=on, birth=birth, sex=sex)
    version(s, code, destination, reason="move_in", on=on, birth=birth, sex=sex)


GIFU, MINOKAMO, CHIYODA, SHINJUKU = "212016", "212113", "131016", "131041"


@pytest.fixture
def migrations(session_maker: sessionmaker[Session]) -> None:
    codes = iter(f"{n:011d}" for n in range(10_000_000_000, 10_000_000_100))
    with session_maker.begin() as s:
        # Into 岐阜市 in November 2026: two men 30-34 from 千代田区, a woman of 90 from 新宿区 whose
        # birthday is the move day, a baby (0-4) from 美濃加茂市, one with no earlier version.
        moved(s, next(codes), CHIYODA, GIFU, date(2026, 11, 2), date(1995, 1, 1), 1)
        moved(s, next(codes), CHIYODA, GIFU, date(2026, 11, 30), date(1992, 12, 1), 1)
        moved(s, next(codes), SHINJUKU, GIFU, date(2026, 11, 10), date(1936, 11, 10), 2)
        moved(s, next(codes), MINOKAMO, GIFU, date(2026, 11, 3), date(2025, 5, 5), 2)
        version(s, next(codes), GIFU, reason="move_in", on=date(2026, 11, 4), birth=date(1980, 1, 1), sex=1)
        # Into 千代田区: one from 岐阜市, aged 89 (not yet 90 on the day).
        moved(s, next(codes), GIFU, CHIYODA, date(2026, 11, 9), date(1936, 11, 10), 1)
        # Not counted: October, December, 国外からの転入, 転居.
        moved(s, next(codes), CHIYODA, GIFU, date(2026, 10, 31), date(1990, 1, 1), 1)
        moved(s, next(codes), CHIYODA, GIFU, date(2026, 12, 1), date(1990, 1, 1), 1)
        version(s, next(codes), GIFU, reason="immigration", on=date(2026, 11, 5))
        version(s, next(codes), GIFU, reason="relocation", on=date(2026, 11, 6))


EXPECTED_MUNICIPALITY = (
    "year_month,destination_prefecture_code,destination_municipality_code,origin_prefecture_code,"
    "origin_municipality_code,sex,age_group,count\r\n"
    "2026-11,13,131016,21,212016,1,85-89,1\r\n"
    "2026-11,21,212016,,,1,45-49,1\r\n"
    "2026-11,21,212016,13,131016,1,30-34,2\r\n"
    "2026-11,21,212016,13,131041,2,90+,1\r\n"
    "2026-11,21,212016,21,212113,2,0-4,1\r\n"
)
EXPECTED_PREFECTURE = (
    "year_month,destination_prefecture_code,destination_municipality_code,origin_prefecture_code,"
    "origin_municipality_code,sex,age_group,count\r\n"
    "2026-11,13,,21,,1,85-89,1\r\n"
    "2026-11,21,,,,1,45-49,1\r\n"
    "2026-11,21,,13,,1,30-34,2\r\n"
    "2026-11,21,,13,,2,90+,1\r\n"
    "2026-11,21,,21,,2,0-4,1\r\n"
)


def test_the_monthly_move_in_extract_counts_exactly_the_constructed_moves(
    migrations: None, session_maker: sessionmaker[Session]
) -> None:
    with session_maker.begin() as s:
        text = exports.move_in_csv(s, OPERATOR, "2026-11", today=TODAY)
        by_prefecture = exports.move_in_csv(s, OPERATOR, "2026-11", level="prefecture", today=TODAY)
    assert text == EXPECTED_MUNICIPALITY
    assert by_prefecture == EXPECTED_PREFECTURE
    # No names, no codes, no numbers: only the columns above.
    assert "試験" not in text and not re.search(r"\d{11}", text)
    with session_maker() as s:
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "export")).all()[-1]
    assert entry.purpose == "住民基本台帳人口移動報告" and entry.detail["cells"] == 5


@pytest.mark.parametrize(
    ("birth", "on", "group"),
    [
        (date(2000, 3, 1), date(2005, 2, 28), "0-4"),
        (date(2000, 3, 1), date(2005, 3, 1), "5-9"),
        (date(2000, 2, 29), date(2005, 2, 28), "0-4"),
        (date(1900, 1, 1), date(2026, 1, 1), "90+"),
        (date(1937, 1, 1), date(2026, 12, 31), "85-89"),
    ],
)
def test_age_groups_use_the_age_on_the_day(birth: date, on: date, group: str) -> None:
    assert exports.age_group(birth, on) == group


@pytest.mark.parametrize(
    ("month", "rule"),
    [
        ("2026-13", "year_month"),
        ("2026-1", "year_month"),
        ("２０２６-１１", "year_month"),
        ("2026-11-01", "year_month"),
        ("1899-12", "year_month"),
        ("2027-01", "future_month"),
        ("", "year_month"),
        ("2026-11; DROP TABLE x", "year_month"),
    ],
)
def test_a_bad_month_names_field_and_rule(
    session_maker: sessionmaker[Session], month: str, rule: str
) -> None:
    with session_maker.begin() as s, pytest.raises(exports.ExportError) as err:
        exports.move_in_extract(s, OPERATOR, month, today=TODAY)
    assert (err.value.field, err.value.rule, err.value.status) == ("month", rule, 422)


@pytest.mark.parametrize("role", ["clerk", "agency", "verifier", "call_centre"])
def test_other_roles_are_refused_and_the_refusal_is_logged(
    session_maker: sessionmaker[Session], role: str
) -> None:
    caller = exports.Caller("someone", role, "X")
    calls = [
        lambda s: exports.move_in_extract(s, caller, "2026-11", today=TODAY),
        lambda s: exports.identity_change_feed(s, caller),
        lambda s: exports.provide_resident_code(s, caller, resident_code="12345678903"),
    ]
    for call in calls:
        with session_maker() as s:
            with pytest.raises(exports.ExportError) as err:
                call(s)
            s.commit()  # what the API does with a refusal: keep its audit entry
        assert (err.value.field, err.value.rule, err.value.status) == ("role", "role_forbidden", 403)
    with session_maker() as s:
        refusals = s.scalars(select(AuditEntry).where(AuditEntry.action == "refuse")).all()
    assert len(refusals) == 3 and {r.role for r in refusals} == {role}


# --- the CA's feed ---------------------------------------------------------------------------------


def test_the_feed_pages_through_identity_changes_only_once_each(session_maker: sessionmaker[Session]) -> None:
    with session_maker.begin() as s:
        for i in range(5):
            emit(s, "network.identity_changed", f"1000000000{i}", {"resident_code": f"1000000000{i}", "n": i})
            emit(s, "register.identity_changed", f"1000000000{i}", {"other": i})
    seen: list[int] = []
    cursor = 0
    pages = 0
    while True:
        with session_maker.begin() as s:
            page = exports.identity_change_feed(s, OPERATOR, after=cursor, limit=2, settle=timedelta(0))
        if not page.events:
            assert page.next_cursor == cursor
            break
        pages += 1
        assert all(e["type"] == "network.identity_changed" for e in page.events)
        assert [e["cursor"] for e in page.events] == sorted(e["cursor"] for e in page.events)
        assert all(e["cursor"] > cursor for e in page.events)
        seen += [e["payload"]["n"] for e in page.events]
        cursor = page.next_cursor
    assert seen == [0, 1, 2, 3, 4] and pages == 3
    with session_maker() as s:
        reads = s.scalars(
            select(AuditEntry).where(AuditEntry.purpose == "異動等情報の提供（公的個人認証）")
        ).all()
    assert sorted(r.subject for r in reads) == [f"1000000000{i}" for i in range(5)]


def test_fresh_events_wait_for_the_settle_window(session_maker: sessionmaker[Session]) -> None:
    old = datetime.now(UTC) - timedelta(seconds=30)
    with session_maker.begin() as s:
        emit(s, "network.identity_changed", "10000000001", {"n": 1}, occurred_at=old)
        emit(s, "network.identity_changed", "10000000002", {"n": 2})  # just now
    with session_maker.begin() as s:
        page = exports.identity_change_feed(s, OPERATOR)
    assert [e["payload"]["n"] for e in page.events] == [1]
    with session_maker.begin() as s:
        rest = exports.identity_change_feed(s, OPERATOR, after=page.next_cursor, settle=timedelta(0))
    assert [e["payload"]["n"] for e in rest.events] == [2]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"after": -1}, "after"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"after": "5"}, "after"),
    ],
)
def test_bad_feed_requests_name_field_and_rule(
    session_maker: sessionmaker[Session], kwargs: dict[str, Any], field: str
) -> None:
    with session_maker.begin() as s, pytest.raises(exports.ExportError) as err:
        exports.identity_change_feed(s, OPERATOR, **kwargs)
    assert (err.value.field, err.value.rule) == (field, "range")


# --- 住民票コード for 符号 ---------------------------------------------------------------------------


def test_the_current_code_is_provided_from_a_number_or_an_old_code(
    session_maker: sessionmaker[Session],
) -> None:
    with session_maker.begin() as s:
        [code] = numbering.issue_resident_codes(s, 1, ResidentCodeGenerator(random.Random(3)))
        number = numbering.assign_individual_number(s, code, CIPHER)
        new_code = numbering.reissue_resident_code(
            s, code, "本人の請求", ResidentCodeGenerator(random.Random(4))
        )
    with session_maker.begin() as s:
        by_number = exports.provide_resident_code(s, OPERATOR, individual_number=number)
        by_old = exports.provide_resident_code(s, OPERATOR, resident_code=code)
        by_new = exports.provide_resident_code(s, OPERATOR, resident_code=f"　{new_code} ")
    assert by_number.resident_code == by_old.resident_code == by_new.resident_code == new_code
    assert (by_old.changed, by_new.changed, by_number.changed) == (True, False, False)
    with session_maker() as s:
        entries = s.scalars(select(AuditEntry).where(AuditEntry.subject == new_code)).all()
    assert [e.detail["query"] for e in entries] == ["individual_number", "resident_code", "resident_code"]
    assert all(number not in repr((e.items, e.detail, e.subject)) for e in entries)


def _valid_unissued_number() -> str:
    eleven = "12345678901"
    return eleven + str(individual_number_check_digit(eleven))


@pytest.mark.parametrize(
    ("kwargs", "field", "rule", "status"),
    [
        ({}, "query", "one_of", 422),
        ({"individual_number": "123456789018", "resident_code": "12345678903"}, "query", "one_of", 422),
        ({"individual_number": "123456789012"}, "individual_number", "check_digit", 422),
        ({"individual_number": "12345678901x"}, "individual_number", "digits_only", 422),
        ({"resident_code": "1234"}, "resident_code", "length", 422),
        ({"individual_number": "VALID"}, "individual_number", "not_found", 404),
    ],
)
def test_bad_or_unknown_code_queries(
    session_maker: sessionmaker[Session], kwargs: dict[str, str], field: str, rule: str, status: int
) -> None:
    if kwargs.get("individual_number") == "VALID":
        kwargs = {"individual_number": _valid_unissued_number()}
    with session_maker.begin() as s, pytest.raises(exports.ExportError) as err:
        exports.provide_resident_code(s, OPERATOR, **kwargs)
    assert (err.value.field, err.value.rule, err.value.status) == (field, rule, status)


# --- API and CLI -----------------------------------------------------------------------------------


@dataclass
class Web:
    app: FastAPI

    def client(self, username: str) -> TestClient:
        client = TestClient(self.app, raise_server_exceptions=False)
        page = client.get("/login", headers=HTML)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token
        data = {"username": username, "password": PASSWORD, "csrf_token": token.group(1)}
        assert client.post("/login", data=data, headers=HTML, follow_redirects=False).status_code == 303
        client.headers["X-CSRF-Token"] = client.get("/api/session").json()["csrf_token"]
        return client


@pytest.fixture
def web(
    migrations: None,
    session_maker: sessionmaker[Session],
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Web]:
    monkeypatch.setattr(accounts, "SCRYPT_N", 2**4)
    with session_maker.begin() as s:
        create_user(s, "operator", PASSWORD, "national_operator", display_name="運用 太郎")
        create_user(s, "agency", PASSWORD, "agency", display_name="機関 花子", organisation="nenkin")
    settings = Settings(data_dir=tmp_path / "data", database_url_override=db_url)
    settings.ensure_dirs()
    app = create_app(
        settings,
        options=WebOptions(login_burst=1000, deliver_events=False),
        capabilities=[lambda a: a.include_router(router)],
    )
    yield Web(app)
    app.state.engine.dispose()


def test_the_api_serves_each_export_to_its_role_only(web: Web, session_maker: sessionmaker[Session]) -> None:
    operator = web.client("operator")
    response = operator.get("/api/network/exports/move-ins.csv", params={"month": "2026-11"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    assert response.content.decode("utf-8") == EXPECTED_MUNICIPALITY
    bad = operator.get("/api/network/exports/move-ins.csv", params={"month": "2026/11"})
    assert bad.status_code == 422
    assert [(e["field"], e["rule"]) for e in bad.json()["errors"]] == [("month", "year_month")]
    feed = operator.get("/api/network/exports/identity-changes", params={"after": 0, "limit": 10})
    assert feed.status_code == 200 and feed.json() == {"events": [], "next_cursor": 0}
    unknown = operator.post("/api/network/exports/resident-code", json={"resident_code": "12345678903"})
    assert unknown.status_code == 404
    extra = operator.post("/api/network/exports/resident-code", json={"resident_code": "x", "name": "y"})
    assert extra.status_code == 422

    agency = web.client("agency")
    for response in (
        agency.get("/api/network/exports/move-ins.csv", params={"month": "2026-11"}),
        agency.get("/api/network/exports/identity-changes"),
        agency.post("/api/network/exports/resident-code", json={"resident_code": "12345678903"}),
    ):
        assert response.status_code == 403
    with session_maker() as s:
        refusals = s.scalars(
            select(AuditEntry).where(AuditEntry.action == "refuse", AuditEntry.actor == "agency")
        )
        assert len(refusals.all()) == 3
    anonymous = TestClient(web.app, raise_server_exceptions=False)
    assert anonymous.get("/api/network/exports/identity-changes").status_code == 401


def test_the_system_roles_get_only_their_own_export(session_maker: sessionmaker[Session]) -> None:
    ca = exports.Caller("ca-feed", "ca_system", "J-LIS-CA")
    linkage = exports.Caller("linkage", "linkage_system", "IPNS")
    with session_maker.begin() as s:  # the role column takes the new roles (migration 0025_roles)
        create_user(s, "ca-feed", PASSWORD, "ca_system", display_name="認証局システム")
        create_user(s, "linkage", PASSWORD, "linkage_system", display_name="情報連携システム")
        assert accounts.ROLE_NAMES_JA["ca_system"] and accounts.ROLE_NAMES_JA["linkage_system"]
        emit(s, "network.identity_changed", "10000000001", {"resident_code": "10000000001"})
    with session_maker.begin() as s:
        page = exports.identity_change_feed(s, ca, settle=timedelta(0))
        assert [e["key"] for e in page.events] == ["10000000001"]
        with pytest.raises(exports.ExportError) as err:
            exports.provide_resident_code(s, linkage, resident_code="12345678903")
        assert err.value.status == 404  # allowed to ask; the person is unknown
    refused = [
        lambda s: exports.move_in_extract(s, ca, "2026-11", today=TODAY),
        lambda s: exports.provide_resident_code(s, ca, resident_code="12345678903"),
        lambda s: exports.move_in_extract(s, linkage, "2026-11", today=TODAY),
        lambda s: exports.identity_change_feed(s, linkage),
    ]
    for call in refused:
        with session_maker() as s, pytest.raises(exports.ExportError) as err:
            call(s)
        assert (err.value.rule, err.value.status) == ("role_forbidden", 403)
    assert exports.EXPORT_ROLES == ("national_operator",)


def test_the_cli_writes_the_csv_and_pages_the_feed(
    migrations: None,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    session_maker: sessionmaker[Session],
) -> None:
    monkeypatch.setenv("KIBAN_DATABASE_URL", db_url)
    out = tmp_path / "moves.csv"
    runner = CliRunner()
    result = runner.invoke(
        cli_app, ["move-ins", "--month", "2026-11", "--out", str(out), "--data", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes().decode("utf-8") == EXPECTED_MUNICIPALITY
    bad = runner.invoke(cli_app, ["move-ins", "--month", "11/2026", "--data", str(tmp_path)])
    assert bad.exit_code == 2 and "year_month" in bad.output
    with session_maker.begin() as s:
        emit(s, "network.identity_changed", "10000000001", {"resident_code": "10000000001"})
    args = ["identity-changes", "--after", "0", "--settle-seconds", "0", "--data", str(tmp_path)]
    feed = runner.invoke(cli_app, args)
    assert feed.exit_code == 0 and '"key":"10000000001"' in feed.output and "next_cursor=" in feed.output


# --- properties ------------------------------------------------------------------------------------


def _age(birth: date, on: date) -> int:
    years = on.year - birth.year
    try:
        birthday = birth.replace(year=on.year)
    except ValueError:  # 29 February in a common year: the birthday counts from 1 March
        birthday = date(on.year, 3, 1)
    return years - (on < birthday)


@settings(max_examples=300, deadline=None)
@given(st.dates(date(1900, 1, 1), date(2030, 12, 31)), st.integers(0, 45_000))
def test_age_group_holds_the_age_on_the_day(birth: date, days: int) -> None:
    on = birth + timedelta(days=days)
    group = exports.age_group(birth, on)
    age = _age(birth, on)
    if group == "90+":
        assert age >= 90
    else:
        low, high = map(int, group.split("-"))
        assert low <= age <= high and high - low == 4 and low % 5 == 0
    # A day later never gives a younger group.
    assert exports._age_order(exports.age_group(birth, on + timedelta(days=1))) >= exports._age_order(group)


@settings(max_examples=200, deadline=None)
@given(st.integers(1900, 2026), st.integers(1, 12))
def test_every_past_month_parses_to_its_days(year: int, month: int) -> None:
    first, upto = exports.parse_month(f"{year:04d}-{month:02d}", today=TODAY)
    assert first == date(year, month, 1) and upto.day == 1 and 28 <= (upto - first).days <= 31


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20))
def test_any_other_text_is_a_clear_month_error(text: str) -> None:
    if re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", text) and text.isascii():
        return
    with pytest.raises(exports.ExportError) as err:
        exports.parse_month(text, today=TODAY)
    assert err.value.field == "month" and err.value.rule in ("year_month", "future_month")
