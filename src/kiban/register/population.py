"""Synthetic population (合成人口): households of plausible, entirely fictional residents.

``generate_population(codes, n, seed, as_of)`` yields :class:`Household` objects whose members
(:class:`Person`) carry every 住民票 item except the identifiers (住民票コード, 個人番号), which the
loader takes from the caller. The same seed and arguments always give the same output.

Sources (all in ``kiban/register/data`` or cited here):
- ages: 5-year bands of the 総務省 人口推計 2024-10-01 (``age_pyramid_2024.csv``);
- household types: 令和2年国勢調査 一般世帯の家族類型 — 単独 38.0%, 夫婦のみ 20.1%, 夫婦と子 25.0%,
  ひとり親と子 9.0%, その他 (三世代等) 7.9% (rounded);
- names: the ``gimei`` package (kanji with readings, male and female given names);
- addresses: real 町字 of the municipality from postal data (:mod:`kiban.core.master`),
  with synthetic 番地 and 方書;
- foreign residents: ``foreign_residents.yml`` (nationalities, 在留資格, names).

How the age pyramid is met: each household type places its members relative to one
"anchor" age (the single person, the husband of a couple, the eldest child…); anchors are drawn
from a type-specific base distribution multiplied by a feedback factor that favours age bands
still short of their target share. The marginal therefore converges on the pyramid while ages
within a household stay consistent (parents 20–45 years older than their children).
"""

from __future__ import annotations

import bisect
import csv
import enum
import itertools
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import gimei
import yaml

from kiban.core import master
from kiban.register.models import Sex

MAX_AGE = 104
FOREIGN_SHARE = 0.027
ACCEPTANCE_POWER = 4.0
ANCHOR_POWER = 12.0  # of persons; 住民基本台帳 2025-01-01: 2.9% (see foreign_residents.yml)


class HouseholdKind(enum.StrEnum):
    """家族類型 (census family type) of a generated household."""

    SINGLE = "single"  # 単独世帯 (elderly alone included: a single person aged 65+)
    COUPLE = "couple"  # 夫婦のみ
    COUPLE_WITH_CHILDREN = "couple_with_children"  # 夫婦と子
    SINGLE_PARENT = "single_parent"  # ひとり親と子
    THREE_GENERATION = "three_generation"  # 三世代等 (その他の世帯)


# 令和2年国勢調査: shares of 一般世帯 by family type (rounded; その他 folded into three-generation).
HOUSEHOLD_SHARES: dict[HouseholdKind, float] = {
    HouseholdKind.SINGLE: 0.380,
    HouseholdKind.COUPLE: 0.201,
    HouseholdKind.COUPLE_WITH_CHILDREN: 0.250,
    HouseholdKind.SINGLE_PARENT: 0.090,
    HouseholdKind.THREE_GENERATION: 0.079,
}


@dataclass(slots=True)
class Person:
    """One synthetic resident: the 住民票 items, without 住民票コード and 個人番号."""

    family_name: str
    given_name: str
    family_name_kana: str
    given_name_kana: str
    birth_date: date
    sex: Sex
    relationship: str  # 続柄 to the head (世帯主)
    address_since: date = date.min
    resident_since: date = date.min
    previous_address: str | None = None  # 転入前住所
    pre_move_address: str | None = None  # 異動前住所
    old_family_name: str | None = None  # 旧氏
    old_family_name_kana: str | None = None
    alias: str | None = None  # 通称
    alias_kana: str | None = None
    romaji_name: str | None = None
    honseki: str | None = None
    hittousha: str | None = None
    nationality: str | None = None
    residence_status: str | None = None
    period_of_stay_end: date | None = None
    residence_card_number: str | None = None
    foreign_resident_since: date | None = None
    elector: bool = False
    national_health_insurance: bool = False
    national_pension: bool = False

    def age_on(self, day: date) -> int:
        return (
            day.year
            - self.birth_date.year
            - ((day.month, day.day) < (self.birth_date.month, self.birth_date.day))
        )

    @property
    def is_foreign(self) -> bool:
        return self.nationality is not None


@dataclass(slots=True)
class Household:
    """One synthetic household (世帯); ``members[0]`` is the head (世帯主)."""

    municipality_code: str
    kind: HouseholdKind
    postal_code: str
    prefecture: str
    municipality: str
    town: str
    banchi: str
    katagaki: str | None
    members: list[Person] = field(default_factory=list)

    @property
    def head(self) -> Person:
        return self.members[0]


# ---------------------------------------------------------------------------------------------
# Data tables


@dataclass(frozen=True)
class AgeBand:
    age_from: int
    age_to: int
    thousands: int
    male_share: float


def _data_path(name: str) -> Path:
    return Path(str(resources.files("kiban.register") / "data" / name))


@cache
def age_pyramid() -> tuple[AgeBand, ...]:
    """The 5-year age bands of Japan's population (人口推計 2024-10-01)."""
    with _data_path("age_pyramid_2024.csv").open(encoding="utf-8") as fh:
        rows = [r for r in csv.reader(line for line in fh if not line.startswith("#")) if r]
    return tuple(AgeBand(int(a), int(b), int(t), float(m)) for a, b, t, m in rows)


_BAND_OF = tuple(min(a // 5, 20) for a in range(MAX_AGE + 1))


def band_of(age: int) -> int:
    """Index of the 5-year band of ``age`` in :func:`age_pyramid` (100+ is the last)."""
    return _BAND_OF[age] if 0 <= age <= MAX_AGE else min(max(age, 0) // 5, 20)


@cache
def japanese_names() -> dict[str, list[tuple[str, str]]]:
    """gimei's names as (kanji, katakana): ``family``, ``male``, ``female``, and older-style subsets."""
    path = Path(gimei.__file__).parent / "data" / "names.yml"
    with path.open(encoding="utf-8") as fh:
        raw = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    male = [(k, kata) for k, _hira, kata in raw["first_name"]["male"]]
    female = [(k, kata) for k, _hira, kata in raw["first_name"]["female"]]
    return {
        "family": [(k, kata) for k, _hira, kata in raw["last_name"]],
        "male": male,
        "female": female,
        # Names typical of people born before ~1965 (…夫, …男, …子).
        "male_old": [n for n in male if n[0][-1] in "夫男雄郎一治三蔵吉司"],
        "female_old": [n for n in female if n[0].endswith("子")],
    }


@cache
def foreign_tables() -> dict[str, Any]:
    with _data_path("foreign_residents.yml").open(encoding="utf-8") as fh:
        data: dict[str, Any] = yaml.safe_load(fh)
    for entry in data["nationalities"].values():
        if "same_names_as" in entry:
            other = data["nationalities"][entry["same_names_as"]]
            for key in ("family", "male", "female"):
                entry[key] = other[key]
    return data


# Statuses whose holders mostly live alone (trainees, students) vs. those who bring family.
_SINGLE_STATUSES = {"技能実習", "特定技能", "留学", "特定活動"}
_WORK_STATUSES = {"技術・人文知識・国際業務", "技能", "経営・管理", "教育"}
# Where the wife keeps her surname on marriage.
_SEPARATE_SURNAMES = {"中国", "韓国", "朝鮮", "台湾", "ベトナム"}

_APARTMENTS = ("コーポ", "メゾン", "ハイツ", "レジデンス", "パレス", "グランシャトー", "サンハイム")
_APARTMENT_WORDS = ("若葉", "桜", "緑", "ひかり", "栄", "富士見", "旭", "翠", "明星", "朝日")


def _years_before(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February
        return day.replace(year=day.year - years, day=28)


# ---------------------------------------------------------------------------------------------
# The generator


class _Generator:
    def __init__(self, seed: int, as_of: date, foreign_share: float) -> None:
        self.rng = random.Random(seed)
        self.as_of = as_of
        self.foreign_share = foreign_share
        self.names = japanese_names()
        self.foreign = foreign_tables()
        bands = age_pyramid()
        total = sum(b.thousands for b in bands)
        self.target = [b.thousands / total for b in bands]
        self.male_share = [b.male_share for b in bands]
        self.counts = [0] * len(bands)
        self.persons = 0
        self.foreign_persons = 0
        self.factor = [1.0] * len(bands)
        self.ratio = [1.0] * len(bands)
        self._cum_cache: dict[str, list[float]] = {}
        self._next_refresh = 0
        nat = self.foreign["nationalities"]
        self.nationalities = list(nat)
        self.nat_cum = list(itertools.accumulate(float(nat[n]["share"]) for n in self.nationalities))
        self.kind_list = list(HOUSEHOLD_SHARES)
        self.kind_cum = list(itertools.accumulate(HOUSEHOLD_SHARES.values()))
        bodies = [m for m in master.municipalities() if m.kind is not master.MunicipalityKind.DESIGNATED_CITY]
        self.all_bodies = bodies
        self._towns: dict[str, tuple[master.Town, ...]] = {}

    def _towns_of(self, code: str) -> tuple[master.Town, ...]:
        found = self._towns.get(code)
        if found is None:
            found = self._towns[code] = tuple(master.towns(code))
        return found

    # -- age machinery -------------------------------------------------------------------------

    def _refresh(self) -> None:
        # Feedback: a band below its target share gets drawn more often, above it less.
        w = 2000.0  # pseudo-count: no correction while the sample is small
        n = self.persons + w
        for b, t in enumerate(self.target):
            realised = (self.counts[b] + t * w) / n
            self.ratio[b] = t / realised
            self.factor[b] = min(50.0, max(0.02, (t / realised) ** ANCHOR_POWER))
        self._cum_cache.clear()
        self._next_refresh = self.persons + 200

    def _age(self, role: str, lo: int, hi: int) -> int:
        """An anchor age in [lo, hi] for ``role``, from its base distribution times the feedback."""
        if self.persons >= self._next_refresh:
            self._refresh()
        key = f"{role}:{lo}:{hi}"
        cum = self._cum_cache.get(key)
        if cum is None:
            base = _BASE_RATES[role]
            weights = [
                self.target[band_of(a)] / 5 * base(a) * self.factor[band_of(a)] for a in range(lo, hi + 1)
            ]
            cum = list(itertools.accumulate(weights))
            self._cum_cache[key] = cum
        return lo + bisect.bisect_right(cum, self.rng.random() * cum[-1])

    def _birth_date(self, age: int) -> date:
        latest = _years_before(self.as_of, age)
        earliest = _years_before(self.as_of, age + 1) + timedelta(days=1)
        return earliest + timedelta(days=self.rng.randrange((latest - earliest).days + 1))

    def _sex_for_age(self, age: int) -> Sex:
        return Sex.MALE if self.rng.random() < self.male_share[band_of(age)] else Sex.FEMALE

    def _gap(self, mean: float, sd: float, lo: int, hi: int) -> int:
        return max(lo, min(hi, round(self.rng.gauss(mean, sd))))

    # -- names ---------------------------------------------------------------------------------

    def _surname(self) -> tuple[str, str]:
        return self.rng.choice(self.names["family"])

    def _given(self, sex: Sex, age: int) -> tuple[str, str]:
        key = "male" if sex is Sex.MALE else "female"
        if age >= 60 and self.rng.random() < 0.6:
            key += "_old"
        return self.rng.choice(self.names[key])

    def _person(self, surname: tuple[str, str], age: int, sex: Sex, relationship: str) -> Person:
        given = self._given(sex, age)
        return Person(
            family_name=surname[0],
            given_name=given[0],
            family_name_kana=surname[1],
            given_name_kana=given[1],
            birth_date=self._birth_date(age),
            sex=sex,
            relationship=relationship,
        )

    # -- household templates (ages relative to an anchor) -------------------------------------

    def _members(self, kind: HouseholdKind) -> list[tuple[int, Sex, str, str]] | None:
        """(age, sex, relationship, surname group) per member, head first; None to retry."""
        rng = self.rng
        out: list[tuple[int, Sex, str, str]] = []
        if kind is HouseholdKind.SINGLE:
            age = self._age("single", 18, MAX_AGE)
            out.append((age, self._sex_for_age(age), "世帯主", "a"))
        elif kind is HouseholdKind.COUPLE:
            husband = self._age("couple", 22, MAX_AGE)
            wife = husband - self._gap(2, 3, -6, 12)
            out += [(husband, Sex.MALE, "世帯主", "a"), (wife, Sex.FEMALE, "妻", "a")]
        elif kind in (HouseholdKind.COUPLE_WITH_CHILDREN, HouseholdKind.SINGLE_PARENT):
            couple = kind is HouseholdKind.COUPLE_WITH_CHILDREN
            eldest = self._age("child" if couple else "child_single_parent", 0, 58 if couple else 70)
            mother = eldest + self._gap(30, 4.5, 20, 42)
            father = min(max(mother + self._gap(2, 3, -4, 10), eldest + 20), eldest + 45)
            count = 1 + bisect.bisect_right((0.45, 0.85, 0.98) if couple else (0.65, 0.93), rng.random())
            ages = self._children([mother, father] if couple else [mother], eldest, count)
            if couple:
                out += [(father, Sex.MALE, "世帯主", "a"), (mother, Sex.FEMALE, "妻", "a")]
            elif rng.random() < 0.8:
                out.append((mother, Sex.FEMALE, "世帯主", "a"))
            else:
                out.append((father, Sex.MALE, "世帯主", "a"))
                ages = [a for a in ages if father - a <= 45]
            out += [(a, self._sex_for_age(a), "子", "a") for a in ages]
        else:
            middle = self._age("three_generation", 25, 70)
            wife = middle - self._gap(2, 3, -4, 10)
            wifes_parents = rng.random() < 0.15
            elder_gap = self._gap(31, 4, 22, 42)
            elders: list[tuple[int, Sex]] = []
            roll = rng.random()
            if roll < 0.5:
                elders = [
                    (middle + min(45, elder_gap + self._gap(2, 2, 0, 8)), Sex.MALE),
                    (middle + elder_gap, Sex.FEMALE),
                ]
            elif roll < 0.85:
                elders = [(middle + elder_gap, Sex.FEMALE)]
            else:
                elders = [(middle + elder_gap, Sex.MALE)]
            kid_count = rng.choice((0, 1, 1, 2, 2, 3))
            eldest_kid = max(min(middle, wife) - self._gap(30, 4, 20, 42), max(middle, wife) - 45)
            kids = self._children([middle, wife], eldest_kid, kid_count) if kid_count else []
            group = "b" if wifes_parents else "a"
            if not wifes_parents and elders[0][0] < 78 and rng.random() < 0.4:
                # The grandparent generation heads the household.
                head_age, head_sex = elders[0]
                out.append((head_age, head_sex, "世帯主", "a"))
                if len(elders) > 1:
                    out.append((elders[1][0], Sex.FEMALE, "妻", "a"))
                out.append((middle, Sex.MALE, "子", "a"))
                out.append((wife, Sex.FEMALE, "子の妻", "a"))
                out += [(k, self._sex_for_age(k), "孫", "a") for k in kids]
            else:
                out += [(middle, Sex.MALE, "世帯主", "a"), (wife, Sex.FEMALE, "妻", "a")]
                out += [(k, self._sex_for_age(k), "子", "a") for k in kids]
                prefix = "妻の" if wifes_parents else ""
                for age, sex in elders:
                    out.append((age, sex, prefix + ("父" if sex is Sex.MALE else "母"), group))
        if any(not 0 <= m[0] <= MAX_AGE for m in out) or out[0][0] < 18:
            return None
        return out

    def _children(self, parents: list[int], eldest: int, count: int) -> list[int]:
        """Ages of up to ``count`` siblings, each parent 20–45 years older than every child."""
        ages: list[int] = []
        age = eldest
        while len(ages) < count and age >= 0 and all(20 <= p - age <= 45 for p in parents):
            ages.append(age)
            age -= self.rng.randint(1, 5)
        return ages

    # -- addresses -----------------------------------------------------------------------------

    def _banchi(self, town: master.Town) -> str:
        rng = self.rng
        if town.uses_chome:
            return f"{rng.randint(1, 4)}丁目{rng.randint(1, 30)}番{rng.randint(1, 25)}号"
        if rng.random() < 0.4:
            return f"{rng.randint(1, 2500)}番地{rng.randint(1, 30)}"
        return f"{rng.randint(1, 2500)}番地"

    def _katagaki(self, apartment_share: float) -> str | None:
        rng = self.rng
        if rng.random() >= apartment_share:
            return None
        name = rng.choice(_APARTMENTS) + rng.choice(_APARTMENT_WORDS)
        return f"{name}{rng.randint(1, 8)}0{rng.randint(1, 9)}号室"

    def _elsewhere(self, same: master.Municipality | None = None) -> str:
        """A synthetic address string (転入前住所, 本籍) in ``same`` or a random municipality."""
        body = same or self.rng.choice(self.all_bodies)
        town = self.rng.choice(self._towns_of(body.code))
        number = f"{self.rng.randint(1, 3000)}番地"
        return f"{body.prefecture}{body.address_name}{town.name}{number}"

    # -- foreign residents ---------------------------------------------------------------------

    def _nationality(self) -> str:
        i = bisect.bisect_right(self.nat_cum, self.rng.random() * self.nat_cum[-1])
        return self.nationalities[i]

    def _status(self, nationality: str) -> str:
        mix: dict[str, float] = self.foreign["nationalities"][nationality]["statuses"]
        return self.rng.choices(list(mix), weights=list(mix.values()))[0]

    def _make_foreign(
        self, person: Person, nationality: str, status: str, family: list[str] | None
    ) -> list[str]:
        """Turn ``person`` into a foreign resident; returns the family-name entry used."""
        rng = self.rng
        table = self.foreign["nationalities"][nationality]
        fam: list[str] = family or rng.choice(table["family"])
        given: list[str] = rng.choice(table["male" if person.sex is Sex.MALE else "female"])
        # Names written in Chinese characters are recorded in kanji, the others in Latin letters.
        kanji = len(fam) == 3 and len(given) == 3
        person.family_name = fam[2] if kanji else fam[0]
        person.given_name = given[2] if kanji else given[0]
        person.family_name_kana, person.given_name_kana = fam[1], given[1]
        person.romaji_name = f"{fam[0]} {given[0]}"
        person.nationality = nationality
        person.residence_status = status
        periods: list[int] = self.foreign["statuses"][status]["period_years"]
        if periods:
            years = rng.choice(periods)
            person.period_of_stay_end = self.as_of + timedelta(days=rng.randint(1, 365 * years))
        letters = "ABCDEFGHJKLMNPRSTUVWXYZ"
        person.residence_card_number = (
            "".join(rng.choice(letters) for _ in range(2))
            + f"{rng.randrange(10**8):08d}"
            + "".join(rng.choice(letters) for _ in range(2))
        )
        if status == "特別永住者" and rng.random() < 0.5:
            surname = self._surname()
            alias_given = self._given(person.sex, person.age_on(self.as_of))
            person.alias = f"{surname[0]}\u3000{alias_given[0]}"
            person.alias_kana = f"{surname[1]}\u3000{alias_given[1]}"
        return fam

    # -- households ----------------------------------------------------------------------------

    def household(self, body: master.Municipality, max_size: int) -> Household:
        rng = self.rng
        foreign_wanted = self.persons > 0 and self.foreign_persons / self.persons < self.foreign_share
        foreign = rng.random() < (0.06 if foreign_wanted else 0.005)
        nationality = status = None
        kind = self.kind_list[bisect.bisect_right(self.kind_cum, rng.random() * self.kind_cum[-1])]
        if foreign:
            nationality = self._nationality()
            status = self._status(nationality)
            if status in _SINGLE_STATUSES:
                kind = HouseholdKind.SINGLE
            elif status in _WORK_STATUSES or status == "家族滞在":
                kind = HouseholdKind.SINGLE if rng.random() < 0.6 else HouseholdKind.COUPLE_WITH_CHILDREN
            elif status == "日本人の配偶者等":
                kind = rng.choice((HouseholdKind.COUPLE, HouseholdKind.COUPLE_WITH_CHILDREN))
            elif kind is HouseholdKind.THREE_GENERATION:
                kind = HouseholdKind.COUPLE_WITH_CHILDREN
        for _ in range(50):
            spec = self._members(kind)
            if spec is None or len(spec) > max_size:
                continue
            # Ages that are not anchors (a child's parents…) are steered by accepting the
            # household with a probability that favours bands still short of their target.
            ratio = 1.0
            for age, *_rest in spec:
                ratio *= self.ratio[band_of(age)]
            if rng.random() < ratio ** (ACCEPTANCE_POWER / len(spec)):
                break
        else:
            kind, spec = HouseholdKind.SINGLE, None
            while spec is None:
                spec = self._members(kind)
        if foreign and kind is HouseholdKind.SINGLE and status in _SINGLE_STATUSES | _WORK_STATUSES:
            # Trainees, students and workers are young adults, whatever the anchor drew.
            age = rng.randint(19, 34) if status in _SINGLE_STATUSES else rng.randint(23, 50)
            spec = [(age, Sex.MALE if rng.random() < 0.55 else Sex.FEMALE, "世帯主", "a")]

        surnames = {"a": self._surname(), "b": self._surname()}
        members = [self._person(surnames[g], age, sex, rel) for age, sex, rel, g in spec]
        hh = self._place(body, kind, members, foreign)
        if foreign:
            assert nationality is not None and status is not None
            self._foreignise(hh, nationality, status)
        self._civil_items(hh, body)
        for p in members:
            self.counts[band_of(p.age_on(self.as_of))] += 1
            if p.is_foreign:
                self.foreign_persons += 1
        self.persons += len(members)
        return hh

    def _foreignise(self, hh: Household, nationality: str, status: str) -> None:
        rng = self.rng
        members = hh.members
        if status == "日本人の配偶者等" and len(members) >= 2:
            # A Japanese national married to a foreign spouse: only the spouse is foreign.
            spouse = members[1]
            if rng.random() < 0.3:  # the foreign partner is the husband
                spouse.sex, members[0].sex = Sex.MALE, Sex.FEMALE
                spouse.relationship = "夫"
                members[0].given_name, members[0].given_name_kana = self._given(
                    Sex.FEMALE, members[0].age_on(self.as_of)
                )
            self._make_foreign(spouse, nationality, status, None)
            return
        if status == "日本人の配偶者等":
            status = "永住者"
        separate = nationality in _SEPARATE_SURNAMES
        head_family: list[str] | None = None
        for i, person in enumerate(members):
            own = status
            if status in _WORK_STATUSES and i > 0:
                own = "家族滞在"
            elif status == "家族滞在" and i == 0:
                own = "技術・人文知識・国際業務"
            shares = i > 0 and (person.relationship in ("子", "孫") or not separate)
            used = self._make_foreign(person, nationality, own, head_family if shares else None)
            if i == 0:
                head_family = used

    def _place(
        self, body: master.Municipality, kind: HouseholdKind, members: list[Person], foreign: bool
    ) -> Household:
        rng = self.rng
        if body.kind is master.MunicipalityKind.DESIGNATED_CITY:
            body = rng.choice(master.wards(body.code))
        town = rng.choice(self._towns_of(body.code))
        young_single = kind is HouseholdKind.SINGLE and members[0].age_on(self.as_of) < 40
        katagaki = self._katagaki(0.7 if (young_single or foreign) else 0.2)
        return Household(
            municipality_code=body.code,
            kind=kind,
            postal_code=town.postal_code,
            prefecture=body.prefecture,
            municipality=body.address_name,
            town=town.name,
            banchi=self._banchi(town),
            katagaki=katagaki,
            members=members,
        )

    def _civil_items(self, hh: Household, body: master.Municipality) -> None:
        rng = self.rng
        as_of = self.as_of
        head = hh.head
        head_age = head.age_on(as_of)
        # The household settled at this address some years ago (never before the head turned 18).
        years_here = min(head_age - 18, int(rng.expovariate(1 / 9)))
        if head.period_of_stay_end is not None:
            years_here = min(years_here, rng.randint(0, 4))  # a fixed-term stay is recent
        address_since = _years_before(as_of, years_here) - timedelta(days=rng.randrange(365))
        address_since = max(address_since, _years_before(head.birth_date, -18))
        moved_within = rng.random() < 0.3
        resident_since = address_since
        if moved_within:
            earlier = _years_before(address_since, 1 + int(rng.expovariate(1 / 6)))
            resident_since = max(earlier, _years_before(head.birth_date, -18))
        # A quarter of households are local: their head and children have lived here since birth.
        born_here = head.period_of_stay_end is None and rng.random() < 0.25
        came_from: str | None = self._elsewhere()
        if head.period_of_stay_end is not None and rng.random() < 0.6:
            came_from = head.nationality  # 国外からの転入: the country is what is recorded
        local = master.municipality(hh.municipality_code)
        previous_here = self._elsewhere(local)
        insured_household = rng.random() < 0.17
        honseki = self._elsewhere(local if rng.random() < 0.6 else None)
        husband = next(
            (p for p in hh.members if p.sex is Sex.MALE and p.relationship == "世帯主" and not p.is_foreign),
            head,
        )
        hittousha = f"{husband.family_name}\u3000{husband.given_name}"
        for p in hh.members:
            age = p.age_on(as_of)
            p.address_since = max(address_since, p.birth_date)
            if born_here and p.relationship in ("世帯主", "子", "孫"):
                p.resident_since = p.birth_date
            else:
                p.resident_since = min(max(resident_since, p.birth_date), p.address_since)
            p.previous_address = came_from if p.resident_since > p.birth_date else None
            p.pre_move_address = previous_here if p.address_since > p.resident_since else None
            if p.is_foreign:
                p.foreign_resident_since = p.resident_since
                student = p.residence_status == "留学"
                p.national_health_insurance = student or (
                    p.residence_status not in ("技能実習", "特定技能") and insured_household and age < 75
                )
                p.national_pension = p.national_health_insurance and 20 <= age < 60
                continue
            if p.relationship in ("妻の父", "妻の母") or (
                p.relationship in ("父", "母") and rng.random() < 0.5
            ):
                p.honseki = self._elsewhere()
                p.hittousha = (
                    f"{p.family_name}\u3000{self._given(Sex.MALE, age)[0]}"
                    if p.sex is Sex.FEMALE
                    else (f"{p.family_name}\u3000{p.given_name}")
                )
            elif hh.kind is HouseholdKind.SINGLE and (age < 35 or (p.sex is Sex.FEMALE and age >= 65)):
                p.honseki = self._elsewhere()
                # In a parent's family register, or the late husband's.
                p.hittousha = f"{p.family_name}\u3000{self._given(Sex.MALE, age + 30)[0]}"
            else:
                p.honseki = honseki
                p.hittousha = (
                    hittousha
                    if hh.kind is not HouseholdKind.SINGLE
                    else f"{p.family_name}\u3000{p.given_name}"
                )
            p.elector = age >= 18 and p.resident_since <= as_of - timedelta(days=92)
            if age >= 75:
                p.national_health_insurance = False  # 後期高齢者医療制度 instead
            elif age >= 65:
                p.national_health_insurance = rng.random() < 0.75
            else:
                p.national_health_insurance = insured_household
            p.national_pension = p.national_health_insurance and 20 <= age < 60
            if p.relationship == "妻" and rng.random() < 0.01:
                maiden = self._surname()
                p.old_family_name, p.old_family_name_kana = maiden


def _rate(table: Sequence[tuple[int, float]]) -> Any:
    """A step function of age: ``table`` lists (from_age, rate) in order."""

    def rate(age: int) -> float:
        value = 0.0
        for start, r in table:
            if age >= start:
                value = r
        return value

    return rate


# Base rates of being the anchor of each household type by age (before the feedback), shaped
# after the census' headship rates by age.
_BASE_RATES = {
    "single": _rate([(18, 0.30), (25, 0.30), (30, 0.18), (40, 0.13), (60, 0.14), (70, 0.18), (80, 0.25)]),
    "couple": _rate([(22, 0.05), (30, 0.05), (40, 0.04), (55, 0.12), (60, 0.25), (70, 0.32), (85, 0.15)]),
    "child": _rate([(0, 0.72), (20, 0.40), (30, 0.15), (40, 0.07), (50, 0.03)]),
    "child_single_parent": _rate([(0, 0.09), (20, 0.12), (40, 0.10), (55, 0.05), (65, 0.02)]),
    "three_generation": _rate([(25, 0.03), (35, 0.06), (45, 0.08), (60, 0.05)]),
}


def _allocation(codes: Sequence[str] | Mapping[str, int], n_residents: int) -> list[tuple[str, int]]:
    if isinstance(codes, Mapping):
        pairs = [(c, int(v)) for c, v in codes.items()]
        if sum(v for _c, v in pairs) != n_residents:
            raise ValueError("n_residents: must equal the sum of the per-municipality counts given")
        return pairs
    codes = list(codes)
    if not codes:
        raise ValueError("municipality_codes: at least one municipality code is required")
    share, extra = divmod(n_residents, len(codes))
    return [(c, share + (1 if i < extra else 0)) for i, c in enumerate(codes)]


def generate_population(
    municipality_codes: Sequence[str] | Mapping[str, int],
    n_residents: int,
    seed: int,
    as_of: date,
    *,
    foreign_share: float = FOREIGN_SHARE,
) -> Iterator[Household]:
    """Yield households holding exactly ``n_residents`` synthetic persons, deterministically.

    ``municipality_codes`` lists 6-digit codes (residents split evenly) or maps each code to its
    number of residents. A designated city's residents are spread over its wards, whose codes
    they carry (the register is kept by ward).
    """
    if n_residents < 0:
        raise ValueError("n_residents: must be zero or more")
    plan = _allocation(municipality_codes, n_residents)
    bodies = [(master.municipality(code), n) for code, n in plan]  # validates every code first
    gen = _Generator(seed, as_of, foreign_share)
    for body, n in bodies:
        left = n
        while left > 0:
            hh = gen.household(body, left)
            left -= len(hh.members)
            yield hh
