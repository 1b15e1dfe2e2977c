"""The identity network's API (SPEC K2): provision single and bulk, disclosure, operator endpoints.

Bad input of every kind the issue names — wrong use codes, malformed bulk files (bad encoding,
bad check digits, duplicated rows, 10 GB claims), unknown agencies, replays — gets a clear error
(per row in bulk answers), leaks nothing and changes nothing. Roles: an agency sees only its own
jobs, a clerk cannot query, an agency cannot disclose or operate.
"""

from __future__ import annotations

import csv
import io
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pypdf import PdfReader
from sqlalchemy import select

import network_web_support as support
from kiban.core.audit import AuditEntry
from kiban.core.wareki import to_wareki
from kiban.network import service as network
from kiban.network.service import ITEM_COLUMNS
from network_web_support import JST, PASSWORD, USES, World, csv_file, new_id, this_month

# The shared fixtures (pytest finds them as module attributes).
world, nenkin, chiyoda, operator, cheap_scrypt = (
    support.world,
    support.nenkin,
    support.chiyoda,
    support.operator,
    support.cheap_scrypt,
)
PENSION = "pension_status_check"


def ask(client: TestClient, use: str, query: dict[str, Any]) -> Any:
    return client.post("/api/provision", json={"use_code": use, "query": query})


def columns_of(use: str) -> set[str]:
    return {c for item in USES[use]["items"] for c in ITEM_COLUMNS[item]}


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


# --- single queries ------------------------------------------------------------------------------


def test_a_query_returns_exactly_the_uses_items_and_is_logged(world: World, nenkin: TestClient) -> None:
    code = world.codes[3]
    row = world.person(code)
    response = ask(nenkin, PENSION, {"resident_code": code})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["outcome"] == "provided" and answer["items"] == USES[PENSION]["items"]
    assert set(answer["data"]) == columns_of(PENSION)
    assert answer["data"]["family_name"] == row.family_name
    assert answer["data"]["individual_number"] == row.individual_number
    [log] = world.provisions()
    assert (log.agency_code, log.use_code, log.resident_code, log.outcome) == (
        "nenkin",
        PENSION,
        code,
        "provided",
    )
    # By 個人番号 and by 基本4情報: the same person.
    by_number = ask(nenkin, PENSION, {"individual_number": row.individual_number}).json()
    assert by_number["data"]["resident_code"] == code
    basic = {
        "name_kana": f"{row.family_name_kana} {row.given_name_kana}",
        "birth_date": row.birth_date.isoformat(),
        "sex": row.sex,
        "address_prefix": row.address[:3],
    }
    assert ask(nenkin, PENSION, basic).json()["data"]["resident_code"] == code
    nobody = ask(nenkin, PENSION, {**basic, "sex": 3 - row.sex}).json()
    assert (nobody["outcome"], nobody["data"]) == ("not_found", {})


def test_a_use_without_the_number_never_shows_it(world: World) -> None:
    code = world.codes[5]
    row = world.person(code)
    client = world.client("passport")
    answer = ask(client, "passport_issue", {"resident_code": code}).json()
    assert answer["outcome"] == "provided" and set(answer["data"]) == columns_of("passport_issue")
    assert row.individual_number and row.individual_number not in str(answer)
    by_number = ask(client, "passport_issue", {"individual_number": row.individual_number})
    assert by_number.status_code == 403
    body = by_number.json()
    assert body["errors"][0]["rule"] == "number_not_allowed" and "data" not in body
    assert row.family_name not in by_number.text


@pytest.mark.parametrize(
    ("user", "use", "rule"),
    [
        ("nenkin", "national_tax", "use_not_allowed"),
        ("nenkin", "no_such_use", "unknown_use"),
        ("ghost", PENSION, "unknown_agency"),
    ],
)
def test_a_refused_query_is_403_with_the_rule_leaks_nothing_and_is_logged(
    world: World, user: str, use: str, rule: str
) -> None:
    code = world.codes[0]
    row = world.person(code)
    client = world.client(user)
    response = ask(client, use, {"resident_code": code})
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"] == "urn:kiban:problem:provision-refused"
    assert body["errors"] == [{"field": "use_code", "rule": rule, "message": body["errors"][0]["message"]}]
    assert row.family_name not in response.text and row.address not in response.text
    [log] = world.provisions()
    assert (log.outcome, log.rule, log.use_code, log.items) == ("refused", rule, use, [])
    with world.factory() as s:
        [entry] = s.scalars(select(AuditEntry).where(AuditEntry.action == "refuse")).all()
        assert entry.detail is not None and entry.detail["rule"] == rule


@pytest.mark.parametrize(
    ("query", "field", "rule"),
    [
        ({"resident_code": "12345678906"}, "query.resident_code", "check_digit"),
        ({"individual_number": "12345678901"}, "query.individual_number", "length"),
        ({}, "query", "one_form"),
        ({"name_kana": "ヤマダ"}, "query", "basic4_complete"),
        ({"resident_code": "12345678903", "honseki": "東京都"}, "query.honseki", "invalid"),
    ],
)
def test_a_malformed_query_is_422_naming_field_and_rule_and_changes_nothing(
    world: World, nenkin: TestClient, query: dict[str, Any], field: str, rule: str
) -> None:
    before = world.counts()
    response = ask(nenkin, PENSION, query)
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert (error["field"], error["rule"]) == (field, rule)
    assert "東京都" not in response.text  # the hostile value is not echoed
    assert world.counts() == before


def test_a_malformed_body_is_422(world: World, nenkin: TestClient) -> None:
    before = world.counts()
    assert nenkin.post("/api/provision", json={"use_code": PENSION}).status_code == 422
    assert nenkin.post("/api/provision", json={"use_code": "", "query": {}}).status_code == 422
    assert (
        nenkin.post(
            "/api/provision", content=b"\xff\xfe", headers={"content-type": "application/json"}
        ).status_code
        == 422
    )
    assert world.counts() == before


def test_roles_and_csrf(world: World, nenkin: TestClient, chiyoda: TestClient, operator: TestClient) -> None:
    code = world.codes[1]
    before = world.counts()
    for client in (chiyoda, operator):
        response = ask(client, PENSION, {"resident_code": code})
        assert response.status_code == 403 and response.json()["type"] == "urn:kiban:problem:role-forbidden"
        assert client.post("/api/provision/bulk", json={"use_code": PENSION, "size": 10}).status_code == 403
    anonymous = TestClient(world.app, raise_server_exceptions=False)
    assert ask(anonymous, PENSION, {"resident_code": code}).status_code in (401, 403)
    no_csrf = nenkin.post(
        "/api/provision",
        json={"use_code": PENSION, "query": {"resident_code": code}},
        headers={"X-CSRF-Token": "forged"},
    )
    assert no_csrf.status_code == 403 and no_csrf.json()["type"] == "urn:kiban:problem:csrf-failed"
    assert world.counts() == before
    # Agencies neither disclose nor operate.
    assert nenkin.post("/api/disclosure", json={"resident_code": code, "year": 2026}).status_code == 403
    assert nenkin.get("/api/network/replication").status_code == 403
    assert nenkin.get("/api/network/quarantine").status_code == 403
    assert chiyoda.get("/api/network/statistics").status_code == 403


# --- bulk ----------------------------------------------------------------------------------------


def open_job(client: TestClient, size: int, use: str = PENSION) -> str:
    response = client.post("/api/provision/bulk", json={"use_code": use, "size": size})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def upload(client: TestClient, job: str, content: bytes, offset: int | None = None) -> Any:
    headers = {"content-type": "text/csv"}
    if offset is not None:
        headers["Upload-Offset"] = str(offset)
    return client.put(f"/api/provision/bulk/{job}/file", content=content, headers=headers)


def test_bulk_in_parts_answers_streamed_and_resumable(world: World, nenkin: TestClient) -> None:
    codes = world.codes
    content = csv_file([codes[i % len(codes)] for i in range(30)][:20] + [codes[25], codes[26]])
    job = open_job(nenkin, len(content))
    cut = 37
    first = upload(nenkin, job, content[:cut])
    assert (
        first.status_code == 200 and first.json()["received"] == cut and not first.json()["upload_complete"]
    )
    # Answers before the whole file arrived: refused, nothing provided.
    early = nenkin.post(f"/api/provision/bulk/{job}/answers")
    assert early.status_code == 409 and early.json()["errors"][0]["rule"] == "upload_incomplete"
    # A replayed part (offset 0 again) changes nothing and says where to continue.
    replay = upload(nenkin, job, content[:cut], offset=0)
    assert replay.status_code == 409 and replay.json()["offset"] == cut
    assert replay.headers["Upload-Offset"] == str(cut)
    rest = upload(nenkin, job, content[cut:], offset=cut)
    assert rest.status_code == 200 and rest.json()["upload_complete"]
    again = upload(nenkin, job, b"x", offset=len(content))
    assert again.status_code == 409
    response = nenkin.post(f"/api/provision/bulk/{job}/answers")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = read_csv(response.text)
    assert [int(r["row"]) for r in rows] == list(range(22))
    assert all(r["outcome"] == "provided" for r in rows)
    assert set(rows[0]) == {"row", "outcome", "rule", "field", "message", "restricted"} | columns_of(PENSION)
    assert (
        rows[3]["resident_code"] == codes[3] and rows[3]["family_name"] == world.person(codes[3]).family_name
    )
    status = nenkin.get(f"/api/provision/bulk/{job}").json()
    assert (status["next_row"], status["provided"], status["failed"]) == (22, 22, 0)
    assert status["finished_at"] is not None
    # Replay of the download: refused; a client that lost rows asks from start=, logged again.
    assert nenkin.post(f"/api/provision/bulk/{job}/answers").status_code == 409
    before = len(world.provisions())
    refetch = read_csv(nenkin.post(f"/api/provision/bulk/{job}/answers?start=20").text)
    assert [int(r["row"]) for r in refetch] == [20, 21]
    assert len(world.provisions()) == before + 2
    # A second stream of the job while one runs (a client retrying too early): 409, nothing provided.
    import uuid

    lock = world.app.state.network_answer_locks[uuid.UUID(job)]
    assert lock.acquire(blocking=False)  # as if a stream were running
    busy = nenkin.post(f"/api/provision/bulk/{job}/answers?start=0")
    lock.release()
    assert busy.status_code == 409 and busy.json()["errors"][0]["rule"] == "in_progress"
    assert len(world.provisions()) == before + 2
    beyond = nenkin.post(f"/api/provision/bulk/{job}/answers?start=23")
    assert beyond.status_code == 422 and beyond.json()["errors"][0]["rule"] == "within_cursor"
    assert nenkin.delete(f"/api/provision/bulk/{job}/file").status_code == 204


def test_bulk_resumes_from_the_cursor_after_a_broken_stream(world: World, nenkin: TestClient) -> None:
    rows = [world.codes[i % 40] + ("" if i < 40 else f",{i}") for i in range(40)]
    content = csv_file(rows)
    job = open_job(nenkin, len(content))
    assert upload(nenkin, job, content).status_code == 200
    # The stream broke after the first chunk had committed (the service's cursor moved to 10).
    import uuid

    stream = network.provide_bulk(
        world.factory,
        uuid.UUID(job),
        network.read_bulk_csv(io.BytesIO(content)),
        chunk_size=10,
    )
    got = [next(stream) for _ in range(3)]
    stream.close()
    assert [a.row for a in got] == [0, 1, 2]
    assert nenkin.get(f"/api/provision/bulk/{job}").json()["next_row"] == 10
    resumed = read_csv(nenkin.post(f"/api/provision/bulk/{job}/answers").text)
    assert [int(r["row"]) for r in resumed] == list(range(10, 40))
    assert nenkin.post(f"/api/provision/bulk/{job}/answers?start=3").status_code == 200


def test_bulk_bad_rows_get_their_own_errors_and_the_rest_is_answered(
    world: World, nenkin: TestClient
) -> None:
    good = world.codes[7]
    bad_digit = good[:-1] + str((int(good[-1]) + 1) % 10)
    lines = [
        good.encode(),  # 0 provided
        bad_digit.encode(),  # 1 check digit
        good.encode(),  # 2 duplicate of row 0
        "山田".encode("shift_jis"),  # 3 not UTF-8
        b"",  # 4 empty
        f"{world.codes[8]},extra".encode(),  # 5 two fields, header has one
        b"00000000000",  # 6 a valid-looking code nobody has? (check digit decides)
        world.codes[9].encode(),  # 7 provided
    ]
    content = b"resident_code\r\n" + b"\r\n".join(lines) + b"\r\n"
    job = open_job(nenkin, len(content))
    assert upload(nenkin, job, content).status_code == 200
    rows = read_csv(nenkin.post(f"/api/provision/bulk/{job}/answers").text)
    by_row = {int(r["row"]): r for r in rows}
    assert by_row[0]["outcome"] == "provided" and by_row[7]["outcome"] == "provided"
    assert (by_row[1]["outcome"], by_row[1]["rule"], by_row[1]["field"]) == (
        "invalid",
        "check_digit",
        "rows[1].resident_code",
    )
    assert (by_row[2]["rule"], by_row[3]["rule"], by_row[4]["rule"], by_row[5]["rule"]) == (
        "duplicate_row",
        "utf8",
        "empty",
        "columns",
    )
    assert by_row[6]["outcome"] in ("invalid", "not_found")
    for r in rows:
        if r["outcome"] != "provided":
            assert r["family_name"] == "" and r["resident_code"] == "" and r["address"] == ""
    assert world.codes[8] not in str(rows)  # the bad row's person is not provided


@pytest.mark.parametrize(
    ("header", "field", "rule"),
    [
        (b"resident_code,honseki", "header", "columns"),
        (b"resident_code,resident_code", "header", "columns"),
        ("住民票コード".encode("shift_jis"), "header", "utf8"),
    ],
)
def test_a_bad_header_is_refused_at_once_and_nothing_is_stored(
    world: World, nenkin: TestClient, header: bytes, field: str, rule: str
) -> None:
    content = header + b"\r\n" + world.codes[0].encode() + b"\r\n"
    job = open_job(nenkin, len(content))
    response = upload(nenkin, job, content)
    assert response.status_code == 422
    assert (response.json()["errors"][0]["field"], response.json()["errors"][0]["rule"]) == (field, rule)
    status = nenkin.get(f"/api/provision/bulk/{job}").json()
    assert status["received"] == 0 and status["next_row"] == 0
    assert world.provisions() == []


def test_size_claims_are_refused_before_reading(world: World, nenkin: TestClient) -> None:
    before = world.counts()
    ten_gb = 10 * 1000**3
    claim = nenkin.post("/api/provision/bulk", json={"use_code": PENSION, "size": ten_gb})
    assert claim.status_code == 413
    assert (claim.json()["errors"][0]["field"], claim.json()["errors"][0]["rule"]) == ("size", "too_large")
    assert world.counts() == before  # no job
    content = csv_file([world.codes[0]])
    job = open_job(nenkin, len(content))
    # A part claiming 10 GB: refused on its Content-Length, before the body is read.
    huge = nenkin.put(
        f"/api/provision/bulk/{job}/file",
        content=content,
        headers={"content-type": "text/csv", "content-length": str(ten_gb)},
    )
    assert huge.status_code == 413
    # A part longer than the declared file: refused, nothing kept.
    longer = upload(nenkin, job, content + b"12345678903\r\n")
    assert longer.status_code == 413 and longer.json()["errors"][0]["rule"] == "too_large"
    assert nenkin.get(f"/api/provision/bulk/{job}").json()["received"] == 0
    assert upload(nenkin, job, b"").status_code in (409, 413, 422)
    assert world.provisions() == []


def test_jobs_are_the_agencys_own(world: World, nenkin: TestClient) -> None:
    content = csv_file([world.codes[0]])
    job = open_job(nenkin, len(content))
    assert upload(nenkin, job, content).status_code == 200
    other = world.client("passport")
    for response in (
        other.get(f"/api/provision/bulk/{job}"),
        other.post(f"/api/provision/bulk/{job}/answers"),
        other.put(f"/api/provision/bulk/{job}/file", content=content, headers={"Upload-Offset": "0"}),
        other.delete(f"/api/provision/bulk/{job}/file"),
    ):
        assert response.status_code == 404, response.text
        assert response.json()["errors"][0]["rule"] == "unknown_job"
    assert other.get("/api/provision/bulk").json() == []
    assert [j["id"] for j in nenkin.get("/api/provision/bulk").json()] == [job]
    assert nenkin.get(f"/api/provision/bulk/{new_id()}").status_code == 404
    assert nenkin.get("/api/provision/bulk/not-a-uuid").status_code == 422
    assert world.provisions() == []


def test_a_bulk_job_for_a_use_not_allowed_is_refused_and_logged(world: World, nenkin: TestClient) -> None:
    response = nenkin.post("/api/provision/bulk", json={"use_code": "national_tax", "size": 100})
    assert response.status_code == 403 and response.json()["errors"][0]["rule"] == "use_not_allowed"
    ghost = world.client("ghost").post("/api/provision/bulk", json={"use_code": PENSION, "size": 100})
    assert ghost.status_code == 403 and ghost.json()["errors"][0]["rule"] == "unknown_agency"
    with world.factory() as s:
        refusals = s.scalars(select(AuditEntry).where(AuditEntry.action == "refuse")).all()
    assert sorted(e.detail["rule"] for e in refusals if e.detail) == ["unknown_agency", "use_not_allowed"]
    assert world.counts()[2] == 0


# --- disclosure ----------------------------------------------------------------------------------


def test_disclosure_json_and_pdf(world: World, nenkin: TestClient, chiyoda: TestClient) -> None:
    code = world.in_municipality("131016")[0]
    row = world.person(code)
    assert ask(nenkin, PENSION, {"resident_code": code}).status_code == 200
    assert ask(nenkin, "national_tax", {"resident_code": code}).status_code == 403  # refused: not disclosed
    year = datetime.now(JST).year
    body = {"resident_code": code, "year": year}
    response = chiyoda.post("/api/disclosure", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["name"] == f"{row.family_name}　{row.given_name}"
    [entry] = result["entries"]
    assert (entry["agency_name"], entry["use_code"], entry["items"]) == (
        "日本年金機構",
        PENSION,
        USES[PENSION]["items"],
    )
    assert chiyoda.post("/api/disclosure", json={**body, "year": year - 1}).json()["entries"] == []
    proxy = {**body, "requester": "proxy", "proxy_name": "代理　花子", "proxy_document": "委任状"}
    pdf = chiyoda.post("/api/disclosure/pdf", json=proxy)
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    reader = PdfReader(io.BytesIO(pdf.content))
    text = "".join(page.extract_text() for page in reader.pages)
    assert "本人確認情報の提供状況の開示について" in text
    assert "日本年金機構" in text and row.family_name in text and "代理人（代理　花子）" in text
    assert to_wareki(datetime.now(JST).date()) in text and "令和" in text
    assert pdf.headers["X-Kiban-Serial"] in text
    fonts = {
        str(f["/BaseFont"])
        for page in reader.pages
        for f in page["/Resources"]["/Font"].values()  # type: ignore[index,union-attr]
    }
    assert any(name.endswith("IPAexMincho") for name in fonts)
    with world.factory() as s:
        asked = s.scalars(select(AuditEntry).where(AuditEntry.purpose == "提供状況の開示の請求")).all()
    assert [(e.actor, e.subject, e.detail and e.detail["requester"]) for e in asked] == [
        ("chiyoda", code, "self"),
        ("chiyoda", code, "self"),
        ("chiyoda", code, "proxy"),
    ]
    assert asked[2].detail is not None and asked[2].detail["proxy_name"] == "代理　花子"
    # The printed serial and code verify against the ledger (the hash covers what is printed).
    from kiban.core.documents import KeyDirectorySigners, parse_qr_payload, verify_document

    serial = pdf.headers["X-Kiban-Serial"]
    code = re.search(r"照合番号\s*([A-Z0-9-]+)", text)
    assert code
    with world.factory() as s:
        from kiban.core.models.documents import IssuedDocument

        issued = s.scalars(select(IssuedDocument).where(IssuedDocument.serial == serial)).one()
        assert (issued.document_type, issued.subject_resident_code, issued.issuer) == (
            "network.disclosure",
            code_of(row),
            "chiyoda",
        )
        signers = KeyDirectorySigners(world.data_dir / "keys")
        result = verify_document(s, serial, issued.content_hash, code.group(1), signers=signers)
        assert result.valid, result
        assert parse_qr_payload(f"KIBAN1/{serial}/{issued.content_hash.upper()}/{code.group(1)}")[0] == serial


def code_of(row: Any) -> str:
    return str(row.resident_code)


def test_a_long_disclosure_flows_over_several_sheets(
    world: World, nenkin: TestClient, chiyoda: TestClient
) -> None:
    code = world.in_municipality("131016")[3]
    for _ in range(25):
        assert ask(nenkin, PENSION, {"resident_code": code}).status_code == 200
    pdf = chiyoda.post("/api/disclosure/pdf", json={"resident_code": code, "year": datetime.now(JST).year})
    reader = PdfReader(io.BytesIO(pdf.content))
    assert len(reader.pages) >= 2
    text = "".join(page.extract_text() for page in reader.pages)
    assert "（次葉に続く）" in text and "以上　25件" in text and text.count("日本年金機構") == 25
    # The 事務's full name is wrapped, not cut: its last words are printed.
    assert text.replace("\n", "").count("に関する事務）") >= 25


def test_disclosure_bad_requests(world: World, chiyoda: TestClient) -> None:
    code = world.in_municipality("131016")[0]
    gifu_resident = world.in_municipality("212016")[0]
    year = datetime.now(JST).year
    before = world.counts()
    cases = [
        ({"resident_code": code, "year": year, "requester": "proxy"}, "proxy_name", "required"),
        ({"resident_code": "12345678906", "year": year}, "resident_code", "check_digit"),
        ({"resident_code": code, "year": 1999}, "year", "range"),
        (
            {"resident_code": code, "year": year, "identity_document": "免許\x00証"},
            "identity_document",
            "control_characters",
        ),
    ]
    for body, field, rule in cases:
        response = chiyoda.post("/api/disclosure", json=body)
        assert response.status_code == 422, response.text
        assert (response.json()["errors"][0]["field"], response.json()["errors"][0]["rule"]) == (field, rule)
    # Someone of another municipality (or nobody): 403, the same answer, nothing disclosed.
    for other in (gifu_resident, "12345678903"):
        response = chiyoda.post("/api/disclosure", json={"resident_code": other, "year": year})
        assert response.status_code == 403 and response.json()["errors"][0]["rule"] == "own_municipality"
        assert "entries" not in response.json()
    assert world.counts() == before


# --- the national operator -----------------------------------------------------------------------


def test_replication_quarantine_and_release(world: World, operator: TestClient) -> None:
    a_code = world.in_municipality("131016")[0]
    world.change(a_code, address_text=world.person(a_code).address + "二階")
    # A second active registration in 岐阜市: quarantined.
    world.change(a_code, municipality_code="212016", address_text="岐阜県岐阜市今沢町1番地")
    replication = operator.get("/api/network/replication").json()
    tokyo = next(p for p in replication["prefectures"] if p["prefecture_code"] == "13")
    assert tokyo["versions"] == 1 and tokyo["prefecture_name"] == "東京都" and tokyo["max_lag_seconds"] >= 0
    gifu = next(p for p in replication["prefectures"] if p["prefecture_code"] == "21")
    assert gifu["quarantined"] == 1
    listed = operator.get("/api/network/quarantine")
    assert listed.headers["X-Total-Count"] == "1"
    [waiting] = listed.json()
    assert waiting["rule"] == "second_active_registration" and "document" not in waiting
    assert "岐阜県岐阜市今沢町" not in operator.get("/api/network/quarantine").text
    still = operator.post(f"/api/network/quarantine/{waiting['id']}/release")
    assert still.status_code == 422 and still.json()["errors"][0]["rule"] == "second_active_registration"
    # 千代田区 completes the 転出: now the 転入 applies.
    world.change(a_code, status="removed", reason="move_out", reason_ja="転出")
    released = operator.post(f"/api/network/quarantine/{waiting['id']}/release")
    assert released.status_code == 200 and released.json()["outcome"] == "applied"
    assert world.person(a_code).municipality_code == "212016"
    replay = operator.post(f"/api/network/quarantine/{waiting['id']}/release")
    assert replay.status_code == 422 and replay.json()["errors"][0]["rule"] == "not_quarantined"
    assert operator.get("/api/network/quarantine").json() == []


def test_registry_and_statistics(world: World, nenkin: TestClient, operator: TestClient) -> None:
    registry = operator.get("/api/network/agencies").json()
    assert {a["code"] for a in registry} >= {"nenkin", "mofa-passport", "gifu-senkan"}
    nenkin_entry = next(a for a in registry if a["code"] == "nenkin")
    assert [u["code"] for u in nenkin_entry["uses"]] == [PENSION]
    assert operator.post("/api/network/agencies/reload").json() == {
        "agencies": len(registry),
        "uses": len(USES),
    }
    for code in world.codes[:3]:
        ask(nenkin, PENSION, {"resident_code": code})
    ask(nenkin, "national_tax", {"resident_code": world.codes[0]})
    ask(nenkin, PENSION, {"resident_code": "12345678903"})  # a valid code nobody has
    month = this_month()
    stats = operator.get("/api/network/statistics", params={"since": month, "until": month}).json()
    counted = {(r["agency_code"], r["use_code"], r["outcome"]): r["count"] for r in stats}
    assert counted == {
        ("nenkin", PENSION, "provided"): 3,
        ("nenkin", PENSION, "not_found"): 1,
        ("nenkin", "national_tax", "refused"): 1,
    }
    assert {r["month"] for r in stats} == {month}
    assert (
        operator.get("/api/network/statistics", params={"since": "2001-01", "until": "2001-12"}).json() == []
    )
    assert operator.get("/api/network/statistics", params={"agency": "nta"}).json() == []
    assert operator.get("/api/network/statistics", params={"since": "2026-13"}).status_code == 422
    assert operator.get("/api/network/statistics", params={"since": "latest"}).status_code == 422


# --- a real server: the answer stream breaks and resumes -------------------------------------------


def test_a_broken_answer_stream_over_http_resumes_without_gaps(
    world: World, db_url: str, tmp_path: Path
) -> None:
    """`kiban serve` in a subprocess; the client drops the connection mid-stream, then resumes."""
    import httpx

    from browser_support import kiban_serve

    n = 6000
    lines = [world.codes[i] if i < 40 else f"{i:011d}" for i in range(n)]  # distinct lines
    content = csv_file(lines)
    with kiban_serve(db_url, tmp_path) as base, httpx.Client(base_url=base) as client:
        login = client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', login.text)
        assert token
        client.post("/login", data={"username": "nenkin", "password": PASSWORD, "csrf_token": token.group(1)})
        client.headers["X-CSRF-Token"] = client.get("/api/session").json()["csrf_token"]
        job = open_job(client, len(content))  # type: ignore[arg-type]
        assert upload(client, job, content).status_code == 200  # type: ignore[arg-type]
        received: list[int] = []
        with client.stream("POST", f"/api/provision/bulk/{job}/answers", timeout=60) as stream:
            assert stream.status_code == 200
            for line in stream.iter_lines():
                if line.startswith("row,"):
                    continue
                received.append(int(line.split(",", 1)[0]))
                if len(received) == 1500:
                    break  # the connection drops
        assert received == list(range(1500))
        status = client.get(f"/api/provision/bulk/{job}").json()
        # The first chunk (1,000 rows) had committed; the server noticed the disconnect and stopped
        # within a chunk or two rather than providing the whole file to nobody.
        assert 1000 <= status["next_row"] < n and status["finished_at"] is None
        # The client asks from the first row it lacks: nothing is missing, nothing twice in its hands.
        # The server may still be finishing the chunk in flight: 409 in_progress with Retry-After,
        # until the dropped stream has closed and released the job.
        waited = 0.0
        while True:
            rest = client.post(f"/api/provision/bulk/{job}/answers", params={"start": 1500}, timeout=120)
            if rest.status_code != 409 or waited > 20:
                break
            assert rest.json()["errors"][0]["rule"] == "in_progress"
            time.sleep(float(rest.headers["Retry-After"]) / 4)
            waited += float(rest.headers["Retry-After"]) / 4
        assert rest.status_code == 200, rest.text
        rows = read_csv(rest.text)
        assert [int(r["row"]) for r in rows] == list(range(1500, n))
        done = client.get(f"/api/provision/bulk/{job}").json()
        assert done["next_row"] == n and done["finished_at"] is not None
    assert sum(1 for p in world.provisions() if p.outcome == "provided") >= 40


# --- DV等支援措置 and hostile files ----------------------------------------------------------------


def test_restricted_persons_through_the_api_are_flagged_and_the_address_withheld_where_the_use_says(
    world: World, nenkin: TestClient
) -> None:
    from datetime import timedelta

    from kiban.core.accounts import create_user
    from kiban.core.events import drain
    from kiban.register import service as register
    from kiban.register.schemas import Actor, SetRestriction

    code = world.codes[2]
    row = world.person(code)
    today = datetime.now(JST).date()
    with world.factory.begin() as s:
        register.set_restriction(
            s,
            Actor(username="clerk", municipality_code=row.municipality_code),
            SetRestriction(
                resident_code=code,
                reason="DV",
                starts_on=today - timedelta(days=1),
                ends_on=today + timedelta(days=300),
            ),
            today=today,
        )
        create_user(s, "senkan", support.PASSWORD, "agency", organisation="gifu-senkan")
    drain(world.factory, world.registry)
    pension = ask(nenkin, PENSION, {"resident_code": code}).json()
    assert pension["outcome"] == "provided" and pension["restricted"] is True
    assert pension["data"]["address"] == row.address
    election = ask(world.client("senkan"), "elections_other_municipality", {"resident_code": code}).json()
    assert election["restricted"] is True and "address" not in election["items"]
    assert "address" not in election["data"] and row.address not in str(election)
    content = csv_file([code, world.codes[3]])
    job = open_job(nenkin, len(content))
    upload(nenkin, job, content)
    rows = read_csv(nenkin.post(f"/api/provision/bulk/{job}/answers").text)
    assert [(r["resident_code"], r["restricted"]) for r in rows] == [(code, "1"), (world.codes[3], "0")]
    with world.factory() as s:
        flagged = s.scalars(select(AuditEntry).where(AuditEntry.action == "provide")).all()
    assert [list(e.flags) for e in flagged] == [["dv_restricted"], ["dv_restricted"], ["dv_restricted"], []]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(
        st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")),
        min_size=1,
        max_size=12,
    )
)
def test_any_bytes_after_a_good_header_get_one_answer_per_line_and_no_server_error(
    world: World, nenkin: TestClient, lines: list[bytes]
) -> None:
    content = b"resident_code,birth_date\n" + b"\n".join(lines) + b"\n"
    job = open_job(nenkin, len(content))
    assert upload(nenkin, job, content).status_code == 200
    response = nenkin.post(f"/api/provision/bulk/{job}/answers")
    assert response.status_code == 200
    rows = read_csv(response.text)
    assert [int(r["row"]) for r in rows] == list(range(len(lines)))
    for r in rows:
        assert r["outcome"] in ("provided", "not_found", "invalid", "ambiguous"), r
        if r["outcome"] == "invalid":
            assert r["rule"] and r["field"].startswith(f"rows[{r['row']}]")


def test_statistics_months_are_jst_months(world: World, nenkin: TestClient, operator: TestClient) -> None:
    """A provision at 2026-03-31 15:30 UTC is in April in Japan; one at 14:59 UTC is still March."""
    from datetime import UTC

    from sqlalchemy import update

    from kiban.network.models import Provision

    for code in world.codes[:3]:
        ask(nenkin, PENSION, {"resident_code": code})
    ids = [p.id for p in world.provisions()]
    moments = [
        datetime(2026, 3, 31, 14, 59, tzinfo=UTC),
        datetime(2026, 3, 31, 15, 30, tzinfo=UTC),
        datetime(2026, 4, 30, 15, 0, tzinfo=UTC),  # 2026-05-01 00:00 JST
    ]
    with world.factory.begin() as s:
        for pid, moment in zip(ids, moments, strict=True):
            s.execute(update(Provision).where(Provision.id == pid).values(provided_at=moment))
    stats = operator.get("/api/network/statistics", params={"since": "2026-03", "until": "2026-05"}).json()
    assert [(r["month"], r["count"]) for r in stats] == [("2026-03", 1), ("2026-04", 1), ("2026-05", 1)]
    april = operator.get("/api/network/statistics", params={"since": "2026-04", "until": "2026-04"}).json()
    assert [(r["month"], r["count"]) for r in april] == [("2026-04", 1)]
