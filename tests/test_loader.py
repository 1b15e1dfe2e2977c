"""Bulk loader: round trip on SQLite and PostgreSQL, batches are atomic, names kept as recorded."""

from __future__ import annotations

import itertools
import re
from datetime import date

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from kiban.register.loader import LoadError, load_population
from kiban.register.models import Household as HouseholdRow
from kiban.register.models import Resident, Sex, name_search_key
from kiban.register.population import Household, HouseholdKind, Person, generate_population

AS_OF = date(2025, 4, 1)


def _codes(start: int = 10_000_000_000) -> itertools.count[int]:
    return itertools.count(start)


def _count(session: Session, model: type) -> int:
    return session.execute(select(func.count()).select_from(model)).scalar_one()


def test_round_trip(engine: Engine, session_maker: sessionmaker[Session]) -> None:
    households = list(generate_population(["215015", "131016"], 1_500, seed=11, as_of=AS_OF))
    counter = _codes()
    issued: list[str] = []

    def next_code() -> str:
        issued.append(str(next(counter)))
        return issued[-1]

    seen: list[int] = []
    stats = load_population(
        engine, households, next_code, lambda code: "9" + code, batch_size=400, progress=seen.append
    )
    assert (stats.households, stats.residents) == (len(households), 1_500)
    assert stats.batches == len(seen) >= 3
    assert seen == sorted(seen) and seen[-1] == 1_500
    with session_maker() as s:
        assert _count(s, Resident) == 1_500
        assert _count(s, HouseholdRow) == len(households)
        rows = {r.resident_code: r for r in s.scalars(select(Resident))}
        heads = {h.id: h for h in s.scalars(select(HouseholdRow))}
    people = [(h, p) for h in households for p in h.members]
    assert set(rows) == set(issued)
    half_width = re.compile("[\uff61-\uff9f]")
    assert not any(half_width.search(r.family_name_kana + r.given_name_kana) for r in rows.values())
    for (hh, person), code in list(zip(people, issued, strict=True))[::37]:
        row = rows[code]
        for field in (
            "family_name",
            "given_name",
            "family_name_kana",
            "given_name_kana",
            "birth_date",
            "relationship",
            "address_since",
            "resident_since",
            "previous_address",
            "honseki",
            "hittousha",
            "nationality",
            "residence_status",
            "period_of_stay_end",
            "romaji_name",
            "alias",
            "elector",
        ):
            assert getattr(row, field) == getattr(person, field), field
        assert row.sex == int(person.sex)
        assert (row.town, row.banchi, row.katagaki, row.municipality_code) == (
            hh.town,
            hh.banchi,
            hh.katagaki,
            hh.municipality_code,
        )
        assert row.individual_number == "9" + code
        assert row.status == "active" and row.version == 1
        assert row.created_at.tzinfo is not None
        household = heads[row.household_id]
        head = rows[issued[people.index((hh, hh.members[0]))]]
        assert household.head_resident_id == head.id


def test_without_individual_numbers(engine: Engine, session_maker: sessionmaker[Session]) -> None:
    households = list(generate_population(["212016"], 50, seed=2, as_of=AS_OF))
    load_population(engine, households, (str(c) for c in _codes()))
    with session_maker() as s:
        assert s.scalar(select(func.count()).where(Resident.individual_number.is_not(None))) == 0


def test_running_out_of_codes_keeps_only_whole_batches(
    engine: Engine, session_maker: sessionmaker[Session]
) -> None:
    households = list(generate_population(["212016"], 300, seed=4, as_of=AS_OF))
    codes = [str(c) for c in itertools.islice(_codes(), 250)]
    with pytest.raises(LoadError) as info:
        load_population(engine, households, codes, batch_size=100)
    assert "resident_code_source" in str(info.value)
    with session_maker() as s:
        loaded = _count(s, Resident)
        assert loaded == info.value.loaded and 100 <= loaded < 250
        # Each household is complete: no batch was half written.
        assert s.scalar(select(func.count()).where(HouseholdRow.head_resident_id.is_(None))) == 0
        members = s.scalar(select(func.count()).select_from(Resident))
        assert members == loaded


def test_duplicate_resident_code_rolls_back_the_batch(
    engine: Engine, session_maker: sessionmaker[Session]
) -> None:
    households = list(generate_population(["212016"], 40, seed=5, as_of=AS_OF))
    with pytest.raises(LoadError):
        load_population(engine, households, lambda: "12345678901")
    with session_maker() as s:
        assert _count(s, Resident) == 0
        assert _count(s, HouseholdRow) == 0


def _one_person_household(person: Person) -> Household:
    return Household(
        municipality_code="215015",
        kind=HouseholdKind.SINGLE,
        postal_code="5050075",
        prefecture="岐阜県",
        municipality="加茂郡坂祝町",
        town="酒倉",
        banchi="1番地",
        katagaki=None,
        members=[person],
    )


def test_names_are_kept_as_recorded_and_kana_made_full_width(
    engine: Engine, session_maker: sessionmaker[Session]
) -> None:
    # U+FA10 (a CJK compatibility ideograph that NFC would replace) and an IVS sequence.
    family = "\ufa10田"
    given = "葛\U000e0100子"
    person = Person(
        family_name=family,
        given_name=given,
        family_name_kana="ﾂｶﾀﾞ",  # half-width input
        given_name_kana="カツコ",
        birth_date=date(1950, 1, 1),
        sex=Sex.FEMALE,
        relationship="世帯主",
        address_since=date(1990, 1, 1),
        resident_since=date(1990, 1, 1),
    )
    load_population(engine, [_one_person_household(person)], ["24727059608"])
    with session_maker() as s:
        row = s.scalars(select(Resident)).one()
    assert row.family_name == family and row.given_name == given
    assert row.family_name_kana == "ツカダ"
    assert row.kana_search_key == "ツカダカツコ"
    assert row.name_search_key == name_search_key(family, given) == "塚田葛子"


def test_bad_batch_size_is_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        load_population(engine, [], [], batch_size=0)
