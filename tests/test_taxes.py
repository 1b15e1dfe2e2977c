"""Tax data (所得・課税): validation, versions on correction, audit, the synthetic generator."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from kiban.core import audit
from kiban.core.identifiers import ResidentCodeGenerator
from kiban.register.models import Household, Resident, kana_search_key, name_search_key
from kiban.register.taxes import (
    AssessmentInput,
    TaxAssessment,
    TaxError,
    record_tax_assessment,
    record_tax_assessments,
    synthetic_assessments,
    tax_assessment,
    tax_history,
)
from kiban.register.taxes import service as taxes

TOKYO = "131016"
SHINJUKU = "131041"
AS_OF = date(2026, 11, 25)  # fiscal year 2026 (令和8年度)


@dataclass(frozen=True)
class Clerk:
    username: str
    role: str = "clerk"
    municipality_code: str | None = TOKYO


CLERK = Clerk("clerk-chiyoda")
OTHER_CLERK = Clerk("clerk-shinjuku", municipality_code=SHINJUKU)

_codes = ResidentCodeGenerator(random.Random(7))


def add_resident(
    session: Session, birth_date: date, *, municipality: str = TOKYO, status: str = "active"
) -> str:
    household = Household(
        municipality_code=municipality,
        prefecture="東京都",
        municipality="千代田区",
        town="永田町一丁目",
        banchi="7",
    )
    session.add(household)
    session.flush()
    code = _codes.generate()
    session.add(
        Resident(
            municipality_code=municipality,
            household_id=household.id,
            resident_code=code,
            family_name="納税",
            given_name="一郎",
            family_name_kana="ノウゼイ",
            given_name_kana="イチロウ",
            name_search_key=name_search_key("納税", "一郎"),
            kana_search_key=kana_search_key("ノウゼイ", "イチロウ"),
            birth_date=birth_date,
            sex=1,
            relationship="世帯主",
            prefecture="東京都",
            municipality="千代田区",
            town="永田町一丁目",
            banchi="7",
            address_since=birth_date,
            resident_since=birth_date,
            status=status,
            removed_reason="転出" if status == "removed" else None,
            removed_on=date(2025, 6, 1) if status == "removed" else None,
        )
    )
    session.flush()
    return code


def snapshot(factory: sessionmaker[Session]) -> dict[str, list[tuple[str, ...]]]:
    with factory() as s:
        return {
            table: sorted(tuple(map(str, row)) for row in s.execute(text(f"SELECT * FROM {table}")))
            for table in ("tax_assessments", "audit_log", "audit_head")
        }


def refused(factory: sessionmaker[Session], call: Callable[[Session], object], field: str, rule: str) -> None:
    before = snapshot(factory)
    with factory() as s:
        with pytest.raises(TaxError) as info:
            call(s)
        s.commit()  # anything the refused call left in the session would be written now
    assert (info.value.field, info.value.rule) == (field, rule), info.value
    assert info.value.message
    assert snapshot(factory) == before


@pytest.fixture
def person(session_maker: sessionmaker[Session]) -> str:
    with session_maker.begin() as s:
        return add_resident(s, date(1975, 4, 2))


def record(factory: sessionmaker[Session], code: str, year: int = 2025, **amounts: Any) -> TaxAssessment:
    figures: dict[str, Any] = {"taxable_income": 3_000_000, "income_total": 4_000_000, "tax_amount": 305_000}
    figures.update(amounts)
    with factory.begin() as s:
        return record_tax_assessment(s, CLERK, code, year, **figures, today=AS_OF)


def test_an_assessment_is_recorded_read_back_and_audited(
    session_maker: sessionmaker[Session], person: str
) -> None:
    row = record(session_maker, person, notes="  給与所得  ")
    assert (row.version, row.notes, row.municipality_code) == (1, "給与所得", TOKYO)
    with session_maker.begin() as s:
        found = tax_assessment(s, person, 2025, actor=CLERK)
        assert found is not None and (found.taxable_income, found.income_total, found.tax_amount) == (
            3_000_000,
            4_000_000,
            305_000,
        )
        assert tax_assessment(s, person, 2024) is None
    with session_maker() as s:
        entries = [(e.action, e.purpose, e.actor, e.detail) for e in audit.history(s, person)]
    assert entries == [
        ("create", "個人住民税の課税情報の登録", CLERK.username, {"fiscal_year": 2025, "version": 1}),
        ("read", "所得・課税証明書の交付", CLERK.username, {"fiscal_year": 2025}),
        ("read", "所得・課税証明書の交付", taxes.SYSTEM_ACTOR, {"fiscal_year": 2024}),
    ]


def test_a_second_record_of_a_year_is_a_new_version(
    session_maker: sessionmaker[Session], person: str
) -> None:
    first = record(session_maker, person)
    second = record(session_maker, person, taxable_income=2_900_000, tax_amount=295_000, notes="更正")
    assert (first.version, second.version) == (1, 2)
    with session_maker.begin() as s:
        current = tax_assessment(s, person, 2025)
        assert current is not None and (current.id, current.tax_amount) == (second.id, 295_000)
        versions = [(r.fiscal_year, r.version, r.tax_amount) for r in tax_history(s, person, actor=CLERK)]
    assert versions == [(2025, 1, 305_000), (2025, 2, 295_000)]
    with session_maker() as s:
        assert [e.purpose for e in audit.history(s, person)][:2] == [
            "個人住民税の課税情報の登録",
            "個人住民税の課税情報の更正",
        ]


@pytest.mark.parametrize(
    ("overrides", "field", "rule"),
    [
        ({"taxable_income": -1}, "taxable_income", "non_negative"),
        ({"income_total": -5}, "income_total", "non_negative"),
        ({"tax_amount": -100}, "tax_amount", "non_negative"),
        ({"tax_amount": 4_000_001}, "tax_amount", "exceeds_income"),
        ({"taxable_income": 4_000_001}, "taxable_income", "exceeds_income_total"),
        ({"tax_amount": 305_000.0}, "tax_amount", "integer"),
        ({"income_total": True}, "income_total", "integer"),
        ({"income_total": "4000000"}, "income_total", "integer"),
        ({"income_total": 10**13, "taxable_income": 10**12}, "income_total", "too_large"),
        ({"year": 2100}, "fiscal_year", "range"),
        ({"year": 2028}, "fiscal_year", "range"),
        ({"year": 1949}, "fiscal_year", "range"),
        ({"year": 2025.0}, "fiscal_year", "integer"),
        ({"year": 1975}, "fiscal_year", "before_birth"),
        ({"notes": "a\x00b"}, "notes", "control_characters"),
        ({"notes": "長" * 201}, "notes", "length"),
    ],
)
def test_bad_figures_are_refused_and_change_nothing(
    session_maker: sessionmaker[Session], person: str, overrides: dict[str, Any], field: str, rule: str
) -> None:
    record(session_maker, person)  # an existing version must survive the refused correction
    figures: dict[str, Any] = {"taxable_income": 3_000_000, "income_total": 4_000_000, "tax_amount": 305_000}
    year = overrides.pop("year", 2025)
    figures.update(overrides)
    refused(
        session_maker,
        lambda s: record_tax_assessment(s, CLERK, person, year, **figures, today=AS_OF),
        field,
        rule,
    )


def test_the_fiscal_year_range_follows_today(session_maker: sessionmaker[Session], person: str) -> None:
    # Next fiscal year is the latest allowed (assessments are prepared before April).
    assert record(session_maker, person, 2027).fiscal_year == 2027
    assert taxes.current_fiscal_year(date(2027, 3, 31)) == 2026
    assert taxes.current_fiscal_year(date(2027, 4, 1)) == 2027
    refused(
        session_maker,
        lambda s: record_tax_assessment(s, CLERK, person, 2027, 0, 0, 0, today=date(2025, 12, 1)),
        "fiscal_year",
        "range",
    )


def test_only_the_clerk_of_the_municipality_records_or_reads(
    session_maker: sessionmaker[Session], person: str
) -> None:
    record(session_maker, person)
    refused(
        session_maker,
        lambda s: record_tax_assessment(s, OTHER_CLERK, person, 2025, 0, 0, 0, today=AS_OF),
        "resident_code",
        "not_in_municipality",
    )
    refused(
        session_maker,
        lambda s: tax_assessment(s, person, 2025, actor=OTHER_CLERK),
        "resident_code",
        "not_in_municipality",
    )
    agency = Clerk("nenkin", role="agency", municipality_code=None)
    refused(
        session_maker,
        lambda s: record_tax_assessment(s, agency, person, 2025, 0, 0, 0, today=AS_OF),
        "actor",
        "role",
    )
    refused(session_maker, lambda s: tax_assessment(s, "1234", 2025), "resident_code", "length")


def test_a_person_who_left_can_still_be_assessed_for_a_year_they_lived_here(
    session_maker: sessionmaker[Session],
) -> None:
    with session_maker.begin() as s:
        left = add_resident(s, date(1960, 1, 1), status="removed")
    assert record(session_maker, left, 2025).version == 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    total=st.integers(-10, 10**6),
    taxable=st.integers(-10, 10**6),
    tax=st.integers(-10, 10**6),
    year=st.integers(1940, 2040),
)
def test_any_figures_are_either_stored_consistently_or_refused_without_a_trace(
    session_maker: sessionmaker[Session], person: str, total: int, taxable: int, tax: int, year: int
) -> None:
    before = snapshot(session_maker)
    with session_maker() as s:
        try:
            row = record_tax_assessment(s, CLERK, person, year, taxable, total, tax, today=AS_OF)
        except TaxError as exc:
            s.commit()
            assert snapshot(session_maker) == before
            assert exc.field in {"taxable_income", "income_total", "tax_amount", "fiscal_year"}
            return
        s.commit()
    assert 0 <= row.taxable_income <= row.income_total and 0 <= row.tax_amount <= row.income_total
    assert 1950 <= row.fiscal_year <= 2027
    with session_maker() as s:
        versions = s.scalars(
            select(TaxAssessment.version)
            .where(TaxAssessment.resident_code == person, TaxAssessment.fiscal_year == year)
            .order_by(TaxAssessment.version)
        ).all()
    assert versions == list(range(1, len(versions) + 1)) and versions[-1] == row.version


# --- synthetic generator ------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    resident_code: str
    birth_date: date


def _people(n: int) -> list[Person]:
    rng = random.Random(5)
    codes = ResidentCodeGenerator(rng)
    return [
        Person(codes.generate(), date(2025, 1, 1).replace(year=2025 - rng.randrange(0, 100)))
        for _ in range(n)
    ]


def test_the_generator_is_deterministic_and_order_free() -> None:
    people = _people(400)
    first = synthetic_assessments(people, 2025, seed=42)
    assert first == synthetic_assessments(people, 2025, seed=42)
    assert sorted(first, key=lambda a: a.resident_code) == sorted(
        synthetic_assessments(list(reversed(people)), 2025, seed=42), key=lambda a: a.resident_code
    )
    assert first != synthetic_assessments(people, 2025, seed=43)


def test_generated_figures_are_plausible() -> None:
    people = _people(2000)
    born = {p.resident_code: p.birth_date for p in people}
    made = synthetic_assessments(people, 2025, seed=1)
    assert len(made) == len([p for p in people if p.birth_date <= date(2024, 12, 31)])
    for a in made:
        age = 2024 - born[a.resident_code].year
        assert 0 <= a.taxable_income <= a.income_total and 0 <= a.tax_amount <= a.income_total
        if age < 15:
            assert (a.income_total, a.taxable_income, a.tax_amount) == (0, 0, 0)
        if a.taxable_income:
            income_part = a.tax_amount - taxes.PER_CAPITA_LEVY
            assert 0.099 * a.taxable_income <= income_part <= 0.1 * a.taxable_income
    working = [
        a.income_total for a in made if 30 <= 2024 - born[a.resident_code].year < 60 and a.income_total
    ]
    working.sort()
    assert 2_000_000 < working[len(working) // 2] < 5_000_000
    assert sum(1 for a in made if a.tax_amount) > len(made) // 3


def test_generated_assessments_are_accepted_by_the_service(session_maker: sessionmaker[Session]) -> None:
    with session_maker.begin() as s:
        codes = [add_resident(s, date(1940 + 2 * i, 3, 3)) for i in range(40)]
        people = s.scalars(select(Resident).where(Resident.resident_code.in_(codes))).all()
        for a in synthetic_assessments(people, 2025, seed=9):
            record_tax_assessment(
                s,
                CLERK,
                a.resident_code,
                a.fiscal_year,
                a.taxable_income,
                a.income_total,
                a.tax_amount,
                a.notes,
                today=AS_OF,
            )
    with session_maker() as s:
        assert s.scalar(select(TaxAssessment.id).limit(1)) is not None
        count = len(s.scalars(select(TaxAssessment.id)).all())
    assert count == 40


def test_a_batch_is_recorded_with_versions_and_one_audit_entry_each(
    session_maker: sessionmaker[Session],
) -> None:
    with session_maker.begin() as s:
        codes = [add_resident(s, date(1950 + i, 6, 1)) for i in range(30)]
        people = s.scalars(select(Resident).where(Resident.resident_code.in_(codes))).all()
        made = synthetic_assessments(people, 2025, seed=3)
        record_tax_assessment(s, CLERK, codes[0], 2025, 0, 0, 0, today=AS_OF)  # an earlier version
        correction = AssessmentInput(codes[1], 2025, 0, 100_000, 0, "更正")
        assert record_tax_assessments(s, CLERK, [*made, correction], today=AS_OF) == 31
    with session_maker.begin() as s:
        first = tax_history(s, codes[0])
        assert [r.version for r in first] == [1, 2] and first[1].tax_amount == made[0].tax_amount
        assert [(r.version, r.income_total) for r in tax_history(s, codes[1])][-1] == (2, 100_000)
        assert [e.purpose for e in audit.history(s, codes[1])][:2] == [
            "個人住民税の課税情報の登録",
            "個人住民税の課税情報の更正",
        ]
        assert audit.verify(s).ok


@pytest.mark.parametrize(
    ("bad", "field", "rule"),
    [
        ({"tax_amount": -1}, "items[2].tax_amount", "non_negative"),
        ({"fiscal_year": 2100}, "items[2].fiscal_year", "range"),
        ({"resident_code": "elsewhere"}, "items[2].resident_code", "not_in_municipality"),
    ],
)
def test_one_bad_item_refuses_the_whole_batch(
    session_maker: sessionmaker[Session], bad: dict[str, Any], field: str, rule: str
) -> None:
    with session_maker.begin() as s:
        codes = [add_resident(s, date(1960 + i, 1, 1)) for i in range(4)]
        elsewhere = add_resident(s, date(1960, 1, 1), municipality=SHINJUKU)
    items = [AssessmentInput(c, 2025, 1_000_000, 2_000_000, 105_000) for c in codes]
    if bad.get("resident_code") == "elsewhere":
        bad = {"resident_code": elsewhere}
    items[2] = AssessmentInput(**{**items[2].__dict__, **bad})
    refused(session_maker, lambda s: record_tax_assessments(s, CLERK, items, today=AS_OF), field, rule)
