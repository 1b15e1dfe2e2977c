"""A real browser (Debian's Chromium through Playwright) logs in to `kiban serve`."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from browser_support import CHROMIUM, CHROMIUM_ARGS, kiban_serve, require_chromium
from kiban.core.accounts import create_user
from kiban.core.database import transaction

pytestmark = pytest.mark.browser

PASSWORD = "correct horse battery"


@pytest.fixture
def server(db_url: str, tmp_path: Path, session_maker: sessionmaker[Session]) -> Iterator[str]:
    """`kiban serve` on a free loopback port over a migrated database with one clerk."""
    require_chromium()
    with transaction(session_maker) as db:
        create_user(db, "yamada", PASSWORD, "clerk", municipality_code="131016", display_name="山田 花子")
    with kiban_serve(db_url, tmp_path) as base:
        yield base


def test_clerk_logs_in_through_the_form_and_sees_the_home_page(server: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(locale="ja-JP")
            problems: list[str] = []
            # CSP violations and missing resources show up as console errors; the failed login's
            # own 401 is expected.
            page.on(
                "console",
                lambda m: problems.append(m.text) if m.type == "error" and "401" not in m.text else None,
            )

            page.goto(server + "/")
            assert page.url.endswith("/login")
            assert page.locator("h1").inner_text() == "ログイン"

            # A wrong password shows the Japanese error and stays on the login page.
            page.get_by_label("ユーザー名").fill("yamada")
            page.get_by_label("パスワード").fill("wrong password!")
            page.get_by_role("button", name="ログイン").click()
            alert = page.get_by_role("alert").inner_text().strip()
            assert alert == "ユーザー名またはパスワードが正しくありません。"
            page.screenshot(path=str(tmp_path / "login-error.png"), full_page=True)

            page.get_by_label("パスワード").fill(PASSWORD)
            page.get_by_role("button", name="ログイン").click()
            page.wait_for_url(server + "/")
            assert page.locator("h1").inner_text() == "ホーム"
            assert page.get_by_test_id("user-role").inner_text() == "市区町村職員"
            assert "131016" in page.get_by_test_id("user-municipality").inner_text()
            # The stylesheet loaded under the CSP (no console errors, header coloured).
            colour = page.locator(".site-header").evaluate("e => getComputedStyle(e).backgroundColor")
            assert colour == "rgb(29, 63, 115)"
            page.screenshot(path=str(tmp_path / "home.png"), full_page=True)
            if os.environ.get("KIBAN_SCREENSHOT_DIR"):
                for name in ("login-error.png", "home.png"):
                    shutil.copy(tmp_path / name, Path(os.environ["KIBAN_SCREENSHOT_DIR"]) / name)

            page.get_by_role("button", name="ログアウト").click()
            page.wait_for_url("**/login?logged_out=1")
            assert "ログアウトしました。" in page.get_by_role("status").inner_text()
            assert problems == []
        finally:
            browser.close()
