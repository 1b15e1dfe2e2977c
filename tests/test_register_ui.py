"""Clerks at two municipalities use the register pages in Chromium: a birth, a move, a death, a print."""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from browser_support import CHROMIUM, CHROMIUM_ARGS, kiban_serve, require_chromium
from kiban.core.accounts import create_user
from kiban.core.identifiers import ResidentCodeGenerator
from kiban.numbering import service as numbering
from kiban.register.loader import load_population
from kiban.register.models import Resident
from kiban.register.population import generate_population
from kiban.register.service import today_jst

pytestmark = pytest.mark.browser

A, B = "131016", "131041"  # 千代田区, 新宿区
PASSWORD = "correct horse battery"


@pytest.fixture
def people(engine: Engine, session_maker: sessionmaker[Session]) -> dict[str, Any]:
    """30 residents in 千代田区 and 新宿区, two clerks; returns a parent and a person living alone."""
    households = list(generate_population([A, B], 30, seed=8, as_of=date(2025, 4, 1)))
    with session_maker.begin() as s:
        codes = numbering.issue_resident_codes(s, 30, ResidentCodeGenerator(random.Random(8)))
    load_population(engine, households, iter(codes))
    with session_maker.begin() as s:
        create_user(s, "chiyoda", PASSWORD, "clerk", municipality_code=A, display_name="千代田 職員")
        create_user(s, "shinjuku", PASSWORD, "clerk", municipality_code=B, display_name="新宿 職員")
        rows = s.scalars(
            select(Resident).where(Resident.municipality_code == A).order_by(Resident.resident_code)
        ).all()
        by_household: dict[Any, list[Resident]] = {}
        for r in rows:
            by_household.setdefault(r.household_id, []).append(r)
        heads = [r for r in rows if r.relationship == "世帯主"]
        parent = next(h for h in heads if (today_jst() - h.birth_date).days > 20 * 366)
        alone = next(h for h in heads if len(by_household[h.household_id]) == 1 and h is not parent)
        return {
            "parent": (parent.resident_code, parent.family_name_kana, parent.family_name),
            "alone": (alone.resident_code, alone.family_name, alone.given_name),
        }


@pytest.fixture
def server(db_url: str, tmp_path: Path, people: dict[str, Any]) -> Iterator[str]:
    require_chromium()
    with kiban_serve(db_url, tmp_path) as base:
        yield base


def login(page: Any, server: str, username: str) -> None:
    page.goto(server + "/login")
    page.get_by_label("ユーザー名").fill(username)
    page.get_by_label("パスワード").fill(PASSWORD)
    page.get_by_role("button", name="ログイン").click()
    page.wait_for_url(server + "/")


def logout(page: Any) -> None:
    page.get_by_role("button", name="ログアウト").click()
    page.wait_for_url("**/login?logged_out=1")


def test_clerks_record_a_birth_a_move_a_death_and_print_a_copy(
    server: str, people: dict[str, Any], tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    today = today_jst()
    yesterday = (today - timedelta(days=1)).isoformat()
    parent_code, parent_kana, parent_name = people["parent"]
    mover_code, mover_family, mover_given = people["alone"]
    shots: list[str] = []

    def shot(page: Any, name: str) -> None:
        page.screenshot(path=str(tmp_path / name), full_page=True)
        shots.append(name)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(locale="ja-JP")
            problems: list[str] = []
            # CSP violations and missing resources show as console errors; the deliberate 422 is
            # expected, and so is the favicon Chromium's PDF viewer asks for (it has no <link rel=icon>).
            page.on(
                "console",
                lambda m: (
                    problems.append(f"{m.text} {m.location}")
                    if m.type == "error" and "422" not in m.text and "favicon.ico" not in str(m.location)
                    else None
                ),
            )

            # 千代田区: search the parent by kana, open the record, record a birth in their household.
            login(page, server, "chiyoda")
            page.get_by_role("link", name="住民検索").click()
            page.get_by_label("氏名（漢字・カナ）").fill(parent_kana)
            page.get_by_role("button", name="検索").click()
            page.get_by_test_id("search-results").get_by_role("link").first.wait_for()
            page.locator(f'a[href="/register/residents/{parent_code}"]').click()
            assert page.locator("h1").inner_text() == "住民票"
            page.get_by_role("link", name="この世帯に出生").click()
            assert page.locator("#household_of").input_value() == parent_code
            page.locator("#person-family_name").fill(parent_name)
            page.locator("#person-given_name").fill("はな")  # not katakana: refused beside the field
            page.locator("#person-family_name_kana").fill(parent_kana)
            page.locator("#person-given_name_kana").fill("はな子")
            page.locator("#person-sex").select_option("2")
            page.locator("#notified_on").fill(today.isoformat())
            page.locator("#effective_on").fill(yesterday)
            page.get_by_role("button", name="出生を記録する").click()
            error = page.locator("#person-given_name_kana-error").inner_text()
            assert error == "カタカナ（またはひらがな）で入力してください。"
            assert page.locator("#person-family_name").input_value() == parent_name  # values kept
            shot(page, "register-birth-error.png")
            page.locator("#person-given_name_kana").fill("ハナ")
            page.get_by_role("button", name="出生を記録する").click()
            assert page.get_by_role("status").inner_text() == "出生を記録しました。"
            assert page.get_by_test_id("history").inner_text().count("出生") == 1
            shot(page, "register-birth-done.png")

            # 千代田区: the person living alone moves out to 新宿区.
            page.goto(f"{server}/register/residents/{mover_code}")
            page.get_by_role("link", name="転出", exact=True).click()
            page.locator("#destination_municipality_code").fill(B)
            page.locator("#destination_address").fill("東京都新宿区西新宿二丁目8番1号")
            page.locator("#notified_on").fill(today.isoformat())
            page.locator("#effective_on").fill(today.isoformat())
            page.get_by_role("button", name="転出を記録する").click()
            assert page.get_by_role("status").inner_text() == "転出を記録しました。"
            assert "除票" in page.locator(".person-header").inner_text()
            logout(page)

            # 新宿区: the 転出証明書情報 has arrived; the clerk records the 転入 from it.
            login(page, server, "shinjuku")
            deadline = time.monotonic() + 15
            while True:
                page.goto(server + "/register/events/move-in")
                if page.locator(f"#persons-{mover_code}").count() or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            page.locator(f"#persons-{mover_code}").check()
            page.locator("#address-town").fill("西新宿二丁目")
            page.locator("#address-banchi").fill("8番1号")
            page.locator("#household-head_code").fill(mover_code)
            page.locator("#notified_on").fill(today.isoformat())
            page.locator("#effective_on").fill(today.isoformat())
            page.get_by_role("button", name="転入を記録する").click()
            assert page.get_by_role("status").inner_text() == "転入を記録しました。"
            record = page.get_by_test_id("record").inner_text()
            assert "東京都新宿区西新宿二丁目8番1号" in record and mover_family in record
            shot(page, "register-move-in.png")

            # 新宿区: print a 住民票の写し of the newcomer (the PDF comes back).
            page.get_by_role("link", name="住民票の写し等の発行").click()
            assert page.locator("#resident_code").input_value() == mover_code
            with page.expect_response(
                lambda r: r.url.endswith("/register/certificates") and r.request.method == "POST"
            ) as answer:
                page.get_by_role("button", name="発行する").click()
            response = answer.value
            assert response.status == 200
            assert response.headers["content-type"] == "application/pdf"
            # Chromium shows the PDF in its viewer (the body is the viewer's); the headers are ours.
            assert len(response.headers["x-document-serial"]) > 8
            assert response.headers["content-disposition"].startswith("inline;")
            shot(page, "register-print.png")

            # 新宿区: the newcomer dies; the record is closed.
            page.goto(f"{server}/register/residents/{mover_code}")
            page.get_by_role("link", name="死亡").click()
            page.locator("#notified_on").fill(today.isoformat())
            page.locator("#effective_on").fill(today.isoformat())
            page.get_by_role("button", name="死亡を記録する").click()
            assert page.get_by_role("status").inner_text() == "死亡を記録しました。"
            assert "死亡" in page.get_by_test_id("record").inner_text()
            shot(page, "register-death.png")
            assert problems == []
        except Exception:
            shot(page, "register-failure.png")  # what the clerk saw when the walk-through failed
            raise
        finally:
            browser.close()
            if os.environ.get("KIBAN_SCREENSHOT_DIR"):
                for name in shots:
                    shutil.copy(tmp_path / name, Path(os.environ["KIBAN_SCREENSHOT_DIR"]) / name)
