"""Browser walk (Chromium): after a hand-over, the counter applies for a card renewal in the last
3 months, and a 在留期間 extension for a holder without a period of stay is refused on the page."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from browser_support import CHROMIUM, CHROMIUM_ARGS  # noqa: I001
from kiban.cards import service, states
from kiban.cards.models import Card
from test_cards_browser import login, prepared, server  # noqa: F401 - fixtures

pytestmark = pytest.mark.browser


def test_renewal_at_the_counter(
    server: str,  # noqa: F811 - the fixture
    prepared: tuple[str, dict[str, Any]],  # noqa: F811 - the fixture
    session_maker: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    from playwright.sync_api import sync_playwright

    card_id, _person = prepared
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(locale="ja-JP")
            login(page, server, "chiyoda")
            page.goto(f"{server}/cards/{card_id}")
            page.get_by_label("運転免許証（A）").check()
            for field, value in (
                ("#pin_user_auth", "1234"),
                ("#pin_signature", "ABC123"),
                ("#pin_juki", "5678"),
                ("#pin_face", "9012"),
                ("#holder_passphrase", "holder pass 1"),
            ):
                page.locator(field).fill(value)
            page.get_by_role("button", name="交付する").click()
            assert page.get_by_test_id("card-state").inner_text() == "交付済み"
            # years before expiry: the renewal is refused on the page
            page.get_by_test_id("renew").click()
            assert "3か月前" in page.get_by_role("alert").inner_text()
            # 在留期間: this holder has none
            page.locator("#stay-doc-passport").check()
            page.get_by_role("button", name="有効期限を延長する").click()
            assert "在留期間のない方" in page.get_by_role("alert").inner_text()
            # the card in its last 3 months (test shortcut on the row): renewal accepted
            with session_maker.begin() as s:
                s.get_one(Card, card_id).expires_on = service.today_jst() + timedelta(days=40)
            page.goto(f"{server}/cards/{card_id}")
            page.get_by_test_id("renew").click()
            assert "カードの更新申請を受け付けました" in page.get_by_role("status").inner_text()
            assert page.get_by_test_id("card-state").inner_text() == "申請受付"
            page.screenshot(path=str(tmp_path / "cards-renewal-applied.png"), full_page=True)
            new_id = page.url.rsplit("/", 1)[1].split("?")[0]
        finally:
            browser.close()
    with session_maker() as s:
        assert service.get_card(s, new_id).renewal_of == card_id
        assert service.get_card(s, card_id).state == states.ACTIVE
