"""The identity network's pages: agency query and bulk, counter disclosure, the operator's screens.

Over TestClient on both engines; one browser test (marker ``browser``) walks an agency's query and
the operator's screens in Chromium against ``kiban serve``.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

import network_web_support as support
from browser_support import CHROMIUM, CHROMIUM_ARGS, kiban_serve, require_chromium
from network_web_support import HTML, JST, PASSWORD, World, this_month

world, nenkin, chiyoda, operator, cheap_scrypt = (
    support.world,
    support.nenkin,
    support.chiyoda,
    support.operator,
    support.cheap_scrypt,
)
PENSION = "pension_status_check"


def form_token(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found
    return found.group(1)


def post_form(client: TestClient, path: str, data: dict[str, Any], **kw: Any) -> Any:
    # The client also sends its session's token as the header; the pages carry it as a form field.
    return client.post(path, data=data, headers=HTML, **kw)


def test_navigation_by_role(
    world: World, nenkin: TestClient, chiyoda: TestClient, operator: TestClient
) -> None:
    home = nenkin.get("/", headers=HTML).text
    assert 'href="/provision"' in home and 'href="/provision/bulk"' in home and 'href="/network"' not in home
    assert 'href="/network"' in operator.get("/", headers=HTML).text
    assert 'href="/disclosure"' in chiyoda.get("/", headers=HTML).text
    # Wrong role: a Japanese 403 page, not the data.
    refused = chiyoda.get("/provision", headers=HTML)
    assert (
        refused.status_code == 403
        and "権限" in refused.text
        and "<form" not in refused.text.split("<main")[1]
    )
    assert nenkin.get("/network", headers=HTML).status_code == 403
    assert operator.get("/disclosure", headers=HTML).status_code == 403
    anonymous = TestClient(world.app, raise_server_exceptions=False)
    to_login = anonymous.get("/network", headers=HTML, follow_redirects=False)
    assert to_login.status_code == 303 and to_login.headers["location"].startswith("/login")


def test_agency_query_page(world: World, nenkin: TestClient) -> None:
    page = nenkin.get("/provision", headers=HTML)
    assert page.status_code == 200 and "日本年金機構" in page.text and "年金給付の現況確認" in page.text
    assert "国税の賦課" not in page.text  # only the agency's own uses are offered
    code = world.codes[4]
    row = world.person(code)
    answer = post_form(
        nenkin, "/provision", {"use_code": PENSION, "kind": "resident_code", "resident_code": code}
    )
    assert answer.status_code == 200
    assert row.family_name in answer.text and row.address in answer.text and "提供" in answer.text
    assert row.individual_number and row.individual_number in answer.text  # this use may have it
    # By 基本4情報 in hiragana.
    hira = "".join(
        chr(ord(c) - 0x60) if "ァ" <= c <= "ヶ" else c for c in row.family_name_kana + row.given_name_kana
    )
    basic = post_form(
        nenkin,
        "/provision",
        {
            "use_code": PENSION,
            "kind": "basic4",
            "name_kana": hira,
            "birth_date": row.birth_date.isoformat(),
            "sex": str(row.sex),
            "address_prefix": row.address[:3],
        },
    )
    assert basic.status_code == 200 and code in basic.text
    # A use not the agency's (a hand-made POST): refused, logged, nothing shown.
    refused = post_form(
        nenkin, "/provision", {"use_code": "national_tax", "kind": "resident_code", "resident_code": code}
    )
    assert refused.status_code == 403 and "拒否" in refused.text and row.address not in refused.text
    # A bad check digit: the error beside the form, the typed value kept, nothing logged.
    before = world.counts()
    bad = code[:-1] + str((int(code[-1]) + 1) % 10)
    wrong = post_form(
        nenkin, "/provision", {"use_code": PENSION, "kind": "resident_code", "resident_code": bad}
    )
    assert (
        wrong.status_code == 422 and "検査数字が一致しません" in wrong.text and f'value="{bad}"' in wrong.text
    )
    assert world.counts() == before
    assert [p.outcome for p in world.provisions()] == ["provided", "provided", "refused"]


def test_agency_bulk_pages(world: World, nenkin: TestClient) -> None:
    content = ("resident_code\r\n" + "\r\n".join(world.codes[:5]) + "\r\n12345678906\r\n").encode()
    page = nenkin.get("/provision/bulk", headers=HTML)
    assert page.status_code == 200 and "一括照会はまだありません" in page.text
    token = form_token(page.text)
    sent = nenkin.post(
        "/provision/bulk",
        data={"use_code": PENSION, "csrf_token": token},
        files={"file": ("queries.csv", content, "text/csv")},
        headers=HTML,
        follow_redirects=False,
    )
    assert sent.status_code == 303, sent.text
    job_page = nenkin.get(sent.headers["location"], headers=HTML)
    assert job_page.status_code == 200 and f"{len(content)} / {len(content)}" in job_page.text
    assert "回答を受け取る" in job_page.text
    action = re.search(r'action="(/api/provision/bulk/[^"]+/answers)"', job_page.text)
    assert action
    # As a browser without JavaScript sends it: the token in the form, no header.
    header = nenkin.headers.pop("X-CSRF-Token")
    forged = nenkin.post(action.group(1), data={"csrf_token": "forged"})
    assert forged.status_code == 403
    answers = nenkin.post(action.group(1), data={"csrf_token": form_token(job_page.text)})
    nenkin.headers["X-CSRF-Token"] = header
    assert answers.status_code == 200 and "attachment" in answers.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(answers.text)))
    assert [r["outcome"] for r in rows] == ["provided"] * 5 + ["invalid"]
    assert rows[5]["rule"] == "check_digit"
    listing = nenkin.get("/provision/bulk", headers=HTML).text
    assert "完了" in listing
    # Another agency cannot open the job page.
    other = world.client("passport")
    assert other.get(sent.headers["location"], headers=HTML).status_code == 404
    # A bad header is refused before any job exists.
    before = world.counts()
    bad = nenkin.post(
        "/provision/bulk",
        data={"use_code": PENSION, "csrf_token": token},
        files={"file": ("q.csv", b"honseki\r\nx\r\n", "text/csv")},
    )
    assert bad.status_code == 422 and bad.json()["errors"][0]["rule"] == "columns"
    assert world.counts() == before


def test_counter_disclosure_page_and_pdf(world: World, nenkin: TestClient, chiyoda: TestClient) -> None:
    code = world.in_municipality("131016")[1]
    row = world.person(code)
    nenkin.post("/api/provision", json={"use_code": PENSION, "query": {"resident_code": code}})
    year = str(datetime.now(JST).year)
    page = chiyoda.get("/disclosure", headers=HTML)
    assert page.status_code == 200 and "提供状況の開示" in page.text
    shown = post_form(
        chiyoda,
        "/disclosure",
        {"resident_code": code, "year": year, "requester": "self", "identity_document": "マイナンバーカード"},
    )
    assert shown.status_code == 200
    assert row.family_name in shown.text and "日本年金機構" in shown.text and "1件" in shown.text
    assert "令和" in shown.text
    missing = post_form(
        chiyoda,
        "/disclosure",
        {"resident_code": code, "year": year, "requester": "proxy", "identity_document": "運転免許証"},
    )
    assert missing.status_code == 422 and "必須項目です" in missing.text and "proxy_name" in missing.text
    other = world.in_municipality("212016")[0]
    elsewhere = post_form(
        chiyoda,
        "/disclosure",
        {
            "resident_code": other,
            "year": year,
            "requester": "self",
            "identity_document": "マイナンバーカード",
        },
    )
    assert elsewhere.status_code == 403 and world.person(other).family_name not in elsewhere.text
    pdf = post_form(
        chiyoda,
        "/disclosure/pdf",
        {"resident_code": code, "year": year, "requester": "self", "identity_document": "マイナンバーカード"},
    )
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")


def test_operator_screens(world: World, nenkin: TestClient, operator: TestClient) -> None:
    code = world.in_municipality("131016")[2]
    world.change(code, address_text=world.person(code).address + "三階")
    world.change(code, municipality_code="212016", address_text="岐阜県岐阜市今沢町1番地")  # quarantined
    nenkin.post("/api/provision", json={"use_code": PENSION, "query": {"resident_code": code}})
    nenkin.post("/api/provision", json={"use_code": "national_tax", "query": {"resident_code": code}})
    status = operator.get("/network", headers=HTML)
    assert status.status_code == 200
    assert "東京都（13）" in status.text and "東京都千代田区（131016）" in status.text
    assert "岐阜県（21）" in status.text and "隔離中のメッセージ" in status.text
    queue = operator.get("/network/quarantine", headers=HTML)
    assert "second_active_registration" in queue.text and "岐阜県岐阜市今沢町" not in queue.text
    release = re.search(r'action="(/network/quarantine/\d+/release)"', queue.text)
    assert release
    still = post_form(operator, release.group(1), {})
    assert still.status_code == 422 and "再適用できませんでした" in still.text
    agencies = operator.get("/network/agencies", headers=HTML)
    assert (
        "日本年金機構" in agencies.text
        and "住所を除いて提供" in agencies.text
        and "個人番号" in agencies.text
    )
    reload = post_form(operator, "/network/agencies/reload", {}, follow_redirects=False)
    assert reload.status_code == 303
    stats = operator.get("/network/statistics", params={"since": this_month()}, headers=HTML)
    assert stats.status_code == 200 and "日本年金機構" in stats.text
    assert "提供 1件" in stats.text and "拒否 1件" in stats.text
    assert operator.get("/network/statistics", params={"since": "bad"}, headers=HTML).status_code == 422


# --- the browser ---------------------------------------------------------------------------------


@pytest.mark.browser
def test_browser_agency_query_and_operator_screens(
    db_url: str, tmp_path: Path, session_maker: sessionmaker[Session], world: World
) -> None:
    from playwright.sync_api import sync_playwright

    require_chromium()
    code = world.codes[6]
    row = world.person(code)
    with kiban_serve(db_url, tmp_path) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(locale="ja-JP")
            problems: list[str] = []
            page.on(
                "console",
                lambda m: problems.append(m.text) if m.type == "error" and "40" not in m.text else None,
            )

            def login(username: str) -> None:
                page.goto(server + "/login")
                page.get_by_label("ユーザー名").fill(username)
                page.get_by_label("パスワード").fill(PASSWORD)
                page.get_by_role("button", name="ログイン").click()
                page.wait_for_url(server + "/")

            login("nenkin")
            page.get_by_role("link", name="照会", exact=True).first.click()
            page.wait_for_url(server + "/provision")
            page.locator("#use_code").select_option(PENSION)
            page.locator("#kind-resident_code").check()
            page.locator("#resident_code").fill(code)
            page.get_by_role("button", name="照会").click()
            page.get_by_test_id("answer").wait_for()
            assert row.family_name in page.get_by_test_id("answer").inner_text()
            assert page.get_by_test_id("outcome").inner_text().startswith("結果: 提供")
            page.get_by_role("button", name="ログアウト").click()
            page.wait_for_url("**/login?logged_out=1")

            login("operator")
            page.get_by_role("link", name="全国サーバ").first.click()
            page.wait_for_url(server + "/network")
            page.get_by_role("link", name="提供統計").click()
            page.get_by_test_id("statistics").wait_for()
            assert "日本年金機構" in page.get_by_test_id("statistics").inner_text()
            page.get_by_role("link", name="提供先機関").click()
            page.get_by_test_id("agencies").wait_for()
            page.get_by_role("link", name="隔離キュー").click()
            assert "隔離中のメッセージはありません" in page.content()
            assert problems == []
        finally:
            browser.close()
