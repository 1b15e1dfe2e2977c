"""The CA operator walks /jpki in Chromium: overview and alerts, a verifier registered (after a
refused form), a token shown once, a suspension; a verifier then sees 新旧紐付け."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from browser_support import CHROMIUM, CHROMIUM_ARGS, free_port, require_chromium, serving
from kiban.core import accounts
from kiban.core.accounts import create_user
from kiban.jpki.verifiers import service as vs
from test_jpki_verifiers import World
from test_jpki_verifiers import world as world  # noqa: F401 - the fixture

pytestmark = pytest.mark.browser

PASSWORD = "correct horse battery"
# The app with the verifier services only (plus login): independent of what else is wired.
SERVE = (
    "import sys, uvicorn; from pathlib import Path; from kiban.core.config import Settings; "
    "from kiban.web.app import WebOptions, create_app; from kiban.jpki.verifiers import api; "
    "s = Settings(data_dir=Path(sys.argv[1]), database_url_override=sys.argv[2]); s.ensure_dirs(); "
    "app = create_app(s, options=WebOptions(deliver_events=False), capabilities=[api.register_web]); "
    "uvicorn.run(app, host='127.0.0.1', port=int(sys.argv[3]), log_config=None)"
)


@contextmanager
def serve(db_url: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    # The data directory is the world's: its CA keys are in <data>/keys, where the app looks.
    command = [sys.executable, "-c", SERVE, str(tmp_path), db_url, str(port)]
    with serving(command, port, tmp_path / "serve.log") as base:
        yield base


@pytest.fixture
def server(world: World, session_maker: sessionmaker[Session], db_url: str, tmp_path: Path) -> Iterator[str]:  # noqa: F811
    require_chromium()
    original = accounts.SCRYPT_N
    accounts.SCRYPT_N = 2**4  # the stored hash keeps its parameters: the server verifies it as is
    try:
        with session_maker.begin() as s:
            world.pair(s)
            vs.create_verifier(
                s,
                code="bank-a",
                name="銀行A",
                category="certified_business",
                services=vs.SERVICES,
                actor="seed",
            )
            create_user(s, "operator", PASSWORD, "national_operator", display_name="運用 太郎")
            create_user(s, "bank-user", PASSWORD, "verifier", organisation="bank-a", display_name="銀行 花子")
    finally:
        accounts.SCRYPT_N = original
    with serve(db_url, tmp_path) as base:
        yield base


def login(page: Any, server: str, username: str) -> None:
    page.goto(server + "/login")
    page.get_by_label("ユーザー名").fill(username)
    page.get_by_label("パスワード").fill(PASSWORD)
    page.get_by_role("button", name="ログイン").click()
    page.wait_for_url(server + "/")


def test_operator_walks_the_ca_screen_and_the_registry(server: str, world: World, tmp_path: Path) -> None:  # noqa: F811
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(locale="ja-JP")
            problems: list[str] = []
            page.on(
                "console",
                lambda m: problems.append(m.text) if m.type == "error" and "422" not in m.text else None,
            )
            login(page, server, "operator")
            page.get_by_role("link", name="公的個人認証").first.click()
            assert page.locator("h1").inner_text() == "公的個人認証 — 認証局の運用状況"
            assert "jpki-sign" in page.get_by_test_id("cas").inner_text()
            alerts = page.get_by_test_id("alerts").inner_text()
            assert "CRL が発行されていません" in alerts and "鍵保管庫にありません" not in alerts
            assert "署名用" in page.get_by_test_id("issued-stats").inner_text()
            page.screenshot(path=str(tmp_path / "jpki-dashboard.png"), full_page=True)

            page.get_by_role("link", name="検証者の登録").first.click()
            page.locator("#code").fill("City X")  # not allowed: refused beside the field
            page.locator("#name").fill("X市")
            page.locator("#category").select_option("local_government")
            page.locator("#service-links").check()
            page.get_by_role("button", name="登録する").click()
            assert "形式が正しくありません" in page.locator("#code-error").inner_text()
            assert page.locator("#name").input_value() == "X市"  # kept
            page.locator("#code").fill("city-x")
            page.locator("#service-links").check()
            page.get_by_role("button", name="登録する").click()
            page.wait_for_url(server + "/jpki/verifiers/city-x")
            assert "地方公共団体" in page.get_by_test_id("verifier").inner_text()

            page.get_by_label("トークンの名前（任意）").fill("本番")
            page.get_by_role("button", name="トークンを発行する").click()
            token = page.get_by_test_id("token").inner_text()
            assert token.startswith("kbv_")
            me = httpx.get(server + "/api/jpki/verifier", headers={"Authorization": f"Bearer {token}"})
            assert me.json()["code"] == "city-x"
            page.get_by_role("link", name="検証者の画面へ戻る").click()
            assert token not in page.content() and token[:10] in page.get_by_test_id("tokens").inner_text()

            page.get_by_label("停止の理由").fill("点検のため")
            page.get_by_role("button", name="利用を停止する").click()
            assert page.get_by_test_id("verifier-status").inner_text() == "利用停止（点検のため）"
            refused = httpx.get(server + "/api/jpki/verifier", headers={"Authorization": f"Bearer {token}"})
            assert refused.status_code == 401
            page.screenshot(path=str(tmp_path / "jpki-verifier.png"), full_page=True)
            page.get_by_role("button", name="ログアウト").click()

            # A verifier's staff follow a certificate with 新旧紐付け.
            login(page, server, "bank-user")
            page.get_by_role("link", name="新旧紐付け").first.click()
            with world.factory() as s:
                serial = vs.issuance_records(s, actor="test", kind="signature").records[0].serial
            page.get_by_label("シリアル番号（16進）").fill(serial)
            page.get_by_role("button", name="たどる").click()
            assert page.get_by_test_id("current").inner_text().endswith(serial)
            assert problems == []
        finally:
            browser.close()
