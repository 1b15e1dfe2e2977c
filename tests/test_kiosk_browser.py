"""Browser walk (Chromium) of the kiosk touchscreen with the software card plugged in through a test
hook: a wrong PIN, the menu, a 住民票の写し printed, the card reminder, and the timeout wipe."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from browser_support import CHROMIUM, CHROMIUM_ARGS, kiban_serve, require_chromium  # noqa: I001
from kiban.cards.softcard import CardError
from kiban.kiosk.models import KioskIssuance, KioskSession
from kiban.kiosk.service import MESSAGES
from kiosk_support import A, World, build_world

pytestmark = pytest.mark.browser

HOOK = """
window.kioskId = %(kiosk_id)r; window.kioskCredential = %(credential)r; window.kioskVersion = "2";
window.kioskTimeoutMs = 4000;
window.kibanCard = {
  certificate: () => window.kibanCardCertificate(),
  sign: async (pin, challenge) => {
    const r = await window.kibanCardSign(pin, challenge);
    if (r.error) throw new Error(r.error);
    return r.signature;
  },
};
"""


@pytest.fixture
def world(engine: Engine, session_maker: sessionmaker[Session], tmp_path: Path) -> World:
    # the CA's and the municipalities' keys where `kiban serve --data tmp_path/data` finds them
    return build_world(
        engine, session_maker, tmp_path, people=20, holders=2, keys_dir=tmp_path / "data" / "keys"
    )


@pytest.fixture
def server(db_url: str, tmp_path: Path, world: World) -> Iterator[str]:
    require_chromium()
    with kiban_serve(db_url, tmp_path) as base:
        yield base


def test_kiosk_screen_with_the_software_card(server: str, world: World, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    code = next(c for c, m in world.municipality.items() if m == A)
    soft = world.cards[code]

    def sign(pin: str, challenge: str) -> dict[str, str]:
        try:
            return {
                "signature": base64.b64encode(soft.sign_challenge(pin, base64.b64decode(challenge))).decode()
            }
        except CardError as exc:
            return {"error": MESSAGES.get(exc.rule, str(exc))}

    def certificate() -> str:
        return base64.b64encode(soft.certificate("user_auth") or b"").decode()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(locale="ja-JP")
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.expose_function("kibanCardSign", sign)
            page.expose_function("kibanCardCertificate", certificate)
            page.add_init_script(
                HOOK % {"kiosk_id": world.kiosk.kiosk_id, "credential": world.kiosk.credential}
            )
            page.goto(server + "/kiosk/screen")
            page.get_by_role("button", name="はじめる").click()
            page.locator("#pin").fill("9999")
            page.get_by_role("button", name="確定").click()
            expect(page.get_by_role("alert")).to_have_text("暗証番号が違います。")
            page.locator("#pin").fill("1234")
            page.get_by_role("button", name="確定").click()
            page.get_by_role("button", name="住民票の写し（200円）").click()
            expect(page.locator("#done-text")).to_contain_text("印刷しました", timeout=20_000)
            expect(page.locator("#step-done strong")).to_have_text("カードの取り忘れにご注意ください。")
            expect(page.locator("#step-done strong")).to_be_visible()
            page.screenshot(path=str(tmp_path / "kiosk-printed.png"), full_page=True)
            printed: Any = page.evaluate("window.kioskPrinted")
            page.get_by_role("button", name="終了する").click()
            expect(page.get_by_role("button", name="はじめる")).to_be_visible()
            # a session left alone is wiped by the timeout
            page.get_by_role("button", name="はじめる").click()
            page.wait_for_timeout(5000)
            expect(page.get_by_role("alert")).to_contain_text("一定時間操作がなかった")
            expect(page.get_by_role("button", name="はじめる")).to_be_visible()
            assert [p for p in problems if "404" not in p and "409" not in p] == []
        finally:
            browser.close()
    time.sleep(0.2)
    with world.session_maker() as s:
        issued = list(s.scalars(select(KioskIssuance)))
        assert [(i.serial, i.holder_resident_code) for i in issued] == [(printed[0], code)]
        states = sorted(r.state for r in s.scalars(select(KioskSession)))
        assert states == ["closed", "closed"]
