"""JPKI profile rules without a database: characters, birthdays, validity, serials (SPEC K5)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiban.jpki import profiles
from kiban.jpki.profiles import (
    SUBSTITUTE,
    HolderInfo,
    ProfileError,
    age_on,
    anniversary,
    encode_birth_date,
    in_certificate_charset,
    in_renewal_window,
    nth_birthday_after,
    personal_not_after,
    restrict,
)

JST_NOON = timedelta(hours=3)  # 12:00 JST is 03:00 UTC


def at(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + JST_NOON


# --- character set ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("char", "inside"),
    [
        ("高", True),  # JIS X 0208 level 1
        ("崎", True),
        ("齋", True),  # level 2
        ("丂", True),  # JIS X 0212 (補助漢字) 0x3021
        ("〓", True),  # the substitute itself is a JIS X 0208 character
        ("髙", False),  # U+9AD9 はしごだか: IBM extension, not JIS X 0208/0212
        ("﨑", False),  # U+FA11 たつさき: compatibility ideograph, not JIS X 0208/0212
        ("𠮷", False),  # U+20BB7 つちよし: outside the BMP
        ("ｱ", False),  # half-width katakana (JIS X 0201) is not double-byte
        ("A", False),  # ASCII is not in the set as such (restrict() widens it first)
    ],
)
def test_charset_membership(char: str, inside: bool) -> None:
    assert in_certificate_charset(char) is inside


def test_substitution_flags_positions() -> None:
    result = restrict("髙橋　﨑子", "holder.name")
    assert result.text == "〓橋　〓子"
    assert result.flags == "10010"
    assert result.substituted == (0, 3)


def test_nothing_flagged_for_plain_jis_text() -> None:
    result = restrict("高橋　崎子")
    assert result.text == "高橋　崎子" and result.flags == "00000"


def test_ascii_and_fullwidth_hyphen_are_written_in_jis_form() -> None:
    # ASCII digits and '-' are widened; the full-width hyphen U+FF0D (Microsoft mapping) becomes
    # U+2212, the same JIS X 0208 cell 0x215D — a mapping, not a substitution.
    result = restrict("永田町1-7-1")
    assert result.text == "永田町１−７−１"
    assert result.flags == "00000000"
    assert restrict("１－７").text == "１−７"


def test_empty_text_is_refused_with_field_and_rule() -> None:
    with pytest.raises(ProfileError) as error:
        restrict("  ", "holder.address")
    assert (error.value.field, error.value.rule) == ("holder.address", "required")


@given(st.text(min_size=1, max_size=40).filter(lambda s: s.strip()))
def test_restrict_property(value: str) -> None:
    result = restrict(value)
    assert len(result.text) == len(result.flags) == len(value)
    assert all(in_certificate_charset(c) for c in result.text)
    for original, written, flag in zip(value, result.text, result.flags, strict=True):
        assert (flag == "1") == (written == SUBSTITUTE and original != SUBSTITUTE)


# --- birth dates and birthdays -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "encoded"),
    [
        (date(1990, 1, 2), "419900102"),  # the real-card example: 平成 (4)
        (date(1989, 1, 7), "319890107"),  # last day of 昭和
        (date(1989, 1, 8), "419890108"),  # first day of 平成
        (date(2019, 5, 1), "520190501"),  # 令和
        (date(1926, 12, 24), "219261224"),  # 大正
        (date(1912, 7, 29), "119120729"),  # 明治
    ],
)
def test_birth_date_encoding(day: date, encoded: str) -> None:
    assert encode_birth_date(day) == encoded


def test_leap_day_birthday_is_feb_28_in_common_years() -> None:
    born = date(2004, 2, 29)
    assert anniversary(born, 2027) == date(2027, 2, 28)
    assert anniversary(born, 2028) == date(2028, 2, 29)


def test_age_boundary_15th_birthday() -> None:
    born = date(2011, 6, 10)
    assert age_on(born, date(2026, 6, 9)) == 14
    assert age_on(born, date(2026, 6, 10)) == 15


def test_leap_day_child_reaches_age_on_march_1_of_a_common_year() -> None:
    born = date(2008, 2, 29)
    assert age_on(born, date(2023, 2, 28)) == 14
    assert age_on(born, date(2023, 3, 1)) == 15
    assert age_on(born, date(2024, 2, 29)) == 16


def test_fifth_birthday_after_issuance() -> None:
    born = date(1980, 5, 10)
    assert nth_birthday_after(born, date(2026, 3, 1), 5) == date(2030, 5, 10)
    assert nth_birthday_after(born, date(2026, 6, 1), 5) == date(2031, 5, 10)
    # a birthday on the issuance day itself does not count
    assert nth_birthday_after(born, date(2026, 5, 10), 5) == date(2031, 5, 10)


def test_fifth_birthday_after_issuance_leap_day() -> None:
    born = date(2000, 2, 29)
    assert nth_birthday_after(born, date(2026, 3, 1), 5) == date(2031, 2, 28)
    assert nth_birthday_after(born, date(2026, 3, 1), 6) == date(2032, 2, 29)


@given(st.dates(date(1900, 1, 1), date(2020, 12, 31)), st.dates(date(2021, 1, 1), date(2090, 12, 31)))
def test_nth_birthday_property(born: date, issued: date) -> None:
    fifth = nth_birthday_after(born, issued, 5)
    assert issued < fifth <= issued + timedelta(days=5 * 366 + 1)
    assert (fifth.month, fifth.day) in {(born.month, born.day), (2, 28)}
    # exactly five birthdays in (issued, fifth]
    years = [y for y in range(issued.year, fifth.year + 1) if issued < anniversary(born, y) <= fifth]
    assert len(years) == 5


def test_not_after_is_end_of_birthday_jst() -> None:
    end = personal_not_after(date(1980, 5, 10), at(date(2026, 3, 1)), date(2036, 1, 1))
    assert end == datetime(2030, 5, 10, 14, 59, 59, tzinfo=UTC)  # 23:59:59 JST


def test_card_expiry_caps_validity() -> None:
    end = personal_not_after(date(1980, 5, 10), at(date(2026, 3, 1)), date(2028, 8, 31))
    assert end == datetime(2028, 8, 31, 14, 59, 59, tzinfo=UTC)


def test_cap_from_user_auth_certificate() -> None:
    cap = datetime(2029, 1, 1, tzinfo=UTC)
    assert personal_not_after(date(1980, 5, 10), at(date(2026, 3, 1)), date(2036, 1, 1), cap=cap) == cap


def test_renewal_window_gives_sixth_birthday() -> None:
    born = date(1980, 5, 10)
    issued = at(date(2030, 3, 1))
    assert personal_not_after(born, issued, date(2040, 1, 1)).date() == date(2034, 5, 10)
    assert personal_not_after(born, issued, date(2040, 1, 1), renewal_window=True).date() == date(2035, 5, 10)


def test_renewal_window_is_the_last_three_months() -> None:
    old_end = datetime(2030, 5, 10, 14, 59, 59, tzinfo=UTC)
    assert not in_renewal_window(old_end, at(date(2030, 2, 9)))
    assert in_renewal_window(old_end, at(date(2030, 2, 10)))
    assert in_renewal_window(old_end, at(date(2030, 5, 10)))


def test_expired_card_is_refused() -> None:
    with pytest.raises(ProfileError) as error:
        personal_not_after(date(1980, 5, 10), at(date(2026, 3, 1)), date(2026, 2, 1))
    assert error.value.field == "card_expiry"


# --- serials and holders ----------------------------------------------------------------------------


def test_serials_are_positive_and_at_least_64_bits() -> None:
    serials = {profiles.new_serial() for _ in range(2000)}
    assert len(serials) == 2000
    assert all(1 << 64 <= s < 1 << 159 for s in serials)
    assert all(len(profiles.serial_hex(s)) == 40 for s in serials)


@pytest.mark.parametrize(
    ("changes", "field", "rule"),
    [
        ({"resident_code": "123"}, "holder.resident_code", "format"),
        ({"sex": 4}, "holder.sex", "code"),
        ({"address": "東" * 201}, "holder.address", "max_length"),
        ({"name": ""}, "holder.name", "length"),
        ({"card_id": ""}, "holder.card_id", "format"),
    ],
)
def test_bad_holder_names_field_and_rule(changes: dict[str, Any], field: str, rule: str) -> None:
    base: dict[str, Any] = {
        "resident_code": "12345678901",
        "name": "山田　太郎",
        "birth_date": date(1980, 5, 10),
        "sex": 1,
        "address": "東京都千代田区",
        "card_id": "card-1",
    }
    holder = replace(HolderInfo(**base), **changes)
    with pytest.raises(ProfileError) as error:
        profiles.check_holder(holder)
    assert (error.value.field, error.value.rule) == (field, rule)


@given(
    st.dates(date(1920, 1, 1), date(2011, 12, 31)),
    st.dates(date(2026, 1, 1), date(2040, 12, 31)),
    st.integers(min_value=1, max_value=4000),
    st.booleans(),
)
def test_validity_property(born: date, issued: date, card_days: int, renewal: bool) -> None:
    now = at(issued)
    card_expiry = issued + timedelta(days=card_days)
    end = personal_not_after(born, now, card_expiry, renewal_window=renewal)
    assert now < end <= profiles.end_of_day_jst(card_expiry)
    birthday = nth_birthday_after(born, issued, 6 if renewal else 5)
    assert end == min(profiles.end_of_day_jst(birthday), profiles.end_of_day_jst(card_expiry))
    assert profiles.jst_date(end) in {birthday, card_expiry}
