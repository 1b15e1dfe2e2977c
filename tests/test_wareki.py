"""和暦: era boundaries, 元年, parsing, and properties over every supported day."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiban.core.wareki import EARLIEST, WarekiError, era_of, parse_wareki, to_wareki

EXAMPLES = [
    (date(2025, 4, 1), "令和7年4月1日"),
    (date(2019, 5, 1), "令和元年5月1日"),
    (date(2019, 4, 30), "平成31年4月30日"),
    (date(2020, 1, 1), "令和2年1月1日"),
    (date(1989, 1, 7), "昭和64年1月7日"),
    (date(1989, 1, 8), "平成元年1月8日"),
    (date(1926, 12, 24), "大正15年12月24日"),
    (date(1926, 12, 25), "昭和元年12月25日"),
    (date(1912, 7, 29), "明治45年7月29日"),
    (date(1912, 7, 30), "大正元年7月30日"),
    (date(1873, 1, 1), "明治6年1月1日"),
]


@pytest.mark.parametrize(("day", "text"), EXAMPLES)
def test_examples(day: date, text: str) -> None:
    assert to_wareki(day) == text
    assert parse_wareki(text) == day


def test_full_width_digits_are_read() -> None:
    assert parse_wareki("令和７年４月１日") == date(2025, 4, 1)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("平成31年5月1日", "within_era"),  # that day is 令和元年5月1日
        ("昭和64年1月8日", "within_era"),
        ("令和1年5月1日", "first_year"),
        ("令和7年2月30日", "calendar_date"),
        ("R7.4.1", "format"),
        ("慶応3年1月1日", "format"),
        ("明治5年12月2日", "range"),  # before the Gregorian calendar
    ],
)
def test_bad_text_names_the_rule(text: str, rule: str) -> None:
    with pytest.raises(WarekiError) as caught:
        parse_wareki(text)
    assert caught.value.rule == rule
    assert caught.value.field == "text"


def test_dates_before_the_gregorian_calendar_and_non_dates_are_refused() -> None:
    with pytest.raises(WarekiError) as caught:
        to_wareki(date(1872, 12, 31))
    assert caught.value.rule == "range"
    with pytest.raises(WarekiError) as caught:
        to_wareki("2025-04-01")  # type: ignore[arg-type]
    assert caught.value.rule == "type"


days = st.dates(min_value=EARLIEST, max_value=date(2200, 12, 31))


@given(days)
def test_round_trip(day: date) -> None:
    assert parse_wareki(to_wareki(day)) == day


@given(days, days)
def test_monotonic(a: date, b: date) -> None:
    """Order by (era, year, month, day) is the order of the dates."""
    ea, ya = era_of(a)
    eb, yb = era_of(b)
    key_a = (ea.start, ya, a.month, a.day)
    key_b = (eb.start, yb, b.month, b.day)
    assert (key_a < key_b) == (a < b)


@given(st.dates(min_value=EARLIEST, max_value=date(2200, 12, 30)))
def test_next_day_is_same_era_next_day_or_a_new_era_starting(day: date) -> None:
    era, year = era_of(day)
    nxt_era, nxt_year = era_of(day + timedelta(days=1))
    if nxt_era != era:
        assert nxt_era.start == day + timedelta(days=1)
        assert nxt_year == 1
    else:
        assert nxt_year in (year, year + 1)
