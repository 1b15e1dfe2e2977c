"""和暦 (Japanese era calendar) for dates printed on documents: "令和7年4月1日", "令和元年5月1日".

Only the modern eras (一世一元, since 明治) are needed, and only from 1873-01-01 (明治6年1月1日),
the day Japan adopted the Gregorian calendar: before it, a Gregorian date has no simple 和暦
form (the lunisolar calendar was in use), and no living person's record needs one. The table is
five rows of public fact, so it lives here rather than in a dependency (see docs/documents.md).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import date


class WarekiError(ValueError):
    """A date outside the supported range, or 和暦 text that is malformed or names no real day."""

    def __init__(self, field: str, rule: str, message: str) -> None:
        super().__init__(f"{field}: {message} (rule: {rule})")
        self.field = field
        self.rule = rule


@dataclass(frozen=True, slots=True)
class Era:
    """元号: its name and the first day it was in force (the previous era ends the day before)."""

    name: str
    start: date


# Boundaries (元号を改める政令 and 皇室典範): 昭和64年1月7日 is the last day of 昭和, 平成元年1月8日 the
# first of 平成; 平成31年4月30日 / 令和元年5月1日.
ERAS: tuple[Era, ...] = (
    Era("明治", date(1868, 1, 25)),  # 明治元年1月1日 (慶応4年) in the Gregorian calendar
    Era("大正", date(1912, 7, 30)),
    Era("昭和", date(1926, 12, 25)),
    Era("平成", date(1989, 1, 8)),
    Era("令和", date(2019, 5, 1)),
)
EARLIEST = date(1873, 1, 1)  # 明治6年1月1日: Gregorian calendar adopted

_BY_NAME = {era.name: index for index, era in enumerate(ERAS)}


def era_of(day: date) -> tuple[Era, int]:
    """The era in force on ``day`` and the year within it (1 for 元年)."""
    if not isinstance(day, date):
        raise WarekiError("date", "type", f"a datetime.date is required, got {type(day).__name__}")
    if day < EARLIEST:
        raise WarekiError("date", "range", f"{day.isoformat()} is before 1873-01-01 (明治6年1月1日)")
    for era in reversed(ERAS):
        if day >= era.start:
            return era, day.year - era.start.year + 1
    raise AssertionError("unreachable: EARLIEST is inside 明治")


def to_wareki(day: date) -> str:
    """``day`` as printed on documents: "令和7年4月1日", with 元年 for an era's first year."""
    era, year = era_of(day)
    year_text = "元" if year == 1 else str(year)
    return f"{era.name}{year_text}年{day.month}月{day.day}日"


def to_wareki_year(era_name: str, year: int) -> int:
    """The Gregorian year of 和暦 year ``year`` of ``era_name`` (e.g. 令和7 → 2025)."""
    if era_name not in _BY_NAME:
        raise WarekiError("era", "known_era", f"unknown era {era_name!r} (明治, 大正, 昭和, 平成, 令和)")
    if year < 1:
        raise WarekiError("year", "positive", "the era year starts at 1 (元年)")
    return ERAS[_BY_NAME[era_name]].start.year + year - 1


_WAREKI = re.compile(r"(明治|大正|昭和|平成|令和)(元|[0-9]{1,3})年([0-9]{1,2})月([0-9]{1,2})日")


def parse_wareki(text: str) -> date:
    """The date written as "令和7年4月1日" (full-width digits accepted); refuses days not in that era."""
    if not isinstance(text, str):
        raise WarekiError("text", "type", f"a string is required, got {type(text).__name__}")
    normalised = unicodedata.normalize("NFKC", text).strip()
    match = _WAREKI.fullmatch(normalised)
    if match is None:
        raise WarekiError("text", "format", f"{text!r} is not of the form 令和7年4月1日")
    era_name, year_text, month_text, day_text = match.groups()
    year = 1 if year_text == "元" else int(year_text)
    if year_text != "元" and year == 1:
        raise WarekiError("text", "first_year", "the first year of an era is written 元年")
    try:
        day = date(to_wareki_year(era_name, year), int(month_text), int(day_text))
    except ValueError as exc:
        if isinstance(exc, WarekiError):
            raise
        raise WarekiError("text", "calendar_date", f"{text!r} is not a calendar date") from exc
    if day < EARLIEST:
        raise WarekiError("text", "range", f"{text!r} is before 明治6年1月1日")
    actual, _ = era_of(day)
    if actual.name != era_name:
        raise WarekiError(
            "text", "within_era", f"{text!r} is not in {era_name} (that day is in {actual.name})"
        )
    return day
