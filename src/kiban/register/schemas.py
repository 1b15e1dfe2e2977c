"""Command and result shapes of the register service (pydantic), used by the API and the UI.

Commands validate what needs no database: names kept exactly as given (IVS kept, never
NFC/NFKC), half-width katakana widened, 振り仮名 katakana only, identifiers by their check
digits, municipality codes against the master. Everything that needs the register's state
(version, order of events, households) is checked by :mod:`kiban.register.service`.

Every change command carries 届出日 (``notified_on``) and 異動日 (``effective_on``); commands
on an existing record carry the record's ``version`` as the clerk saw it (optimistic locking:
``None`` skips the check, the API always sends it).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kiban.core import master
from kiban.core.identifiers import validate_municipality_code, validate_resident_code
from kiban.register.rules import clean_name, clean_text, normalize_kana

_STRICT = ConfigDict(extra="forbid", frozen=True)


def _code(value: str) -> str:
    return validate_resident_code(value)


def _optional_kana(value: str | None, field: str) -> str | None:
    return None if value is None else normalize_kana(value, field)


class Actor(BaseModel):
    """The clerk who acts (窓口職員): user name and the municipality whose register they keep."""

    model_config = _STRICT

    username: str = Field(min_length=1, max_length=64)
    municipality_code: str
    role: str = "clerk"

    @field_validator("municipality_code")
    @classmethod
    def _known(cls, value: str) -> str:
        code = validate_municipality_code(value)
        master.municipality(code)  # refuses codes that are not in the master
        return code


class Target(BaseModel):
    """A record named by its 住民票コード, with the ``version`` the clerk last saw."""

    model_config = _STRICT

    resident_code: str
    version: int | None = Field(default=None, ge=1)

    _v = field_validator("resident_code")(classmethod(lambda cls, v: _code(v)))


class Address(BaseModel):
    """住所 within the clerk's municipality: 町字, 番地, 方書 (prefecture and municipality implied)."""

    model_config = _STRICT

    town: str
    banchi: str
    katagaki: str | None = None
    postal_code: str | None = Field(default=None, pattern=r"^[0-9]{7}$")

    @field_validator("town", "banchi")
    @classmethod
    def _part(cls, value: str, info: Any) -> str:
        return clean_text(value, info.field_name, max_len=200)

    @field_validator("katagaki")
    @classmethod
    def _katagaki(cls, value: str | None) -> str | None:
        return None if value is None or not value.strip() else clean_text(value, "katagaki", max_len=200)


class Dates(BaseModel):
    """届出日 and 異動日 of a change event, and an optional free-text reason (異動の理由・備考)."""

    model_config = _STRICT

    notified_on: date
    effective_on: date
    reason: str | None = Field(default=None, max_length=400)


class NameFields(BaseModel):
    """氏名 and 振り仮名 as recorded."""

    model_config = _STRICT

    family_name: str
    given_name: str
    family_name_kana: str
    given_name_kana: str

    @field_validator("family_name", "given_name")
    @classmethod
    def _name(cls, value: str, info: Any) -> str:
        return clean_name(value, info.field_name)

    @field_validator("family_name_kana", "given_name_kana")
    @classmethod
    def _kana(cls, value: str, info: Any) -> str:
        return normalize_kana(value, info.field_name)


class PersonData(NameFields):
    """Every item of a new 住民票 that does not come from the register itself."""

    sex: Literal[1, 2]  # ISO/IEC 5218: 1 男, 2 女
    old_family_name: str | None = None
    old_family_name_kana: str | None = None
    romaji_name: str | None = Field(default=None, max_length=200)
    alias: str | None = None  # 通称 (foreign residents)
    alias_kana: str | None = None
    honseki: str | None = Field(default=None, max_length=400)  # 本籍 (nationals)
    hittousha: str | None = Field(default=None, max_length=100)  # 筆頭者
    nationality: str | None = Field(default=None, max_length=100)  # 国籍・地域 (foreign residents)
    residence_status: str | None = Field(default=None, max_length=100)  # 在留資格
    period_of_stay_end: date | None = None
    residence_card_number: str | None = Field(default=None, pattern=r"^[A-Z]{2}[0-9]{8}[A-Z]{2}$")

    @field_validator("old_family_name", "alias")
    @classmethod
    def _opt_name(cls, value: str | None, info: Any) -> str | None:
        return None if value is None else clean_name(value, info.field_name)

    @field_validator("old_family_name_kana", "alias_kana")
    @classmethod
    def _opt_kana(cls, value: str | None, info: Any) -> str | None:
        return _optional_kana(value, info.field_name)

    @model_validator(mode="after")
    def _national_or_foreign(self) -> PersonData:
        if self.nationality is None and (self.residence_status or self.alias):
            raise ValueError("residence_status/alias: only for foreign residents (rule: foreign_only)")
        if self.nationality is not None and (self.honseki or self.hittousha):
            raise ValueError("honseki: only for Japanese nationals (rule: nationals_only)")
        return self


class HouseholdChoice(BaseModel):
    """Where people go: into the household of ``join_household_of``, or a new one headed by ``head_code``.

    ``relationships`` maps 住民票コード to 続柄 (relationship to the head) for the people who move;
    a person joining without one keeps theirs (a former 世帯主 must be given one).
    """

    model_config = _STRICT

    head_code: str | None = None
    join_household_of: str | None = None
    relationships: dict[str, str] = Field(default_factory=dict)

    @field_validator("head_code", "join_household_of")
    @classmethod
    def _opt_code(cls, value: str | None) -> str | None:
        return None if value is None else _code(value)

    @field_validator("relationships")
    @classmethod
    def _rels(cls, value: dict[str, str]) -> dict[str, str]:
        return {_code(k): clean_text(v, "relationships", max_len=20) for k, v in value.items()}

    @model_validator(mode="after")
    def _one_of(self) -> HouseholdChoice:
        if self.head_code is not None and self.join_household_of is not None:
            raise ValueError("head_code/join_household_of: give one, not both (rule: one_household)")
        return self


class LeftBehind(BaseModel):
    """For the members who stay when the 世帯主 leaves: the new head and their new 続柄."""

    model_config = _STRICT

    new_head_code: str | None = None
    relationships: dict[str, str] = Field(default_factory=dict)

    @field_validator("new_head_code")
    @classmethod
    def _opt_code(cls, value: str | None) -> str | None:
        return None if value is None else _code(value)

    @field_validator("relationships")
    @classmethod
    def _rels(cls, value: dict[str, str]) -> dict[str, str]:
        return {_code(k): clean_text(v, "relationships", max_len=20) for k, v in value.items()}


# --- commands -------------------------------------------------------------------------------------


class Birth(Dates):
    """出生: ``effective_on`` is the birth date; the child joins the household of ``household_of``."""

    person: PersonData
    household_of: str
    relationship: str = "子"

    _v = field_validator("household_of")(classmethod(lambda cls, v: _code(v)))


class Death(Dates):
    """死亡: closes the record (除票); ``stay`` names the new head if the 世帯主 died."""

    target: Target
    stay: LeftBehind = Field(default_factory=LeftBehind)


class MoveOut(Dates):
    """転出: ``effective_on`` is the 転出予定日 (may be up to 14 days after ``notified_on``)."""

    targets: list[Target] = Field(min_length=1, max_length=50)
    destination_municipality_code: str
    destination_address: str = Field(min_length=1, max_length=400)
    stay: LeftBehind = Field(default_factory=LeftBehind)

    @field_validator("destination_municipality_code")
    @classmethod
    def _dest(cls, value: str) -> str:
        code = validate_municipality_code(value)
        master.municipality(code)
        return code


class MoveInPerson(BaseModel):
    """One person of a 転入: the code on their 転出証明書 and the identity they present."""

    model_config = _STRICT

    resident_code: str
    family_name: str
    given_name: str
    birth_date: date
    sex: Literal[1, 2]

    _v = field_validator("resident_code")(classmethod(lambda cls, v: _code(v)))

    @field_validator("family_name", "given_name")
    @classmethod
    def _name(cls, value: str, info: Any) -> str:
        return clean_name(value, info.field_name)


class MoveIn(Dates):
    """転入 from another municipality, completing the 転出 whose 転出証明書情報 this municipality received."""

    persons: list[MoveInPerson] = Field(min_length=1, max_length=50)
    address: Address
    household: HouseholdChoice


class Relocation(Dates):
    """転居: move within the municipality (the whole household, or some members into another household)."""

    targets: list[Target] = Field(min_length=1, max_length=50)
    address: Address
    household: HouseholdChoice = Field(default_factory=HouseholdChoice)
    stay: LeftBehind = Field(default_factory=LeftBehind)


class Emigration(Dates):
    """国外転出 (may be filed up to 14 days in advance, like 転出)."""

    targets: list[Target] = Field(min_length=1, max_length=50)
    destination_country: str = Field(min_length=1, max_length=100)
    stay: LeftBehind = Field(default_factory=LeftBehind)


class Immigration(Dates):
    """国外からの転入: a returning person (``resident_code`` of their 除票) or a new one (``person``)."""

    resident_code: str | None = None
    person: PersonData | None = None
    birth_date: date | None = None  # of a new person
    previous_address: str = Field(min_length=1, max_length=400)  # 転入前住所 (the foreign address)
    address: Address
    household: HouseholdChoice = Field(default_factory=HouseholdChoice)

    @field_validator("resident_code")
    @classmethod
    def _opt_code(cls, value: str | None) -> str | None:
        return None if value is None else _code(value)

    @model_validator(mode="after")
    def _who(self) -> Immigration:
        if (self.resident_code is None) == (self.person is None):
            raise ValueError("resident_code/person: give exactly one (rule: one_person)")
        if self.person is not None and self.birth_date is None:
            raise ValueError("birth_date: required for a new person (rule: required)")
        return self


class HouseholdSplit(Dates):
    """世帯分離: ``targets`` leave their household and form a new one at the same address."""

    targets: list[Target] = Field(min_length=1, max_length=50)
    household: HouseholdChoice
    stay: LeftBehind = Field(default_factory=LeftBehind)


class HouseholdMerge(Dates):
    """世帯合併: ``targets`` join the household of ``household.join_household_of`` at the same address."""

    targets: list[Target] = Field(min_length=1, max_length=50)
    household: HouseholdChoice
    stay: LeftBehind = Field(default_factory=LeftBehind)


class HeadChange(Dates):
    """世帯主変更: ``new_head`` becomes 世帯主.

    ``relationships`` re-states the others' 続柄; the former head's is required.
    """

    new_head: Target
    relationships: dict[str, str] = Field(default_factory=dict)

    @field_validator("relationships")
    @classmethod
    def _rels(cls, value: dict[str, str]) -> dict[str, str]:
        return {_code(k): clean_text(v, "relationships", max_len=20) for k, v in value.items()}


class NameChange(Dates):
    """氏名変更 (婚姻, 離婚, 養子縁組 …). Omitted parts stay; ``keep_old_family_name`` records the 旧氏."""

    target: Target
    family_name: str | None = None
    given_name: str | None = None
    family_name_kana: str | None = None
    given_name_kana: str | None = None
    keep_old_family_name: bool = False

    @field_validator("family_name", "given_name")
    @classmethod
    def _name(cls, value: str | None, info: Any) -> str | None:
        return None if value is None else clean_name(value, info.field_name)

    @field_validator("family_name_kana", "given_name_kana")
    @classmethod
    def _kana(cls, value: str | None, info: Any) -> str | None:
        return _optional_kana(value, info.field_name)

    @model_validator(mode="after")
    def _something(self) -> NameChange:
        if not any((self.family_name, self.given_name, self.family_name_kana, self.given_name_kana)):
            raise ValueError("family_name: nothing to change (rule: no_change)")
        return self


class ExOfficioEntry(Dates):
    """職権記載: record a person living here who never notified (a new 住民票コード is issued)."""

    person: PersonData
    birth_date: date
    address: Address
    household: HouseholdChoice = Field(default_factory=HouseholdChoice)
    previous_address: str | None = Field(default=None, max_length=400)


# Items a 職権修正 may correct, and their kinds.
CORRECTABLE: dict[str, str] = {
    "family_name": "name",
    "given_name": "name",
    "family_name_kana": "kana",
    "given_name_kana": "kana",
    "old_family_name": "name?",
    "old_family_name_kana": "kana?",
    "alias": "name?",
    "alias_kana": "kana?",
    "romaji_name": "text?",
    "birth_date": "date",
    "sex": "sex",
    "relationship": "text",
    "honseki": "text?",
    "hittousha": "text?",
    "nationality": "text?",
    "residence_status": "text?",
    "period_of_stay_end": "date?",
    "residence_card_number": "text?",
    "postal_code": "text?",
    "town": "text",
    "banchi": "text",
    "katagaki": "text?",
    "address_since": "date",
    "resident_since": "date",
    "previous_address": "text?",
    "pre_move_address": "text?",
    "elector": "bool",
    "national_health_insurance": "bool",
    "national_pension": "bool",
}


class ExOfficioCorrection(Dates):
    """職権修正: correct items of a record (active or 除票); ``changes`` maps item names to new values."""

    target: Target
    changes: dict[str, Any] = Field(min_length=1)

    @field_validator("changes")
    @classmethod
    def _known(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(CORRECTABLE))
        if unknown:
            raise ValueError(f"changes: {unknown} cannot be corrected (rule: correctable_items)")
        return value


class ExOfficioRemoval(Dates):
    """職権消除 (e.g. 実態調査で居住の事実なし); ``reason`` is required."""

    target: Target
    stay: LeftBehind = Field(default_factory=LeftBehind)

    @model_validator(mode="after")
    def _reason(self) -> ExOfficioRemoval:
        if not (self.reason or "").strip():
            raise ValueError("reason: required for 職権消除 (rule: required)")
        return self


class ExOfficioRestoration(Dates):
    """職権回復: undo a wrong 消除; the person rejoins their household.

    ``relationship`` is needed when the person was 世帯主 and the household has another head now.
    """

    target: Target
    relationship: str | None = Field(default=None, max_length=20)


class ResidentCodeChange(Dates):
    """住民票コード変更 (on request): a new code, the old one retired forever; the 個人番号 stays."""

    target: Target


class SetRestriction(BaseModel):
    """DV等支援措置の開始: ``reason`` (DV, ストーカー, 児童虐待 …) and the period."""

    model_config = _STRICT

    resident_code: str
    reason: str = Field(min_length=1, max_length=200)
    starts_on: date
    ends_on: date

    _v = field_validator("resident_code")(classmethod(lambda cls, v: _code(v)))

    @model_validator(mode="after")
    def _period(self) -> SetRestriction:
        if self.ends_on < self.starts_on:
            raise ValueError("ends_on: before starts_on (rule: period_order)")
        return self


class LiftRestriction(BaseModel):
    """DV等支援措置の終了."""

    model_config = _STRICT

    resident_code: str
    reason: str = Field(min_length=1, max_length=200)
    lifted_on: date

    _v = field_validator("resident_code")(classmethod(lambda cls, v: _code(v)))


class SearchQuery(BaseModel):
    """Register search (検索): any combination; name matches kanji or kana, prefix or partial."""

    model_config = _STRICT

    name: str | None = Field(default=None, max_length=100)
    birth_date: date | None = None
    address: str | None = Field(default=None, max_length=200)
    resident_code: str | None = None
    include_removed: bool = False
    page: int = Field(default=1, ge=1)
    page_size: int = Field(default=20, ge=1, le=100)

    @field_validator("resident_code")
    @classmethod
    def _opt_code(cls, value: str | None) -> str | None:
        return None if value is None else _code(value)


# --- results --------------------------------------------------------------------------------------


class ResidentView(BaseModel):
    """A 住民票 as the clerk sees it (``individual_number`` only in the clerk's own municipality)."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    resident_code: str
    municipality_code: str
    household_id: uuid.UUID
    version: int
    status: str
    family_name: str
    given_name: str
    family_name_kana: str
    given_name_kana: str
    old_family_name: str | None
    old_family_name_kana: str | None
    alias: str | None
    alias_kana: str | None
    romaji_name: str | None
    birth_date: date
    sex: int
    relationship: str
    postal_code: str | None
    prefecture: str
    municipality: str
    town: str
    banchi: str
    katagaki: str | None
    address_since: date
    resident_since: date
    previous_address: str | None
    pre_move_address: str | None
    honseki: str | None
    hittousha: str | None
    nationality: str | None
    residence_status: str | None
    period_of_stay_end: date | None
    residence_card_number: str | None
    foreign_resident_since: date | None
    elector: bool
    national_health_insurance: bool
    national_pension: bool
    individual_number: str | None
    removed_reason: str | None
    removed_on: date | None
    restricted: bool = False


class ResidentSummary(BaseModel):
    """One search hit."""

    resident_code: str
    municipality_code: str
    family_name: str
    given_name: str
    family_name_kana: str
    given_name_kana: str
    birth_date: date
    sex: int
    address: str
    status: str
    version: int
    restricted: bool = False


class SearchPage(BaseModel):
    items: list[ResidentSummary]
    total: int
    page: int
    page_size: int


class HistoryEntry(BaseModel):
    """One row of 異動履歴."""

    model_config = ConfigDict(from_attributes=True)

    seq: int
    group_id: uuid.UUID
    kind: str
    kind_ja: str
    resident_code: str
    municipality_code: str
    notified_on: date
    effective_on: date
    recorded_at: datetime
    actor: str
    reason: str | None
    before: dict[str, Any]
    after: dict[str, Any]
    resident_version: int


class RecordRef(BaseModel):
    """A record an event touched, with its version after the event."""

    resident_code: str
    resident_id: uuid.UUID
    version: int
    status: str


class MoveOutCertificateInfo(BaseModel):
    """転出証明書情報 (the ``payload`` schema is in docs/register.md)."""

    certificate_id: uuid.UUID
    resident_code: str
    from_municipality_code: str
    to_municipality_code: str
    planned_move_on: date
    notified_on: date
    status: str
    payload: dict[str, Any]


class EventResult(BaseModel):
    """What one change command did: the records touched (new ones included) and any 転出証明書情報."""

    kind: str
    group_id: uuid.UUID
    records: list[RecordRef]
    certificates: list[MoveOutCertificateInfo] = Field(default_factory=list)

    def version_of(self, resident_code: str) -> int:
        return next(r.version for r in self.records if r.resident_code == resident_code)
