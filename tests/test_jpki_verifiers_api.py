"""Verifier services over HTTP: the operator's JSON API and pages, the verifiers' API (Bearer token
or staff session) and pages; roles; bad input as problem+json naming field and rule, changing nothing."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from kiban.core import accounts
from kiban.core.accounts import create_user
from kiban.core.config import Settings
from kiban.core.models.audit import AuditEntry
from kiban.jpki.verifiers import api
from kiban.jpki.verifiers import service as vs
from kiban.jpki.verifiers.models import Verifier, VerifierConsent, VerifierToken, VerifierUsage
from kiban.web.app import WebOptions, create_app
from test_jpki_verifiers import NEW_ADDRESS, NOW, OLD_ADDRESS, World
from test_jpki_verifiers import world as world  # noqa: F401 - the fixture

PASSWORD = "correct horse battery"
HTML = {"accept": "text/html,application/xhtml+xml"}
PROBLEM = "application/problem+json"


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accounts, "SCRYPT_N", 2**4)


@dataclass
class Web:
    app: FastAPI
    factory: sessionmaker[Session]
    world: World
    auth: str  # the holder's user-authentication certificate
    sign: str  # the holder's signature certificate

    def client(self, username: str | None = None) -> TestClient:
        client = TestClient(self.app, raise_server_exceptions=False)
        if username is None:
            return client
        page = client.get("/login", headers=HTML)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token
        data = {"username": username, "password": PASSWORD, "csrf_token": token.group(1)}
        response = client.post("/login", data=data, headers=HTML, follow_redirects=False)
        assert response.status_code == 303, response.text
        client.headers["X-CSRF-Token"] = client.get("/api/session").json()["csrf_token"]
        return client

    def counts(self) -> tuple[int, ...]:
        with self.factory() as s:
            return tuple(
                s.scalar(select(func.count()).select_from(m)) or 0
                for m in (Verifier, VerifierToken, VerifierConsent, VerifierUsage, AuditEntry)
            )


@pytest.fixture
def web(world: World, session_maker: sessionmaker[Session], db_url: str, tmp_path: Path) -> Iterator[Web]:  # noqa: F811
    with session_maker.begin() as s:
        auth, sign = world.pair(s)
        vs.create_verifier(
            s, code="bank-a", name="銀行A", category="certified_business", services=vs.SERVICES, actor="seed"
        )
        vs.create_verifier(
            s, code="shop", name="商店", category="certified_business", services=["revocation"], actor="seed"
        )
        create_user(s, "operator", PASSWORD, "national_operator", display_name="運用 太郎")
        create_user(s, "bank-user", PASSWORD, "verifier", organisation="bank-a", display_name="銀行 花子")
        create_user(s, "shop-user", PASSWORD, "verifier", organisation="shop")
        create_user(s, "ghost-user", PASSWORD, "verifier", organisation="ghost")
        create_user(s, "clerk", PASSWORD, "clerk", municipality_code="131016")
    settings = Settings(data_dir=tmp_path / "data", database_url_override=db_url)
    settings.ensure_dirs()
    app = create_app(
        settings, options=WebOptions(login_burst=1000, deliver_events=False), capabilities=[api.register_web]
    )
    yield Web(app, session_maker, world, auth, sign)
    app.state.engine.dispose()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_token(web: Web, code: str = "bank-a") -> str:
    op = web.client("operator")
    response = op.post(f"/api/jpki/verifiers/{code}/tokens", json={"label": "テスト"})
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


# --- roles ------------------------------------------------------------------------------------------


ROLE_CASES = [
    (None, "/api/jpki/status", 401),
    ("clerk", "/api/jpki/status", 403),
    ("bank-user", "/api/jpki/verifiers", 403),
    ("operator", "/api/jpki/status", 200),
    (None, "/api/jpki/verifier", 401),
    ("operator", "/api/jpki/links/" + "ab" * 20, 403),
    ("clerk", "/api/jpki/verifier", 403),
    ("bank-user", "/api/jpki/verifier", 200),
    ("ghost-user", "/api/jpki/verifier", 403),
]


def test_roles(web: Web) -> None:
    clients = {user: web.client(user) for user in {u for u, _, _ in ROLE_CASES}}
    for user, path, status in ROLE_CASES:
        response = clients[user].get(path)
        assert response.status_code == status, (user, path, response.text)
        if status >= 400:
            assert response.headers["content-type"].startswith(PROBLEM)
        if user == "ghost-user":
            assert response.json()["errors"][0]["rule"] == "unknown_verifier"


def test_operator_overview_and_registry_through_the_api(web: Web) -> None:
    op = web.client("operator")
    board = op.get("/api/jpki/status").json()
    assert {c["id"] for c in board["cas"]} >= {"jpki-sign", "jpki-auth"}
    assert {c["alert"] for c in board["crls"]} == {"missing"}
    assert op.get("/api/jpki/statistics", params={"months": 3}).json()["by_status"]["signature"]["good"] == 1
    created = op.post(
        "/api/jpki/verifiers",
        json={
            "code": "city-x",
            "name": "X市",
            "category": "local_government",
            "services": ["revocation", "links"],
            "ocsp_rate_per_second": 20,
        },
    )
    assert created.status_code == 201 and created.json()["category_ja"] == "地方公共団体"
    issued = op.post("/api/jpki/verifiers/city-x/tokens", json={"expires_in_days": 30}).json()
    detail = op.get("/api/jpki/verifiers/city-x").json()
    assert issued["token"] not in str(detail) and detail["tokens"][0]["hint"] == issued["token"][:10]
    anonymous = web.client()
    me = anonymous.get("/api/jpki/verifier", headers=bearer(issued["token"]))
    assert me.json()["code"] == "city-x" and me.json()["ocsp_rate_per_second"] == 20
    suspended = op.post("/api/jpki/verifiers/city-x/suspend", json={"reason": "調査"})
    assert suspended.json()["status"] == "suspended"
    refused = anonymous.get("/api/jpki/verifier", headers=bearer(issued["token"]))
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    assert op.post("/api/jpki/verifiers/city-x/resume").json()["status"] == "active"
    rotated = op.post(f"/api/jpki/verifiers/city-x/tokens/{issued['id']}/rotate", json={"overlap_hours": 0})
    assert rotated.status_code == 200
    assert anonymous.get("/api/jpki/verifier", headers=bearer(issued["token"])).status_code == 401
    assert anonymous.get("/api/jpki/verifier", headers=bearer(rotated.json()["token"])).status_code == 200
    revoked = op.post(f"/api/jpki/verifiers/city-x/tokens/{rotated.json()['id']}/revoke")
    assert revoked.json()["active"] is False
    assert anonymous.get("/api/jpki/verifier", headers=bearer(rotated.json()["token"])).status_code == 401
    updated = op.patch("/api/jpki/verifiers/city-x", json={"services": ["revocation"]})
    assert updated.json()["services"] == ["revocation"]
    records = op.get("/api/jpki/issuance-records", params={"resident_code": web.world.code}).json()
    assert {r["serial"] for r in records["records"]} == {web.auth, web.sign}
    openapi = op.get("/openapi.json").json()
    assert {"/api/jpki/basic-info", "/api/jpki/links/{serial}", "/api/jpki/verifiers"} <= set(
        openapi["paths"]
    )


def test_a_token_client_records_consent_and_gets_basic_info_after_a_move(web: Web) -> None:
    token = new_token(web)
    client = web.client()
    refused = client.post("/api/jpki/basic-info", json={"serial": web.sign}, headers=bearer(token))
    assert refused.status_code == 403
    assert refused.json()["errors"] == [
        {"field": "serial", "rule": "consent_required", "message": "the holder has not consented"}
    ]
    consent = client.post(
        "/api/jpki/consents",
        json={"serial": web.sign, "method": "signed", "given_at": NOW.isoformat()},
        headers=bearer(token),
    )
    assert consent.status_code == 201, consent.text
    first = client.post("/api/jpki/basic-info", json={"serial": web.sign}, headers=bearer(token)).json()
    assert first["address"] == OLD_ADDRESS
    web.world.move()
    after = client.post("/api/jpki/basic-info", json={"serial": web.sign.upper()}, headers=bearer(token))
    assert (after.json()["address"], after.json()["certificate_status"]) == (NEW_ADDRESS, "revoked")
    chain = client.get(f"/api/jpki/links/{web.sign}", headers=bearer(token)).json()
    assert chain["chain"][0]["certificate"]["reason"] == "affiliationChanged"
    status = client.get(f"/api/jpki/certificates/{web.auth}/status", headers=bearer(token)).json()
    assert status["status"] == "good"
    usage = {
        u["service"]: u["requests"]
        for u in client.get("/api/jpki/verifier/usage", headers=bearer(token)).json()
    }
    assert usage == {"basic_info": 2, "links": 1, "ocsp": 1}
    withdrawn = client.post(f"/api/jpki/consents/{consent.json()['id']}/withdraw", headers=bearer(token))
    assert withdrawn.json()["withdrawal_channel"] == "verifier"
    again = client.post("/api/jpki/basic-info", json={"serial": web.sign}, headers=bearer(token))
    assert again.json()["errors"][0]["rule"] == "consent_required"
    with web.factory() as s:
        provided = s.scalars(select(AuditEntry).where(AuditEntry.action == "provide")).all()
        refusals = s.scalars(select(AuditEntry).where(AuditEntry.action == "refuse")).all()
    with web.factory() as s:
        [token_id] = s.scalars(select(VerifierToken.id)).all()
    assert [(e.actor, e.organisation, e.subject) for e in provided] == [
        (f"token:{token_id}", "bank-a", web.world.code)
    ] * 2
    assert len(refusals) == 2


def test_a_staff_session_needs_csrf_on_the_verifier_api(web: Web) -> None:
    staff = web.client("bank-user")
    body = {"serial": web.sign, "method": "counter", "given_at": NOW.isoformat()}
    before = web.counts()
    missing = staff.post("/api/jpki/consents", json=body, headers={"X-CSRF-Token": ""})
    assert missing.status_code == 403 and web.counts() == before
    assert staff.post("/api/jpki/consents", json=body).status_code == 201
    info = staff.post("/api/jpki/basic-info", json={"serial": web.sign}).json()
    assert info["name"] == "山田　花子"
    shop = web.client("shop-user").post("/api/jpki/basic-info", json={"serial": web.sign})
    assert (shop.status_code, shop.json()["errors"][0]["rule"]) == (403, "service_not_registered")


# --- bad input -----------------------------------------------------------------------------------------

GOOD = {"code": "new-one", "name": "新規", "category": "certified_business", "services": ["revocation"]}


# (who, method, path, body, status, field, rule): one app for all (building one per case is slow).
BAD_INPUT: list[tuple[str, str, str, Any, int, str, str]] = [
    (
        "operator",
        "post",
        "/api/jpki/verifiers",
        {**GOOD, "code": "Bad Code"},
        422,
        "body.code",
        "string_pattern_mismatch",
    ),
    ("operator", "post", "/api/jpki/verifiers", {**GOOD, "code": 123}, 422, "body.code", "string_type"),
    (
        "operator",
        "post",
        "/api/jpki/verifiers",
        {**GOOD, "name": "名" * 201},
        422,
        "body.name",
        "string_too_long",
    ),
    (
        "operator",
        "post",
        "/api/jpki/verifiers",
        {**GOOD, "name": "悪\u0000意"},
        422,
        "name",
        "control_characters",
    ),
    (
        "operator",
        "post",
        "/api/jpki/verifiers",
        {**GOOD, "category": "embassy"},
        422,
        "body.category",
        "literal_error",
    ),
    (
        "operator",
        "post",
        "/api/jpki/verifiers",
        {**GOOD, "services": "revocation"},
        422,
        "body.services",
        "list_type",
    ),
    (
        "operator",
        "post",
        "/api/jpki/verifiers",
        {**GOOD, "ocsp_rate_per_second": "fast"},
        422,
        "body.ocsp_rate_per_second",
        "float_type",
    ),
    (
        "operator",
        "post",
        "/api/jpki/verifiers",
        {**GOOD, "ocsp_rate_per_second": 1e9},
        422,
        "body.ocsp_rate_per_second",
        "less_than_equal",
    ),
    (
        "operator",
        "post",
        "/api/jpki/verifiers",
        {**GOOD, "admin": True},
        422,
        "body.admin",
        "extra_forbidden",
    ),
    ("operator", "post", "/api/jpki/verifiers", {**GOOD, "code": "bank-a"}, 409, "code", "unique"),
    (
        "operator",
        "post",
        "/api/jpki/verifiers",
        {**GOOD, "category": "delegate", "principal_code": "nobody"},
        422,
        "principal_code",
        "unknown_verifier",
    ),
    ("operator", "get", "/api/jpki/verifiers/nobody", None, 404, "code", "unknown_verifier"),
    ("operator", "get", "/api/jpki/verifiers/%3Cscript%3E", None, 422, "code", "pattern"),
    (
        "operator",
        "post",
        "/api/jpki/verifiers/bank-a/suspend",
        {"reason": ""},
        422,
        "body.reason",
        "string_too_short",
    ),
    (
        "operator",
        "post",
        "/api/jpki/verifiers/bank-a/tokens",
        {"expires_in_days": "7"},
        422,
        "body.expires_in_days",
        "int_type",
    ),
    (
        "operator",
        "post",
        "/api/jpki/verifiers/bank-a/tokens/999/revoke",
        None,
        404,
        "token_id",
        "unknown_token",
    ),
    (
        "operator",
        "get",
        "/api/jpki/issuance-records?resident_code=12345",
        None,
        422,
        "query.resident_code",
        "string_pattern_mismatch",
    ),
    ("operator", "get", "/api/jpki/issuance-records?ca_id=evil", None, 422, "ca_id", "enum"),
    (
        "operator",
        "get",
        "/api/jpki/issuance-records?page_size=1000",
        None,
        422,
        "query.page_size",
        "less_than_equal",
    ),
    ("bank-user", "get", "/api/jpki/links/zz", None, 422, "serial", "hex"),
    ("bank-user", "get", "/api/jpki/links/" + "a" * 100, None, 422, "serial", "hex"),
    ("bank-user", "get", "/api/jpki/links/%27%3B%20DROP%20TABLE%20x", None, 422, "serial", "hex"),
    ("bank-user", "get", "/api/jpki/links/" + "ab" * 20, None, 404, "serial", "known_certificate"),
    ("bank-user", "post", "/api/jpki/basic-info", {"serial": 5}, 422, "body.serial", "string_type"),
    (
        "bank-user",
        "post",
        "/api/jpki/basic-info",
        {"serial": "a" * 60},
        422,
        "body.serial",
        "string_too_long",
    ),
    (
        "bank-user",
        "post",
        "/api/jpki/basic-info",
        {"serial": "<script>"},
        422,
        "body.serial",
        "string_pattern_mismatch",
    ),
    ("bank-user", "post", "/api/jpki/basic-info", {}, 422, "body.serial", "missing"),
    (
        "bank-user",
        "post",
        "/api/jpki/consents",
        {"serial": "ab", "method": "signed", "given_at": "yesterday"},
        422,
        "body.given_at",
        "datetime_from_date_parsing",
    ),
    (
        "bank-user",
        "post",
        "/api/jpki/consents",
        {"serial": "ab", "method": "mind", "given_at": "2026-01-01T00:00:00Z"},
        422,
        "body.method",
        "literal_error",
    ),
    ("bank-user", "post", "/api/jpki/consents/999/withdraw", None, 404, "consent_id", "unknown_consent"),
    ("bank-user", "post", "/api/jpki/consents/abc/withdraw", None, 422, "path.consent_id", "int_parsing"),
]


def test_bad_input_is_a_problem_naming_field_and_rule_and_changes_nothing(web: Web) -> None:
    clients = {who: web.client(who) for who in {case[0] for case in BAD_INPUT}}
    for who, method, path, body, status, field, rule in BAD_INPUT:
        case = (who, method, path, rule)
        before = web.counts()
        response = getattr(clients[who], method)(path, **({"json": body} if body is not None else {}))
        assert response.status_code == status, (case, response.text)
        assert response.headers["content-type"].startswith(PROBLEM), case
        errors = response.json()["errors"]
        assert (errors[0]["field"], errors[0]["rule"]) == (field, rule), case
        after = web.counts()
        if rule == "known_certificate":  # a refused look-up is logged, nothing else
            assert after[:4] == before[:4] and after[4] == before[4] + 1, case
        else:
            assert after == before, case
        assert "<script>" not in str(errors) and "DROP TABLE" not in str(errors)  # no echo of hostile input


def test_bearer_garbage_is_401(web: Web) -> None:
    client = web.client()
    for header in (
        "Bearer",
        "Bearer ",
        "Basic abc",
        "Bearer kbv_" + "x" * 43,
        "Bearer " + "%00" * 10,
        "Bearer a b c",
    ):
        response = client.get("/api/jpki/verifier", headers={"Authorization": header})
        assert response.status_code == 401, header
        assert response.json()["type"].endswith("invalid-token")


# --- pages -----------------------------------------------------------------------------------------------


def test_operator_pages(web: Web) -> None:
    op = web.client("operator")
    page = op.get("/jpki", headers=HTML)
    assert page.status_code == 200 and "認証局の運用状況" in page.text and "jpki-sign" in page.text
    assert "CRL が発行されていません" in page.text
    form = op.get("/jpki/verifiers", headers=HTML)
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token
    bad = op.post(
        "/jpki/verifiers",
        data={
            "csrf_token": token.group(1),
            "code": "Bad!",
            "name": "<b>悪</b>",
            "category": "certified_business",
        },
        headers=HTML,
    )
    assert bad.status_code == 422 and "形式が正しくありません" in bad.text and "必須項目です" in bad.text
    assert "&lt;b&gt;悪&lt;/b&gt;" in bad.text and "<b>悪</b>" not in bad.text
    created = op.post(
        "/jpki/verifiers",
        data={
            "csrf_token": token.group(1),
            "code": "city-y",
            "name": "<i>Y市</i>",
            "category": "local_government",
            "services": ["revocation", "links"],
            "ocsp_rate_per_second": "",
        },
        headers=HTML,
        follow_redirects=False,
    )
    assert created.status_code == 303 and created.headers["location"] == "/jpki/verifiers/city-y"
    detail = op.get("/jpki/verifiers/city-y", headers=HTML)
    assert "&lt;i&gt;Y市&lt;/i&gt;" in detail.text and "新旧紐付け" in detail.text
    shown = op.post(
        "/jpki/verifiers/city-y/tokens", data={"csrf_token": token.group(1), "label": "本番"}, headers=HTML
    )
    secret = re.search(r'data-testid="token">(kbv_[^<]+)<', shown.text)
    assert shown.status_code == 200 and secret and "今回だけ表示" in shown.text
    days = op.post(
        "/jpki/verifiers/city-y/tokens",
        data={"csrf_token": token.group(1), "expires_in_days": "abc"},
        headers=HTML,
    )
    assert days.status_code == 422 and "整数で入力してください" in days.text
    again = op.get("/jpki/verifiers/city-y", headers=HTML)
    assert secret.group(1) not in again.text and secret.group(1)[:10] in again.text
    suspend = op.post(
        "/jpki/verifiers/city-y/suspend", data={"csrf_token": token.group(1), "reason": "点検"}, headers=HTML
    )
    assert "利用停止（点検）" in suspend.text
    assert web.client().get("/api/jpki/verifier", headers=bearer(secret.group(1))).status_code == 401
    records = op.get("/jpki/issuance", params={"resident_code": web.world.code}, headers=HTML)
    assert web.sign in records.text and "2 件" in records.text
    wrong = op.get("/jpki/issuance", params={"resident_code": "12"}, headers=HTML)
    assert wrong.status_code == 422
    # Verifier pages are not the operator's.
    assert op.get("/jpki/basic-info", headers=HTML).status_code == 403


def test_verifier_pages(web: Web) -> None:
    staff = web.client("bank-user")
    home = staff.get("/", headers=HTML).text  # the navigation links the pages ROLE_TASKS promised
    for path, label in (("/jpki/verify", "電子証明書の検証"), ("/jpki/links", "新旧紐付け")):
        assert f'<li><a href="{path}">{label}</a></li>' in home, path
    operator_home = web.client("operator").get("/", headers=HTML).text
    assert '<li><a href="/jpki">公的個人認証</a></li>' in operator_home
    assert '<li><a href="/jpki/links">' not in operator_home
    page = staff.get("/jpki/basic-info", headers=HTML)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token and page.status_code == 200
    refused = staff.post(
        "/jpki/basic-info", data={"csrf_token": token.group(1), "serial": web.sign}, headers=HTML
    )
    assert refused.status_code == 403 and "本人の同意が記録されていません" in refused.text
    recorded = staff.post(
        "/jpki/consents",
        data={"csrf_token": token.group(1), "serial": web.sign, "method": "written", "given_at": ""},
        headers=HTML,
        follow_redirects=False,
    )
    assert recorded.status_code == 303, recorded.text
    web.world.move()
    shown = staff.post(
        "/jpki/basic-info", data={"csrf_token": token.group(1), "serial": web.sign}, headers=HTML
    )
    assert shown.status_code == 200 and NEW_ADDRESS in shown.text and "失効（記載事項の変更）" in shown.text
    links = staff.get("/jpki/links", params={"serial": web.sign}, headers=HTML)
    assert links.status_code == 200 and "有効な後継の証明書はありません" in links.text
    bad = staff.get("/jpki/links", params={"serial": "<script>"}, headers=HTML)
    assert bad.status_code == 422 and "16進数" in bad.text and "<script>" not in bad.text
    verify = staff.get("/jpki/verify", params={"serial": web.auth}, headers=HTML)
    assert verify.status_code == 200 and "有効" in verify.text
    assert staff.get("/jpki", headers=HTML).status_code == 403
