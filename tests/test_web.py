"""The web skeleton: login, roles, sessions, CSRF, problem+json, health, readiness and metrics."""

from __future__ import annotations

import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from kiban.core import accounts
from kiban.core.accounts import create_user
from kiban.core.config import Settings
from kiban.core.database import transaction
from kiban.core.models.accounts import User, WebSession
from kiban.web.app import NavItem, WebOptions, add_nav_item, create_app, load_or_create_secret
from kiban.web.auth import CurrentUser, csrf_exempt, current_user, require_clerk, require_role
from kiban.web.problems import Problem

PASSWORD = "correct horse battery"
HTML = {"accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
PROBLEM_KEYS = {"type", "title", "status", "detail", "instance"}
SECRET_IN_EXCEPTION = "db-password-hunter2"


class RuleBroken(ValueError):
    """Like kiban.core.identifiers.IdentifierError: str() quotes the value, attributes do not."""

    def __init__(self, value: str) -> None:
        super().__init__(f"individual_number {value}: wrong check digit")
        self.field, self.rule, self.detail = "individual_number", "check_digit", "wrong check digit"


class EchoBody(BaseModel):
    count: int
    name: Annotated[str, Field(max_length=10)]


def schema_heads() -> list[str]:
    from alembic.script import ScriptDirectory

    from kiban.core.database import alembic_config

    return list(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads())


def test_capability(app: FastAPI) -> None:
    """Routes a capability would add, to exercise the dependencies and error mapping."""
    router = APIRouter(prefix="/test")

    @router.get("/clerks-only")
    def clerks_only(user: Annotated[CurrentUser, Depends(require_role("clerk"))]) -> dict[str, str]:
        return {"username": user.username}

    @router.get("/municipality/{code}")
    def municipality(code: str, user: Annotated[CurrentUser, Depends(current_user)]) -> dict[str, str]:
        require_clerk(code, user)
        return {"code": code}

    @router.post("/echo")
    def echo(body: EchoBody, user: Annotated[CurrentUser, Depends(current_user)]) -> dict[str, Any]:
        return body.model_dump()

    @router.get("/boom")
    def boom() -> None:
        raise RuntimeError(f"connection failed for {SECRET_IN_EXCEPTION}")

    @router.get("/domain-error")
    def domain_error() -> None:
        raise RuleBroken("123456789019")

    @router.get("/conflict")
    def conflict() -> None:
        raise Problem(409, "Already changed by someone else.", slug="conflict")

    @router.post("/machine")
    @csrf_exempt
    def machine(request: Request) -> dict[str, str]:
        return {"ok": "yes"}

    app.include_router(router)
    add_nav_item(app, NavItem("テスト業務", "/test/clerks-only", roles=("clerk",)))


test_capability.__test__ = False  # type: ignore[attr-defined]


@dataclass
class Env:
    settings: Settings
    app: FastAPI
    client: TestClient
    factory: sessionmaker[Session]

    def new_client(self) -> TestClient:
        return TestClient(self.app, raise_server_exceptions=False)


def make_env(
    db_url: str, data_dir: Path, factory: sessionmaker[Session], options: WebOptions | None = None
) -> Env:
    s = Settings(data_dir=data_dir, database_url_override=db_url)
    app = create_app(s, options=options or WebOptions(login_burst=1000), capabilities=[test_capability])
    return Env(s, app, TestClient(app, raise_server_exceptions=False), factory)


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    # These tests are about the web layer; test_accounts.py covers the real scrypt parameters.
    monkeypatch.setattr(accounts, "SCRYPT_N", 2**4)


@pytest.fixture
def users(session_maker: sessionmaker[Session]) -> None:
    with transaction(session_maker) as db:
        create_user(db, "yamada", PASSWORD, "clerk", municipality_code="131016", display_name="山田 花子")
        create_user(db, "operator", PASSWORD, "national_operator", display_name="運用 太郎")
        create_user(db, "pension", PASSWORD, "agency", organisation="nenkin", display_name="年金 次郎")
        create_user(db, "bank", PASSWORD, "verifier", organisation="bank-01", display_name="銀行 三郎")
        create_user(db, "callcentre", PASSWORD, "call_centre", display_name="受付 四郎")
        create_user(
            db, "hostile", PASSWORD, "call_centre", display_name="<script>alert('x')</script><b>太字</b>"
        )


@pytest.fixture
def env(db_url: str, tmp_path: Path, session_maker: sessionmaker[Session], users: None) -> Iterator[Env]:
    e = make_env(db_url, tmp_path / "data", session_maker)
    yield e
    e.client.close()
    e.app.state.engine.dispose()


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field in the page"
    return match.group(1)


def login(client: TestClient, username: str, password: str = PASSWORD, **extra: str) -> Any:
    page = client.get("/login", headers=HTML)
    data = {"username": username, "password": password, "csrf_token": csrf_from(page.text), **extra}
    return client.post("/login", data=data, headers=HTML, follow_redirects=False)


def api_token(client: TestClient) -> str:
    response = client.get("/api/session")
    assert response.status_code == 200, response.text
    token: str = response.json()["csrf_token"]
    return token


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert set(body) >= PROBLEM_KEYS and body["status"] == status
    return body


def user_count(factory: sessionmaker[Session]) -> int:
    with factory() as s:
        return s.scalar(select(func.count()).select_from(User)) or 0


def session_rows(factory: sessionmaker[Session]) -> int:
    with factory() as s:
        return s.scalar(select(func.count()).select_from(WebSession)) or 0


# --- login -----------------------------------------------------------------------------------


def test_login_leads_to_the_home_page_with_role_and_municipality(env: Env) -> None:
    response = login(env.client, "yamada")
    assert response.status_code == 303 and response.headers["location"] == "/"
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie
    home = env.client.get("/", headers=HTML)
    assert home.status_code == 200
    assert "ホーム" in home.text and "市区町村職員" in home.text
    assert "東京都千代田区（団体コード 131016）" in home.text
    assert "山田 花子" in home.text
    assert 'href="/test/clerks-only"' in home.text  # navigation a capability added
    assert "住民記録" in home.text and "準備中" in home.text  # tasks to come are not links
    assert session_rows(env.factory) == 1


@pytest.mark.parametrize(
    ("username", "role_ja", "absent"),
    [
        ("operator", "全国センター運用者", "団体コード"),
        ("pension", "国の行政機関等", "団体コード"),
        ("bank", "署名検証者・利用者証明検証者", "団体コード"),
        ("callcentre", "コールセンター担当者", "団体コード"),
    ],
)
def test_each_role_sees_its_name_and_no_municipality(
    env: Env, username: str, role_ja: str, absent: str
) -> None:
    login(env.client, username)
    home = env.client.get("/", headers=HTML)
    assert role_ja in home.text and absent not in home.text
    assert 'href="/test/clerks-only"' not in home.text  # the clerk's navigation is not theirs


@pytest.mark.parametrize(("username", "password"), [("yamada", "wrong password!"), ("nobody", PASSWORD)])
def test_failed_login_says_so_in_japanese_and_starts_no_session(
    env: Env, username: str, password: str
) -> None:
    response = login(env.client, username, password)
    assert response.status_code == 401
    assert "ユーザー名またはパスワードが正しくありません。" in response.text
    assert session_rows(env.factory) == 0
    assert env.client.get("/", headers=HTML, follow_redirects=False).headers["location"] == "/login"


def test_failed_login_for_api_clients_is_a_problem(env: Env) -> None:
    token = csrf_from(env.client.get("/login").text)
    response = env.client.post("/login", data={"username": "yamada", "password": "nope", "csrf_token": token})
    body = assert_problem(response, 401)
    assert body["type"] == "urn:kiban:problem:login-failed"


def test_lockout_shows_the_japanese_lock_message(env: Env) -> None:
    for _ in range(5):
        login(env.client, "yamada", "wrong password!")
    response = login(env.client, "yamada")
    assert response.status_code == 401
    assert "一時的にロックされています" in response.text


def test_login_rotates_the_csrf_token(env: Env) -> None:
    before = csrf_from(env.client.get("/login").text)
    login(env.client, "yamada")
    assert api_token(env.client) != before


def test_logout_ends_the_session_even_for_a_copied_cookie(env: Env) -> None:
    login(env.client, "yamada")
    stolen = dict(env.client.cookies)
    token = csrf_from(env.client.get("/", headers=HTML).text)
    out = env.client.post("/logout", data={"csrf_token": token}, headers=HTML, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/login?logged_out=1"
    assert "ログアウトしました。" in env.client.get(out.headers["location"], headers=HTML).text
    assert session_rows(env.factory) == 0
    replay = env.new_client()
    replay.cookies.update(stolen)
    assert_problem(replay.get("/api/session"), 401)


def test_idle_sessions_expire(env: Env) -> None:
    login(env.client, "yamada")
    assert env.client.get("/api/session").status_code == 200
    with transaction(env.factory) as db:
        for row in db.scalars(select(WebSession)):
            row.last_seen_at -= timedelta(minutes=31)
    body = assert_problem(env.client.get("/api/session"), 401)
    assert body["type"] == "urn:kiban:problem:login-required"
    assert session_rows(env.factory) == 0


def test_sessions_end_at_the_absolute_limit_even_when_active(env: Env) -> None:
    login(env.client, "yamada")
    with transaction(env.factory) as db:
        for row in db.scalars(select(WebSession)):
            row.expires_at = row.created_at
    assert_problem(env.client.get("/api/session"), 401)


def test_disabling_an_account_ends_its_sessions(env: Env) -> None:
    login(env.client, "yamada")
    with transaction(env.factory) as db:
        db.execute(update(User).where(User.username == "yamada").values(disabled=True))
    assert_problem(env.client.get("/api/session"), 401)


def test_pages_needing_login_send_browsers_to_the_login_page(env: Env) -> None:
    response = env.client.get("/test/clerks-only?x=1", headers=HTML, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2Ftest%2Fclerks-only%3Fx%3D1"
    login_page = env.client.get(response.headers["location"], headers=HTML)
    assert 'name="next" value="/test/clerks-only?x=1"' in login_page.text
    done = login(env.client, "yamada", next="/test/clerks-only?x=1")
    assert done.headers["location"] == "/test/clerks-only?x=1"


@pytest.mark.parametrize(
    "target", ["//evil.example/", "https://evil.example/", "/\\evil.example", "javascript:x"]
)
def test_login_never_redirects_off_site(env: Env, target: str) -> None:
    assert login(env.client, "yamada", next=target).headers["location"] == "/"


def test_login_rate_limit_per_username_and_address(
    db_url: str, tmp_path: Path, session_maker: Any, users: None
) -> None:
    e = make_env(
        db_url, tmp_path / "data", session_maker, WebOptions(login_burst=3, login_refill_per_second=0.01)
    )
    for _ in range(3):
        assert login(e.client, "nobody", "wrong password!").status_code == 401
    limited = login(e.client, "nobody", "wrong password!")
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert "ログインの試行が多すぎます" in limited.text
    # Another username from the same address still gets through.
    assert login(e.client, "yamada").status_code == 303
    metrics = e.client.get("/metrics").text
    assert 'kiban_logins_total{outcome="rate_limited"} 1.0' in metrics
    e.app.state.engine.dispose()


# --- roles -----------------------------------------------------------------------------------


def test_wrong_role_is_forbidden(env: Env) -> None:
    login(env.client, "operator")
    body = assert_problem(env.client.get("/test/clerks-only"), 403)
    assert body["type"] == "urn:kiban:problem:role-forbidden"
    page = env.client.get("/test/clerks-only", headers=HTML)
    assert page.status_code == 403 and "全国センター運用者" in page.text


def test_right_role_is_allowed(env: Env) -> None:
    login(env.client, "yamada")
    assert env.client.get("/test/clerks-only").json() == {"username": "yamada"}


def test_anonymous_api_call_is_401(env: Env) -> None:
    assert_problem(env.client.get("/test/clerks-only"), 401)


@pytest.mark.parametrize(
    ("username", "code", "status"),
    [
        ("yamada", "131016", 200),
        ("yamada", "131041", 403),
        ("operator", "131016", 403),
        ("pension", "131016", 403),
    ],
)
def test_clerks_see_only_their_municipality(env: Env, username: str, code: str, status: int) -> None:
    login(env.client, username)
    response = env.client.get(f"/test/municipality/{code}")
    assert response.status_code == status
    if status == 403:
        assert response.json()["type"] == "urn:kiban:problem:municipality-forbidden"


def test_require_role_refuses_unknown_role_names() -> None:
    with pytest.raises(ValueError, match="unknown roles"):
        require_role("admin")


# --- CSRF ------------------------------------------------------------------------------------


def test_unsafe_request_without_token_is_refused_and_changes_nothing(env: Env) -> None:
    login(env.client, "yamada")
    body = assert_problem(env.client.post("/logout"), 403)
    assert body["type"] == "urn:kiban:problem:csrf-failed"
    assert session_rows(env.factory) == 1
    assert env.client.get("/api/session").status_code == 200


@pytest.mark.parametrize("how", ["wrong-field", "wrong-header", "other-session"])
def test_wrong_csrf_tokens_are_refused(env: Env, how: str) -> None:
    other = env.new_client()
    other_token = csrf_from(other.get("/login").text)
    login(env.client, "yamada")
    if how == "wrong-field":
        response = env.client.post("/logout", data={"csrf_token": "x" * 43})
    elif how == "wrong-header":
        response = env.client.post("/logout", headers={"X-CSRF-Token": "forged"})
    else:
        response = env.client.post("/logout", data={"csrf_token": other_token})
    assert_problem(response, 403)
    assert session_rows(env.factory) == 1


def test_api_clients_send_the_token_in_a_header(env: Env) -> None:
    login(env.client, "yamada")
    response = env.client.post(
        "/test/echo", json={"count": 2, "name": "ok"}, headers={"X-CSRF-Token": api_token(env.client)}
    )
    assert response.status_code == 200 and response.json() == {"count": 2, "name": "ok"}


def test_login_form_itself_needs_the_token(env: Env) -> None:
    env.client.get("/login")
    response = env.client.post("/login", data={"username": "yamada", "password": PASSWORD}, headers=HTML)
    assert response.status_code == 403 and "CSRF" in response.text
    assert session_rows(env.factory) == 0


def test_csrf_exempt_machine_endpoints_take_no_token(env: Env) -> None:
    assert env.client.post("/test/machine").json() == {"ok": "yes"}


def test_csrf_failure_is_a_japanese_page_for_browsers(env: Env) -> None:
    login(env.client, "yamada")
    page = env.client.post("/logout", headers=HTML)
    assert page.status_code == 403 and page.headers["content-type"].startswith("text/html")
    assert "セキュリティ確認" in page.text


# --- problem+json ----------------------------------------------------------------------------


@pytest.fixture
def logged_in(env: Env) -> Env:
    login(env.client, "yamada")
    env.client.headers["X-CSRF-Token"] = api_token(env.client)
    return env


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"count": "many", "name": "a"}, {("body.count", "int_parsing")}),
        ({"count": 1}, {("body.name", "missing")}),
        ({"count": [1], "name": 5}, {("body.count", "int_type"), ("body.name", "string_type")}),
        ({"count": 1, "name": "x" * 11}, {("body.name", "string_too_long")}),
    ],
)
def test_validation_errors_name_field_and_rule(
    logged_in: Env, payload: dict[str, Any], expected: set[tuple[str, str]]
) -> None:
    body = assert_problem(logged_in.client.post("/test/echo", json=payload), 422)
    assert body["type"] == "urn:kiban:problem:validation-failed"
    assert {(e["field"], e["rule"]) for e in body["errors"]} == expected
    assert all(e["message"] for e in body["errors"])


def test_malformed_json_is_a_422_problem(logged_in: Env) -> None:
    response = logged_in.client.post(
        "/test/echo", content=b"{not json", headers={"content-type": "application/json"}
    )
    body = assert_problem(response, 422)
    assert body["errors"][0]["rule"] == "json_invalid"


@pytest.mark.parametrize(
    "username",
    ["<script>alert(1)</script>", "a\x00b", "x" * 1_000_000, "山田", "' OR 1=1 --"],
    ids=["script", "nul", "1MB", "kanji", "sql"],
)
def test_hostile_usernames_get_clear_errors_change_nothing_and_are_not_reflected(
    env: Env, username: str
) -> None:
    before = user_count(env.factory)
    token = csrf_from(env.client.get("/login").text)
    response = env.client.post(
        "/login", data={"username": username, "password": PASSWORD, "csrf_token": token}
    )
    body = assert_problem(response, 422)
    rule = "string_too_long" if len(username) > 64 else "string_pattern_mismatch"
    assert body["errors"] == [
        {"field": "body.username", "rule": rule, "message": body["errors"][0]["message"]}
    ]
    assert username[:20] not in response.text
    page = env.client.post(
        "/login", data={"username": username, "password": PASSWORD, "csrf_token": token}, headers=HTML
    )
    assert page.status_code == 422 and "<script>alert" not in page.text
    assert user_count(env.factory) == before and session_rows(env.factory) == 0


def test_wrong_types_on_login_are_422(env: Env) -> None:
    token = csrf_from(env.client.get("/login").text)
    response = env.client.post(
        "/login", json={"username": ["yamada"], "password": 1}, headers={"X-CSRF-Token": token}
    )
    body = assert_problem(response, 422)
    assert {(e["field"], e["rule"]) for e in body["errors"]} == {
        ("body.username", "missing"),
        ("body.password", "missing"),
    }


def test_html_in_a_display_name_is_escaped(env: Env) -> None:
    login(env.client, "hostile")
    home = env.client.get("/", headers=HTML).text
    assert "<script>alert" not in home and "<b>太字</b>" not in home
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&lt;b&gt;太字&lt;/b&gt;" in home


def test_not_found_and_wrong_method_are_problems(env: Env) -> None:
    assert_problem(env.client.get("/no/such/page"), 404)
    assert_problem(env.client.get("/logout"), 405)
    page = env.client.get("/no/such/page", headers=HTML)
    assert page.status_code == 404 and "ページが見つかりません" in page.text


def test_domain_errors_with_field_and_rule_are_422_without_the_value(env: Env) -> None:
    response = env.client.get("/test/domain-error")
    body = assert_problem(response, 422)
    assert body["errors"] == [
        {"field": "individual_number", "rule": "check_digit", "message": "wrong check digit"}
    ]
    assert "123456789019" not in response.text


def test_conflict_is_a_problem(env: Env) -> None:
    assert assert_problem(env.client.get("/test/conflict"), 409)["type"] == "urn:kiban:problem:conflict"


def test_unexpected_errors_reveal_nothing(env: Env) -> None:
    response = env.client.get("/test/boom")
    body = assert_problem(response, 500)
    assert SECRET_IN_EXCEPTION not in response.text and "Traceback" not in response.text
    assert re.fullmatch(r"[0-9a-f]{32}", body["incident"])
    assert response.headers["x-frame-options"] == "DENY"
    page = env.client.get("/test/boom", headers=HTML)
    assert page.status_code == 500 and "システムエラーが発生しました" in page.text
    assert SECRET_IN_EXCEPTION not in page.text


def test_oversized_bodies_are_refused_before_parsing(
    db_url: str, tmp_path: Path, session_maker: Any, users: None
) -> None:
    e = make_env(db_url, tmp_path / "data", session_maker, WebOptions(max_body_bytes=64 * 1024))
    token = csrf_from(e.client.get("/login").text)
    response = e.client.post("/login", data={"username": "y" * 100_000, "password": "x", "csrf_token": token})
    assert_problem(response, 413)

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        yield f"csrf_token={token}&username=".encode()
        for _ in range(100):
            yield b"y" * 1000

    streamed = e.client.post(
        "/login", content=chunks(), headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert_problem(streamed, 413)
    e.app.state.engine.dispose()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(username=st.text(max_size=100), password=st.text(max_size=50))
def test_any_login_input_gets_a_clear_answer(env: Env, username: str, password: str) -> None:
    token = csrf_from(env.client.get("/login").text)
    response = env.client.post(
        "/login", data={"username": username, "password": password, "csrf_token": token}
    )
    assert response.status_code in {401, 422}, response.text
    assert_problem(response, response.status_code)
    assert session_rows(env.factory) == 0


# --- security headers, OpenAPI, secret -------------------------------------------------------


def test_security_headers_and_no_inline_script(env: Env) -> None:
    login(env.client, "yamada")
    home = env.client.get("/", headers=HTML)
    csp = home.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert home.headers["x-frame-options"] == "DENY"
    assert home.headers["cache-control"] == "no-store"
    assert home.headers["x-content-type-options"] == "nosniff"
    assert "<script" not in home.text and "http://" not in home.text and "https://" not in home.text
    css = env.client.get("/static/kiban.css")
    assert css.status_code == 200 and "no-store" not in css.headers.get("cache-control", "")


def test_openapi_is_served_and_docs_need_no_cdn(env: Env) -> None:
    spec = env.client.get("/openapi.json").json()
    assert {"/login", "/logout", "/healthz", "/readyz", "/metrics", "/api/session"} <= set(spec["paths"])
    assert env.client.get("/docs").status_code == 404
    unprocessable = spec["paths"]["/login"]["post"]["responses"]["422"]["content"]
    assert unprocessable == {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert spec["components"]["securitySchemes"]["csrf"]["name"] == "X-CSRF-Token"


def test_kiban_serve_migrates_a_fresh_data_directory_and_serves(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "KIBAN_DATABASE_URL"}  # the data folder's SQLite
    data = tmp_path / "data"
    code = "import typer; from kiban.cli.serve import serve; typer.run(serve)"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--data", str(data), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                ready = httpx.get(base + "/readyz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "kiban serve did not start"
                time.sleep(0.2)
        assert ready.status_code == 200 and set(ready.json()["schema"]) == set(schema_heads())
        assert httpx.get(base + "/healthz").json() == {"status": "ok"}
        assert httpx.get(base + "/openapi.json").json()["info"]["title"] == "Kiban"
        assert httpx.get(base + "/", follow_redirects=False).headers["location"] == "/login"
        assert (data / "kiban.sqlite").exists()
        assert stat.S_IMODE((data / "keys" / "web_secret").stat().st_mode) == 0o600
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_web_secret_is_created_private_and_reused(env: Env, tmp_path: Path) -> None:
    path = env.settings.keys_dir / "web_secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # A second app over the same data directory accepts the first one's cookie.
    login(env.client, "yamada")
    second = create_app(env.settings, capabilities=[])
    other = TestClient(second)
    other.cookies.update(dict(env.client.cookies))
    assert other.get("/api/session").json()["username"] == "yamada"
    second.state.engine.dispose()


def test_a_secret_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "web_secret"
    load_or_create_secret(path)
    path.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        load_or_create_secret(path)


# --- operations ------------------------------------------------------------------------------


def test_healthz_and_readyz(env: Env) -> None:
    assert env.client.get("/healthz").json() == {"status": "ok"}
    ready = env.client.get("/readyz")
    assert ready.status_code == 200 and set(ready.json()["schema"]) == set(schema_heads())


def test_readyz_is_503_when_the_database_is_unreachable(tmp_path: Path) -> None:
    broken = Settings(
        data_dir=tmp_path / "data", database_url_override="postgresql+psycopg://nobody@127.0.0.1:1/none"
    )
    app = create_app(broken, capabilities=[])
    client = TestClient(app, raise_server_exceptions=False)
    assert client.get("/healthz").status_code == 200  # liveness needs no database
    body = assert_problem(client.get("/readyz"), 503)
    assert body["type"] == "urn:kiban:problem:not-ready" and "nobody" not in client.get("/readyz").text
    page = client.get("/readyz", headers=HTML)
    assert page.status_code == 503 and "現在サービスを利用できません" in page.text


def test_readyz_is_503_when_the_schema_is_not_migrated(tmp_path: Path) -> None:
    empty = Settings(
        data_dir=tmp_path / "data", database_url_override=f"sqlite:///{tmp_path / 'empty.sqlite'}"
    )
    app = create_app(empty, capabilities=[])
    body = assert_problem(TestClient(app).get("/readyz"), 503)
    assert body["schema"] == [] and set(body["expected"]) == set(schema_heads())


def metric(text: str, name: str, labels: str) -> float:
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_metrics_count_requests_by_route_template(logged_in: Env) -> None:
    client = logged_in.client
    labels = 'method="GET",route="/test/municipality/{code}",status="200"'
    before = metric(client.get("/metrics").text, "kiban_http_requests_total", labels)
    for _ in range(3):
        client.get("/test/municipality/131016")
    client.get("/test/municipality/131041")
    text = client.get("/metrics").text
    assert metric(text, "kiban_http_requests_total", labels) == before + 3
    assert metric(text, "kiban_http_requests_total", labels.replace("200", "403")) == 1
    assert "/test/municipality/131016" not in text  # raw paths would explode the label space
    assert (
        metric(
            text,
            "kiban_http_request_duration_seconds_count",
            'method="GET",route="/test/municipality/{code}"',
        )
        == 4
    )
    assert metric(text, "kiban_logins_total", 'outcome="ok"') == 1


def test_each_app_has_its_own_registry(env: Env, tmp_path: Path, db_url: str) -> None:
    other = create_app(replace(env.settings, data_dir=tmp_path / "other"), capabilities=[])
    assert other.state.metrics_registry is not env.app.state.metrics_registry
    env.client.get("/healthz")
    assert 'route="/healthz"' in env.client.get("/metrics").text
    assert 'route="/healthz"' not in TestClient(other).get("/metrics").text
    other.state.engine.dispose()


def test_capabilities_are_discovered_from_their_api_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    import sys

    import kiban

    root = tmp_path / "plugins"
    (root / "zzrouter" / "templates").mkdir(parents=True)
    (root / "zzrouter" / "__init__.py").write_text("")
    (root / "zzrouter" / "api.py").write_text(
        "from fastapi import APIRouter, Request\n"
        "from kiban.web.app import render\n"
        "router = APIRouter()\n"
        "@router.get('/zz/page')\n"
        "def page(request: Request):\n"
        "    return render(request, 'zzrouter/page.html', {'word': '<転入>'})\n"
    )
    (root / "zzrouter" / "templates" / "page.html").write_text(
        '{% extends "base.html" %}{% block content %}<h1>転入届</h1><p>{{ word }}</p>{% endblock %}'
    )
    (root / "zzhook").mkdir()
    (root / "zzhook" / "__init__.py").write_text("")
    (root / "zzhook" / "api.py").write_text(
        "from kiban.web.app import NavItem, add_nav_item\n"
        "def register_web(app):\n"
        "    add_nav_item(app, NavItem('フック業務', '/zz/hook', roles=('national_operator',)))\n"
    )
    monkeypatch.setattr(kiban, "__path__", [*kiban.__path__, str(root)])
    for name in ("kiban.zzrouter", "kiban.zzrouter.api", "kiban.zzhook", "kiban.zzhook.api"):
        monkeypatch.delitem(sys.modules, name, raising=False)

    app = create_app(Settings(data_dir=tmp_path / "data", database_url_override=db_url))
    client = TestClient(app)
    page = client.get("/zz/page", headers=HTML)
    assert page.status_code == 200 and "<h1>転入届</h1>" in page.text and "&lt;転入&gt;" in page.text
    assert NavItem("フック業務", "/zz/hook", roles=("national_operator",)) in app.state.nav
    app.state.engine.dispose()


def test_domain_errors_keep_their_status(tmp_path) -> None:
    from fastapi.testclient import TestClient

    from kiban.core.config import Settings
    from kiban.web.app import create_app

    class Stale(ValueError):
        field, rule, message, status = "version", "stale_version", "someone else changed it", 409

    class Plain(ValueError):
        field, rule, message = "name", "too_long", "at most 10"

    class Odd(ValueError):
        field, rule, message, status = "x", "y", "z", 200

    def routes(app: FastAPI) -> None:
        @app.get("/t/stale")
        def stale() -> None:
            raise Stale()

        @app.get("/t/plain")
        def plain() -> None:
            raise Plain()

        @app.get("/t/odd")
        def odd() -> None:
            raise Odd()

    client = TestClient(create_app(Settings(data_dir=tmp_path), capabilities=[routes]))
    answer = client.get("/t/stale", headers={"accept": "application/json"})
    assert answer.status_code == 409
    assert answer.json()["errors"][0]["rule"] == "stale_version"
    assert client.get("/t/plain", headers={"accept": "application/json"}).status_code == 422
    # Only 403/404/409 are taken from the error; anything else stays a 422.
    assert client.get("/t/odd", headers={"accept": "application/json"}).status_code == 422


def test_served_paths_see_routes_inside_included_routers() -> None:
    from fastapi import APIRouter, FastAPI

    from kiban.web.app import _served_paths

    app, pages, inner = FastAPI(), APIRouter(prefix="/cards"), APIRouter()

    @pages.get("/suspend")
    def suspend() -> None: ...

    @inner.get("/network")
    def network() -> None: ...

    app.include_router(pages)
    app.include_router(inner, prefix="/ops")
    assert {"/cards/suspend", "/ops/network"} <= _served_paths(app)
    assert "/register" not in _served_paths(app)


def test_login_page_points_the_public_to_document_verification(env: Env) -> None:
    page = env.client.get("/login", headers=HTML)
    assert page.status_code == 200 and 'href="/verify"' in page.text
