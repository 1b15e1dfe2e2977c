"""Browser walk (Chromium): a clerk hands a card over at the counter; the call centre suspends it."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from browser_support import CHROMIUM, CHROMIUM_ARGS, kiban_serve, require_chromium  # noqa: I001
from kiban.cards import service, states, storage
from kiban.cards.softcard import SoftCard
from kiban.core.accounts import create_user
from kiban.core.config import Settings
from kiban.core.identifiers import ResidentCodeGenerator
from kiban.jpki import service as jpki
from kiban.jpki.keys import FileKeyStore
from kiban.numbering import service as numbering
from kiban.register.loader import load_population
from kiban.register.population import generate_population
from test_cards_api import PASSWORD, A, prepare_card

pytestmark = pytest.mark.browser


@pytest.fixture
def prepared(
    engine: Engine, session_maker: sessionmaker[Session], db_url: str, tmp_path: Path
) -> tuple[str, dict[str, Any]]:
    households = list(generate_population([A], 20, seed=5, as_of=date(2025, 4, 1)))
    with session_maker.begin() as s:
        codes = numbering.issue_resident_codes(s, 20, ResidentCodeGenerator(random.Random(5)))
    load_population(engine, households, iter(codes))
    settings = Settings(data_dir=tmp_path / "data", database_url_override=db_url)  # what kiban serve uses
    settings.ensure_dirs()
    with session_maker.begin() as s:
        jpki.init_hierarchies(s, FileKeyStore(settings.keys_dir), "http://127.0.0.1:8000", algorithm="p256")
        create_user(s, "chiyoda", PASSWORD, "clerk", municipality_code=A, display_name="千代田 職員")
        create_user(s, "agent", PASSWORD, "call_centre", display_name="受付 一郎")
    return prepare_card(session_maker, settings)


@pytest.fixture
def server(db_url: str, tmp_path: Path, prepared: tuple[str, dict[str, Any]]) -> Iterator[str]:
    require_chromium()
    with kiban_serve(db_url, tmp_path) as base:
        yield base


def login(page: Any, server: str, username: str) -> None:
    page.goto(server + "/login")
    page.get_by_label("ユーザー名").fill(username)
    page.get_by_label("パスワード").fill(PASSWORD)
    page.get_by_role("button", name="ログイン").click()
    page.wait_for_url(server + "/")


def test_hand_over_then_suspension_by_phone(
    server: str, prepared: tuple[str, dict[str, Any]], session_maker: sessionmaker[Session], tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    card_id, person = prepared
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(locale="ja-JP")
            problems: list[str] = []
            page.on(
                "console",
                lambda m: problems.append(m.text) if m.type == "error" and "422" not in m.text else None,
            )
            # the counter: the card waiting for its holder
            login(page, server, "chiyoda")
            page.get_by_role("link", name="カード交付").click()
            page.get_by_test_id("waiting-cards").get_by_role("link", name=card_id).click()
            assert page.get_by_test_id("card-state").inner_text() == "交付通知済み"
            # PINs typed on the pad, but no identity document ticked: refused, nothing done
            page.locator("#pin_user_auth").fill("1234")
            page.locator("#pin_signature").fill("ABC123")
            page.locator("#pin_juki").fill("5678")
            page.locator("#pin_face").fill("9012")
            page.locator("#holder_passphrase").fill("holder pass 1")
            page.get_by_role("button", name="交付する").click()
            assert "本人確認書類" in page.get_by_role("alert").inner_text()
            assert page.get_by_test_id("card-state").inner_text() == "交付通知済み"
            page.screenshot(path=str(tmp_path / "cards-handover-refused.png"), full_page=True)
            # again, with the driving licence seen
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
            assert page.get_by_role("status").inner_text() == "カードを交付しました。"
            assert page.get_by_test_id("card-state").inner_text() == "交付済み"
            assert "交付済み" in page.get_by_test_id("history").inner_text()
            page.screenshot(path=str(tmp_path / "cards-handover-done.png"), full_page=True)
            page.get_by_role("button", name="ログアウト").click()

            # the call centre: a call rings, the agent answers, identifies the caller and suspends
            login(page, server, "agent")
            page.get_by_role("link", name="コールセンター").click()
            page.get_by_role("button", name="着信（模擬）").click()
            page.get_by_test_id("call-queue").get_by_role("button", name="応答する").first.click()
            assert page.get_by_role("status").inner_text() == "応答しました。"
            page.locator("#card_id").fill(card_id)
            page.locator("#birth_date").fill(person["birth"].isoformat())
            page.locator("#name_kana").fill(person["kana"])
            page.locator("#town").fill(person["town"])
            page.get_by_role("button", name="確認する").click()
            assert page.get_by_role("status").inner_text() == "本人確認ができました。"
            page.locator("#suspend-card_id").fill(card_id)
            page.get_by_role("button", name="一時停止する").click()
            assert "一時停止しました" in page.get_by_role("status").inner_text()
            assert "100.0%" in page.get_by_test_id("answer-rate").inner_text()
            page.screenshot(path=str(tmp_path / "cards-call-suspended.png"), full_page=True)
            assert problems == []
        finally:
            browser.close()
    with session_maker() as s:
        assert service.get_card(s, card_id).state == states.SUSPENDED
    card = SoftCard.open(storage.issued_path(tmp_path / "data", card_id), "holder pass 1")
    assert card.certificate("user_auth") is not None
