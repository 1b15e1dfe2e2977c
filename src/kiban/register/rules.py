"""Rules of the resident register that need no database: input normalisation, dates, ages, errors.

The service (:mod:`kiban.register.service`) calls these and adds the rules that need the
register's state (one active record per 住民票コード, one head per household, event order).
Every refusal is a :class:`RegisterError` naming the field and a stable rule id.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Protocol

import jaconv

__all__ = [
    "ADULT_AGE",
    "MOVE_IN_WINDOW_DAYS",
    "AccessDenied",
    "ConflictError",
    "NotFound",
    "RegisterError",
    "age_on",
    "clean_name",
    "clean_text",
    "normalize_kana",
]

# 成年年齢 (民法4条, 18 since 2022-04-01): below it a person is a minor.
ADULT_AGE = 18
# 転入届 within 14 days of moving in (住基法22条): a pending 転出 older than this is overdue.
MOVE_IN_WINDOW_DAYS = 14
NAME_MAX = 100
TEXT_MAX = 400


class RegisterError(ValueError):
    """A register command broke a rule; nothing was written.

    ``field`` names the input (``resident_code``, ``effective_on``, ``family_name_kana`` …),
    ``rule`` is a stable id (``future_date``, ``one_head``, ``dead_or_removed`` …) that the UI
    translates; the message says it in English. As a ``ValueError`` with ``field`` and ``rule``
    it becomes a 422 problem in the web layer; the subclasses map to 404, 403 and 409.
    """

    status = 422

    def __init__(self, field: str, rule: str, message: str) -> None:
        self.field = field
        self.rule = rule
        self.message = self.detail = message
        super().__init__(f"{field}: {message} (rule: {rule})")


class StaffMember(Protocol):
    """Who acts: a logged-in staff member (``kiban.web.auth.CurrentUser`` or an account row)."""

    @property
    def username(self) -> str: ...

    @property
    def role(self) -> str: ...

    @property
    def municipality_code(self) -> str | None: ...


class NotFound(RegisterError):
    """No such record in the clerk's municipality (404)."""

    status = 404


class AccessDenied(RegisterError):
    """The clerk may act only on their own municipality's residents (403, rule ``own_municipality``)."""

    status = 403


class ConflictError(RegisterError):
    """Someone changed the record since the clerk read it (409, field ``version``, rule ``stale_version``)."""

    status = 409


_HALF_WIDTH_KANA = re.compile("[\uff61-\uff9f]+")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Katakana block (ー and ・ included), katakana phonetic extensions, spaces between words.
_KATAKANA = re.compile("[\u30a1-\u30ff\u31f0-\u31ff\u3000 ]+")


def _full_width_kana(value: str) -> str:
    # Only half-width katakana runs are converted: everything else (IVS, compatibility
    # ideographs, private-use MJ characters) stays byte for byte.
    return _HALF_WIDTH_KANA.sub(lambda m: jaconv.h2z(m.group(0), kana=True, ascii=False, digit=False), value)


def clean_text(value: str, field: str, *, max_len: int = TEXT_MAX) -> str:
    """A free-text item (address part, reason): no control characters, not empty, not too long."""
    if not isinstance(value, str):
        raise RegisterError(field, "type", "must be text")
    if not value.strip():
        raise RegisterError(field, "required", "must not be empty")
    if _CONTROL.search(value):
        raise RegisterError(field, "control_characters", "must not contain control characters")
    if len(value) > max_len:
        raise RegisterError(field, "max_length", f"has {len(value)} characters, at most {max_len}")
    return _full_width_kana(value)


def clean_name(value: str, field: str) -> str:
    """A name as recorded: never NFC/NFKC (IVS and compatibility ideographs kept), half-width kana widened."""
    value = clean_text(value, field, max_len=NAME_MAX)
    if value != value.strip(" \u3000"):
        raise RegisterError(field, "surrounding_space", "must not start or end with a space")
    return value


def normalize_kana(value: str, field: str) -> str:
    """振り仮名: half-width katakana and hiragana become full-width katakana; anything else is refused."""
    value = clean_name(value, field)
    value = jaconv.hira2kata(value)
    if not _KATAKANA.fullmatch(value):
        bad = next(c for c in value if not _KATAKANA.fullmatch(c))
        raise RegisterError(field, "katakana_only", f"must be katakana; U+{ord(bad):04X} is not")
    return value


def age_on(birth_date: date, on: date) -> int:
    """Completed years of age on ``on`` (年齢計算: a birthday counts from its day)."""
    return on.year - birth_date.year - ((on.month, on.day) < (birth_date.month, birth_date.day))
