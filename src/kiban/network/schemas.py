"""Inputs and answers of the identity network's provision API (本人確認情報の提供)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kiban.core.identifiers import validate_individual_number, validate_resident_code
from kiban.register.models import kana_search_key

QueryKind = Literal["resident_code", "individual_number", "basic4"]
Outcome = Literal["provided", "not_found", "ambiguous", "refused", "invalid"]


class ProvisionQuery(BaseModel):
    """Who is asked about: by 住民票コード, by 個人番号, or by 基本4情報 (exactly one form).

    The 基本4情報 form is the reading of the name (katakana or hiragana), the birth date, the
    sex and the start of the address (at least the prefecture).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    resident_code: str | None = None
    individual_number: str | None = None
    name_kana: str | None = Field(default=None, max_length=100)
    birth_date: date | None = None
    sex: Literal[1, 2] | None = None
    address_prefix: str | None = Field(default=None, min_length=2, max_length=200)

    @field_validator("resident_code")
    @classmethod
    def _code(cls, value: str | None) -> str | None:
        return None if value is None else validate_resident_code(value)

    @field_validator("individual_number")
    @classmethod
    def _number(cls, value: str | None) -> str | None:
        return None if value is None else validate_individual_number(value)

    @field_validator("name_kana")
    @classmethod
    def _kana(cls, value: str | None) -> str | None:
        if value is None:
            return None
        key = kana_search_key(value, "")
        if not key or any(not ("\u30a1" <= ch <= "\u30fc") for ch in key):
            raise ValueError("name_kana must be the reading in katakana or hiragana (rule: kana)")
        return key

    @model_validator(mode="after")
    def _one_form(self) -> ProvisionQuery:
        basic = (self.name_kana, self.birth_date, self.sex, self.address_prefix)
        forms = [
            self.resident_code is not None,
            self.individual_number is not None,
            any(v is not None for v in basic),
        ]
        if sum(forms) != 1:
            raise ValueError(
                "give exactly one of resident_code, individual_number or the 基本4情報 "
                "(name_kana, birth_date, sex, address_prefix) (rule: one_form)"
            )
        if forms[2] and any(v is None for v in basic):
            raise ValueError(
                "a 基本4情報 search needs name_kana, birth_date, sex and address_prefix "
                "(rule: basic4_complete)"
            )
        return self

    @property
    def kind(self) -> QueryKind:
        if self.resident_code is not None:
            return "resident_code"
        if self.individual_number is not None:
            return "individual_number"
        return "basic4"


class Answer(BaseModel):
    """One provision's answer: the items the use allows, or why nothing was given."""

    row: int | None = None  # the row number in a bulk file (0-based)
    outcome: Outcome
    rule: str | None = None  # why refused / invalid
    field: str | None = None  # the bad field of an invalid row
    message: str | None = None
    items: list[str] = Field(default_factory=list)
    data: dict[str, Any] = Field(default_factory=dict)
    restricted: bool = False  # a DV等支援措置 is in force: the read was flagged


class DisclosureEntry(BaseModel):
    """One line of 提供状況の開示: who received which items, when, for which use."""

    provided_at: datetime
    agency_code: str
    agency_name: str
    use_code: str
    use_name: str
    items: list[str]
