"""Provision of 本人確認情報 to agencies, purpose control, DV flags, bulk files, disclosure (SPEC K2)."""

from __future__ import annotations

import itertools
import json
import random
import types
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from kiban.core.audit import AuditEntry
from kiban.core.events import DomainEvent, Registry, drain
from kiban.core.identifiers import IndividualNumberCipher, ResidentCodeGenerator
from kiban.network import service as network
from kiban.network.handlers import register_handlers as network_handlers
from kiban.network.models import BulkJob, NationalIdentity, Provision
from kiban.network.service import ITEM_COLUMNS, NetworkError
from kiban.numbering import service as numbering
from kiban.numbering.notices import notify_assigned
from kiban.register import service
from kiban.register.handlers import register_handlers
from kiban.register.loader import load_population
from kiban.register.models import Resident
from kiban.register.population import generate_population
from kiban.register.schemas import Actor, SetRestriction

A = "131016"  # 千代田区
B = "212016"  # 岐阜市
CIPHER = IndividualNumberCipher(bytes(range(32)))
JST = ZoneInfo("Asia/Tokyo")
TODAY = datetime.now(JST).date()
DATA = json.loads(resources.files("kiban.network").joinpath("data/uses.json").read_text(encoding="utf-8"))
USES = {u["code"]: u for u in DATA["uses"]}
AGENCY_OF = {use: a["code"] for a in DATA["agencies"] for use in a["uses"]}


@pytest.fixture
def world(engine: Engine, session_maker: sessionmaker[Session]) -> list[str]:
    """40 numbered residents in both copies, and the agency registry."""
    registry = Registry()
    register_handlers(registry)
    households = list(generate_population([A, B], 40, seed=8, as_of=date(2025, 4, 1)))
    with session_maker.begin() as s:
        codes = numbering.issue_resident_codes(s, 40, ResidentCodeGenerator(random.Random(8)))
    load_population(engine, households, iter(codes))
    with session_maker.begin() as s:
        assigned = numbering.assign_individual_numbers_bulk(s, codes, CIPHER)
        where = {c: m for c, m in s.execute(select(Resident.resident_code, Resident.municipality_code))}
        notify_assigned(s, assigned, where)
    drain(session_maker, registry)
    with session_maker.begin() as s:
        network.seed_copies(s)
        assert network.load_registry(s) == (len(DATA["agencies"]), len(DATA["uses"]))
    return codes


@pytest.fixture
def s(session_maker: sessionmaker[Session]) -> Iterator[Session]:
    with session_maker() as session:
        yield session


def person(s: Session, code: str) -> NationalIdentity:
    row = s.scalars(
        select(NationalIdentity).where(NationalIdentity.resident_code == code, NationalIdentity.is_current)
    ).one()
    return row


def ask(session_maker: sessionmaker[Session], agency: str, use: str, query: Any) -> Any:
    with session_maker.begin() as s:
        return network.provide(s, agency, use, query, on=TODAY)


def counts(s: Session) -> tuple[int, int]:
    s.expire_all()
    return (
        s.scalar(select(func.count()).select_from(Provision)) or 0,
        s.scalar(select(func.count()).select_from(AuditEntry)) or 0,
    )


# --- purpose control -----------------------------------------------------------------------------


@pytest.mark.parametrize("use", sorted(USES))
def test_each_use_receives_exactly_its_items(
    world: list[str], session_maker: sessionmaker[Session], s: Session, use: str
) -> None:
    code = world[3]
    answer = ask(session_maker, AGENCY_OF[use], use, {"resident_code": code})
    assert answer.outcome == "provided" and not answer.restricted
    assert answer.items == USES[use]["items"]
    allowed = {c for item in USES[use]["items"] for c in ITEM_COLUMNS[item]}
    assert set(answer.data) == allowed
    row = person(s, code)
    assert answer.data["family_name"] == row.family_name
    if "individual_number" not in USES[use]["items"]:
        assert row.individual_number and row.individual_number not in json.dumps(answer.data)
    [log] = s.scalars(select(Provision)).all()
    assert (log.agency_code, log.use_code, log.resident_code, log.outcome, log.items) == (
        AGENCY_OF[use],
        use,
        code,
        "provided",
        USES[use]["items"],
    )
    [entry] = s.scalars(select(AuditEntry).where(AuditEntry.action == "provide")).all()
    assert (entry.actor, entry.purpose, entry.subject, list(entry.items)) == (
        AGENCY_OF[use],
        use,
        code,
        USES[use]["items"],
    )


@pytest.mark.parametrize(
    ("agency", "use", "rule"),
    [
        ("nta", "passport_issue", "use_not_allowed"),
        ("nenkin", "national_tax", "use_not_allowed"),
        ("no-such-agency", "pension_status_check", "unknown_agency"),
        ("nenkin", "no_such_use", "unknown_use"),
    ],
)
def test_a_use_not_the_agencys_returns_nothing_and_is_logged(
    world: list[str], session_maker: sessionmaker[Session], s: Session, agency: str, use: str, rule: str
) -> None:
    answer = ask(session_maker, agency, use, {"resident_code": world[0]})
    assert (answer.outcome, answer.rule, answer.data, answer.items) == ("refused", rule, {}, [])
    [log] = s.scalars(select(Provision)).all()
    assert (log.outcome, log.rule, log.agency_code, log.use_code, log.items) == (
        "refused",
        rule,
        agency,
        use,
        [],
    )
    [entry] = s.scalars(select(AuditEntry).where(AuditEntry.action == "refuse")).all()
    assert entry.detail is not None and entry.detail["rule"] == rule and entry.items == []
    assert s.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "provide")) == 0


def test_query_by_individual_number_only_for_uses_that_may_have_it(
    world: list[str], session_maker: sessionmaker[Session], s: Session
) -> None:
    row = person(s, world[5])
    assert row.individual_number
    answer = ask(
        session_maker, "nenkin", "pension_status_check", {"individual_number": row.individual_number}
    )
    assert answer.outcome == "provided" and answer.data["resident_code"] == row.resident_code
    refused = ask(
        session_maker, "mofa-passport", "passport_issue", {"individual_number": row.individual_number}
    )
    assert (refused.outcome, refused.rule, refused.data) == ("refused", "number_not_allowed", {})
    # Full-width digits from Japanese input are the same number.
    wide = row.individual_number.translate(str.maketrans("0123456789", "０１２３４５６７８９"))
    assert ask(session_maker, "nta", "national_tax", {"individual_number": wide}).outcome == "provided"


def test_search_by_basic_four(world: list[str], session_maker: sessionmaker[Session], s: Session) -> None:
    row = person(s, world[7])
    query = {
        "name_kana": f"{row.family_name_kana}　{row.given_name_kana}",
        "birth_date": row.birth_date,
        "sex": row.sex,
        "address_prefix": row.address[:3],
    }
    answer = ask(session_maker, "nenkin", "pension_status_check", query)
    assert answer.outcome == "provided" and answer.data["resident_code"] == row.resident_code
    other = "女" if row.sex == 1 else "男"
    assert other  # the other sex finds no one
    missing = ask(session_maker, "nenkin", "pension_status_check", {**query, "sex": 3 - row.sex})
    assert (missing.outcome, missing.data) == ("not_found", {})
    wrong_place = ask(session_maker, "nenkin", "pension_status_check", {**query, "address_prefix": "北海道"})
    assert wrong_place.outcome == "not_found"
    assert [p.outcome for p in s.scalars(select(Provision).order_by(Provision.id))] == [
        "provided",
        "not_found",
        "not_found",
    ]


@pytest.mark.parametrize(
    ("query", "field", "rule"),
    [
        ({"resident_code": "12345678906"}, "resident_code", "check_digit"),
        ({"individual_number": "12345678901"}, "individual_number", "length"),
        ({}, "query", "one_form"),
        ({"name_kana": "ヤマダ"}, "query", "basic4_complete"),
        ({"resident_code": "12345678903", "individual_number": "123456789018"}, "query", "one_form"),
        (
            {"name_kana": "山田", "birth_date": "2000-01-01", "sex": 1, "address_prefix": "東京都"},
            "name_kana",
            "kana",
        ),
        ({"resident_code": "12345678903", "honseki": "x"}, "honseki", "invalid"),
    ],
)
def test_a_malformed_query_is_an_error_that_names_the_field_and_changes_nothing(
    world: list[str],
    session_maker: sessionmaker[Session],
    s: Session,
    query: dict[str, Any],
    field: str,
    rule: str,
) -> None:
    before = counts(s)
    with pytest.raises(NetworkError) as caught:
        ask(session_maker, "nenkin", "pension_status_check", query)
    assert (caught.value.field, caught.value.rule) == (field, rule), caught.value
    assert counts(s) == before


# --- DV等支援措置 -----------------------------------------------------------------------------------


def test_restricted_persons_are_provided_where_the_law_allows_and_flagged(
    world: list[str], session_maker: sessionmaker[Session], s: Session
) -> None:
    row = person(s, world[2])
    with session_maker.begin() as tx:
        service.set_restriction(
            tx,
            Actor(username="clerk", municipality_code=row.municipality_code),
            SetRestriction(
                resident_code=row.resident_code,
                reason="DV",
                starts_on=TODAY - timedelta(days=1),
                ends_on=TODAY + timedelta(days=300),
            ),
            today=TODAY,
        )
    # The measure reaches the network as register.restriction_changed (its own copy is what it reads).
    assert not network.is_restricted(s, row.resident_code, TODAY)
    delivery = Registry()
    network_handlers(delivery)
    drain(session_maker, delivery)
    assert network.is_restricted(s, row.resident_code, TODAY)
    pension = ask(session_maker, "nenkin", "pension_status_check", {"resident_code": row.resident_code})
    assert pension.outcome == "provided" and pension.restricted and pension.data["address"] == row.address
    election = ask(
        session_maker, "gifu-senkan", "elections_other_municipality", {"resident_code": row.resident_code}
    )
    assert election.outcome == "provided" and election.restricted
    assert "address" not in election.items and "address" not in election.data
    s.expire_all()
    logs = s.scalars(select(Provision).order_by(Provision.id)).all()
    assert [(p.restricted, "address" in p.items) for p in logs] == [(True, True), (True, False)]
    entries = s.scalars(
        select(AuditEntry).where(AuditEntry.action == "provide").order_by(AuditEntry.seq)
    ).all()
    assert [list(e.flags) for e in entries] == [["dv_restricted"], ["dv_restricted"]]
    # Someone else is not flagged.
    plain = ask(session_maker, "nenkin", "pension_status_check", {"resident_code": world[3]})
    assert plain.outcome == "provided" and not plain.restricted


# --- disclosure ------------------------------------------------------------------------------------


def test_disclosure_lists_exactly_the_provisions_made(
    world: list[str], session_maker: sessionmaker[Session], s: Session
) -> None:
    code, other = world[4], world[9]
    ask(session_maker, "nenkin", "pension_status_check", {"resident_code": code})
    ask(session_maker, "nta", "passport_issue", {"resident_code": code})  # refused: gave nothing
    ask(session_maker, "nta", "national_tax", {"resident_code": other})
    ask(session_maker, "mofa-passport", "passport_issue", {"resident_code": code})
    with session_maker.begin() as tx:
        entries = network.provisions_about(tx, code, TODAY.year)
        assert network.provisions_about(tx, code, TODAY.year - 1) == []
    assert [(e.agency_code, e.use_code, e.items) for e in entries] == [
        ("nenkin", "pension_status_check", USES["pension_status_check"]["items"]),
        ("mofa-passport", "passport_issue", USES["passport_issue"]["items"]),
    ]
    assert entries[0].agency_name == "日本年金機構" and entries[0].provided_at <= entries[1].provided_at
    reads = s.scalars(select(AuditEntry).where(AuditEntry.purpose == "提供状況の開示")).all()
    assert len(reads) == 2 and {r.subject for r in reads} == {code}
    with pytest.raises(ValueError, match="check_digit"):
        network.provisions_about(s, "12345678906", TODAY.year)


# --- bulk ------------------------------------------------------------------------------------------


def bulk_rows(s: Session, codes: list[str], n: int) -> list[dict[str, Any]]:
    numbers = {
        c: n for c, n in s.execute(select(NationalIdentity.resident_code, NationalIdentity.individual_number))
    }
    rows: list[dict[str, Any]] = []
    for i, code in zip(range(n), itertools.cycle(codes), strict=False):
        if i % 500 == 499:
            rows.append({"resident_code": code[:-1] + str((int(code[-1]) + 1) % 10)})  # bad check digit
        elif i % 7 == 0:
            rows.append({"individual_number": numbers[code]})
        else:
            rows.append({"resident_code": code})
    return rows


def test_bulk_ten_thousand_rows_streamed_and_resumable(
    world: list[str], session_maker: sessionmaker[Session], s: Session
) -> None:
    rows = bulk_rows(s, world, 10_000)
    with session_maker.begin() as tx:
        job_id = network.create_bulk_job(tx, "nenkin", "pension_status_check")
    stream = network.provide_bulk(session_maker, job_id, iter(rows), chunk_size=1000, on=TODAY)
    assert isinstance(stream, types.GeneratorType)
    first: list[Any] = []
    for answer in stream:
        first.append(answer)
        if len(first) == 2500:
            break  # the connection breaks mid-chunk
    stream.close()
    s.expire_all()
    job = s.get(BulkJob, job_id)
    assert job is not None and job.next_row == 3000 and job.finished_at is None
    # Resuming from the cursor answers nothing twice; rows 2500..2999 were answered but lost.
    rest = list(network.provide_bulk(session_maker, job_id, iter(rows), chunk_size=1000, on=TODAY))
    assert rest[0].row == 3000 and rest[-1].row == 9999
    s.expire_all()
    logged = s.execute(select(Provision.row_no, Provision.outcome).where(Provision.job_id == job_id)).all()
    assert sorted(r for r, _ in logged if r is not None) == list(range(10_000))  # each row logged once
    assert len(logged) == 10_000
    # The client asks again from the first row it lacks: those rows are provided and logged again.
    with pytest.raises(NetworkError, match="within_cursor"):
        next(network.provide_bulk(session_maker, job_id, iter(rows), start=10_001))
    again = list(network.provide_bulk(session_maker, job_id, iter(rows[:3000]), start=2500, on=TODAY))
    assert [a.row for a in again] == list(range(2500, 3000))
    answers = {a.row: a for a in [*first, *again, *rest]}
    assert sorted(answers) == list(range(10_000))
    s.expire_all()
    repeated = s.scalar(select(func.count()).select_from(Provision).where(Provision.job_id == job_id))
    assert repeated == 10_500
    outcomes = {r: o for r, o in logged}
    invalid = [r for r, o in outcomes.items() if o == "invalid"]
    assert invalid == [i for i in range(10_000) if i % 500 == 499]
    assert all(o == "provided" for r, o in outcomes.items() if r not in invalid)
    bad = answers[499]
    assert (bad.outcome, bad.field, bad.rule) == ("invalid", "rows[499].resident_code", "check_digit")
    assert (
        answers[7].data["resident_code"] == world[7]
        and answers[7].items == USES["pension_status_check"]["items"]
    )
    provided_audit = s.scalar(
        select(func.count())
        .select_from(AuditEntry)
        .where(AuditEntry.action == "provide", AuditEntry.purpose == "pension_status_check")
    )
    assert provided_audit == 10_500 - len(invalid) - 1  # row 2999 is invalid and in both runs
    job = s.get(BulkJob, job_id)
    assert job is not None and job.finished_at is not None and (job.provided, job.failed) == (10_479, 21)
    with pytest.raises(NetworkError, match="finished"):
        next(network.provide_bulk(session_maker, job_id, iter(rows)))


def test_bulk_for_a_use_not_the_agencys_refuses_every_row(
    world: list[str], session_maker: sessionmaker[Session], s: Session
) -> None:
    with session_maker.begin() as tx:
        job_id = network.create_bulk_job(tx, "nta", "pension_status_check")
    answers = list(
        network.provide_bulk(session_maker, job_id, [{"resident_code": c} for c in world[:30]], chunk_size=7)
    )
    assert {(a.outcome, a.rule) for a in answers} == {("refused", "use_not_allowed")}
    assert all(a.data == {} for a in answers) and [a.row for a in answers] == list(range(30))
    assert s.scalar(select(func.count()).select_from(Provision).where(Provision.outcome == "refused")) == 30


def test_a_search_that_finds_two_people_gives_no_data(
    world: list[str], session_maker: sessionmaker[Session], s: Session
) -> None:
    twins = ResidentCodeGenerator(random.Random(41))
    for code in (twins.generate(), twins.generate()):
        event = DomainEvent(
            id=str(uuid.uuid4()),
            type="register.identity_changed",
            key=code,
            schema_version=1,
            occurred_at=datetime.now(JST),
            payload={
                "resident_code": code,
                "municipality_code": A,
                "family_name": "双子",
                "given_name": "光",
                "family_name_kana": "フタゴ",
                "given_name_kana": "ヒカル",
                "birth_date": "2010-05-05",
                "sex": 1,
                "address_text": "東京都千代田区千代田1番",
                "status": "active",
                "reason": "birth",
                "reason_ja": "出生",
                "effective_on": "2010-05-05",
            },
            source="test",
        )
        with session_maker.begin() as tx:
            assert network.apply_identity_change(tx, event) == "applied"
    query = {"name_kana": "ふたご ひかる", "birth_date": "2010-05-05", "sex": 1, "address_prefix": "東京都"}
    answer = ask(session_maker, "nenkin", "pension_status_check", query)
    assert (answer.outcome, answer.data, answer.items) == ("ambiguous", {}, [])
    [log] = s.scalars(select(Provision)).all()
    assert (log.outcome, log.resident_code) == ("ambiguous", None)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    agency=st.sampled_from([a["code"] for a in DATA["agencies"]] + ["unknown"]),
    use=st.sampled_from(sorted(USES) + ["unknown"]),
    by_number=st.booleans(),
    index=st.integers(0, 39),
)
def test_property_an_answer_never_carries_more_than_the_use_allows(
    world: list[str], session_maker: sessionmaker[Session], agency: str, use: str, by_number: bool, index: int
) -> None:
    with session_maker() as s:
        row = person(s, world[index])
    query = (
        {"individual_number": row.individual_number} if by_number else {"resident_code": row.resident_code}
    )
    answer = ask(session_maker, agency, use, query)
    registered = any(a["code"] == agency and use in a["uses"] for a in DATA["agencies"])
    may_number = use in USES and "individual_number" in USES[use]["items"]
    if not registered or (by_number and not may_number):
        assert answer.outcome == "refused" and answer.data == {} and answer.items == []
    else:
        assert answer.outcome == "provided"
        allowed = {c for item in USES[use]["items"] for c in ITEM_COLUMNS[item]}
        assert set(answer.data) <= allowed and answer.items == USES[use]["items"]


# --- bulk files ------------------------------------------------------------------------------------


def test_a_bulk_file_with_bad_lines_gets_an_error_per_line_and_answers_the_rest(
    world: list[str], session_maker: sessionmaker[Session], s: Session
) -> None:
    number = person(s, world[1]).individual_number
    lines = [
        "\ufeffresident_code,individual_number\r\n".encode(),
        f"{world[0]},\r\n".encode(),  # 0 ok
        f",{number}\n".encode(),  # 1 ok, by number
        b"\xff\xfe\n",  # 2 not UTF-8
        f"{world[0]},\n".encode(),  # 3 duplicate of 0
        b"12345678906,\n",  # 4 bad check digit
        b"\n",  # 5 empty
        f"{world[2]},{number},extra\n".encode(),  # 6 too many fields
        f"{world[2]},{number}\n".encode(),  # 7 two forms
        "１２３４５６７８９０３,\n".encode(),  # 8 full-width digits: valid, not in the copy
    ]
    with session_maker.begin() as tx:
        job_id = network.create_bulk_job(tx, "nenkin", "pension_status_check")
    answers = list(network.provide_bulk(session_maker, job_id, network.read_bulk_csv(lines), chunk_size=4))
    got = [(a.row, a.outcome, a.field, a.rule) for a in answers]
    assert got == [
        (0, "provided", None, None),
        (1, "provided", None, None),
        (2, "invalid", "rows[2]", "utf8"),
        (3, "invalid", "rows[3]", "duplicate_row"),
        (4, "invalid", "rows[4].resident_code", "check_digit"),
        (5, "invalid", "rows[5]", "empty"),
        (6, "invalid", "rows[6]", "columns"),
        (7, "invalid", "rows[7].query", "one_form"),
        (8, "not_found", None, None),
    ]
    assert answers[1].data["resident_code"] == world[1]
    assert all(a.data == {} for a in answers[2:])
    s.expire_all()
    assert s.scalar(select(func.count()).select_from(Provision).where(Provision.job_id == job_id)) == 9


@pytest.mark.parametrize(
    ("lines", "declared", "field", "rule"),
    [
        ([b"resident_code\n"], 10 * 1024**3, "file", "too_large"),  # a 10 GB claim, refused unread
        ([b"resident_code,honseki\n"], None, "header", "columns"),
        ([b"resident_code,resident_code\n"], None, "header", "columns"),
        ([b"\xff\xferesident_code\n"], None, "header", "utf8"),
        ([], None, "header", "columns"),
    ],
)
def test_a_bulk_file_that_cannot_be_read_is_refused_before_anything_is_provided(
    world: list[str],
    session_maker: sessionmaker[Session],
    s: Session,
    lines: list[bytes],
    declared: int | None,
    field: str,
    rule: str,
) -> None:
    with session_maker.begin() as tx:
        job_id = network.create_bulk_job(tx, "nenkin", "pension_status_check")
    before = counts(s)
    rows = network.read_bulk_csv([*lines, f"{world[0]}\n".encode()], declared_size=declared)
    with pytest.raises(NetworkError) as caught:
        list(network.provide_bulk(session_maker, job_id, rows))
    assert (caught.value.field, caught.value.rule) == (field, rule)
    assert counts(s) == before


def test_a_bulk_file_growing_past_the_limit_stops_there(
    world: list[str], session_maker: sessionmaker[Session], s: Session
) -> None:
    lines = [b"resident_code\n", *(f"{c}\n".encode() for c in world[:20])]
    with session_maker.begin() as tx:
        job_id = network.create_bulk_job(tx, "nenkin", "pension_status_check")
    received = []
    with pytest.raises(NetworkError, match="too_large"):
        for answer in network.provide_bulk(
            session_maker, job_id, network.read_bulk_csv(lines, max_bytes=14 + 12 * 10), chunk_size=5
        ):
            received.append(answer.row)
    # Two whole chunks were answered and logged; the cursor says where a smaller file may go on.
    assert received == list(range(10))
    s.expire_all()
    job = s.get(BulkJob, job_id)
    assert job is not None and job.next_row == 10 and job.finished_at is None
