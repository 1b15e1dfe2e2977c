"""Identity network service (住基ネット, SPEC K2): the copies, provision to agencies, disclosure.

Replication: :func:`apply_identity_change` (the handler of ``register.identity_changed``) checks a
change message and writes it as a new version of the person's 本人確認情報 in the prefectural copy
(都道府県知事保存本人確認情報) and the national copy (機構保存本人確認情報). A message that breaks a rule
is quarantined (:class:`~kiban.network.models.QuarantinedMessage`) with the field and the rule,
never applied. Idempotent by event id (the inbox, and a unique event id per copy); ordered per
住民票コード (a message older than the newest applied one is quarantined as ``out_of_order``).

Provision: :func:`provide` (one query) and :func:`provide_bulk` (a file of queries, streamed and
resumable); both check that the use (事務) is the agency's, return only the items the use allows,
flag reads of persons under a DV等支援措置, and log every provision and refusal in
``network_provisions`` and the audit log. Disclosure: :func:`provisions_about`.
Design notes: docs/network.md.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

from pydantic import ValidationError
from sqlalchemy import Table, and_, delete, func, insert, or_, select
from sqlalchemy.orm import Session, sessionmaker

from kiban.core import audit, master
from kiban.core.database import transaction, utcnow
from kiban.core.events import DomainEvent, emit
from kiban.core.identifiers import IdentifierError, validate_individual_number, validate_resident_code
from kiban.network.models import (
    Agency,
    AgencyUse,
    BulkJob,
    NationalIdentity,
    PrefecturalIdentity,
    Provision,
    QuarantinedMessage,
    RegistrationConflict,
    RestrictionCopy,
    RestrictionSet,
    StatutoryUse,
    current_version,
)
from kiban.network.schemas import Answer, DisclosureEntry, ProvisionQuery
from kiban.register.models import Resident, kana_search_key

log = logging.getLogger(__name__)

JST = ZoneInfo("Asia/Tokyo")
IDENTITY_CHANGED_IN = "register.identity_changed"
RESTRICTION_CHANGED_IN = "register.restriction_changed"  # DV等支援措置: the municipality's whole set
IDENTITY_CHANGED_OUT = "network.identity_changed"  # 異動等情報, for the CA, cards and linkage
REGISTRATION_CONFLICT = "network.registration_conflict"
SCHEMA_VERSION = 1

# The payload keys of register.identity_changed (v1). Anything else must not leave the municipality.
_REQUIRED_TEXT = ("family_name", "given_name", "family_name_kana", "given_name_kana", "address_text")
_PAYLOAD_KEYS = frozenset(
    {
        "resident_code",
        "previous_resident_code",
        "municipality_code",
        "family_name",
        "given_name",
        "family_name_kana",
        "given_name_kana",
        "old_family_name",
        "old_family_name_kana",
        "birth_date",
        "sex",
        "address",
        "address_text",
        "individual_number",
        "status",
        "reason",
        "reason_ja",
        "effective_on",
        "notified_on",
    }
)
_ADDRESS_KEYS = frozenset({"postal_code", "prefecture", "municipality", "town", "banchi", "katagaki"})
STATUSES = ("active", "removed")

# Provision items (本人確認情報 as agencies see them) and the columns each one carries.
ITEM_COLUMNS: dict[str, tuple[str, ...]] = {
    "name": ("family_name", "given_name"),
    "name_kana": ("family_name_kana", "given_name_kana"),
    "old_name": ("old_family_name", "old_family_name_kana"),
    "birth_date": ("birth_date",),
    "sex": ("sex",),
    "address": ("address",),
    "resident_code": ("resident_code",),
    "individual_number": ("individual_number",),
    "status": ("status",),
    "change": ("reason", "reason_ja", "effective_on"),
}
RESTRICTED_POLICIES = ("provide", "withhold_address", "refuse")
DV_FLAG = "dv_restricted"
BASIC4_LIMIT = 20  # more candidates than this is not a search but a trawl
MAX_BULK_BYTES = 2 * 1024**3  # a bulk file larger than this is refused before it is read
# Rows checked for exact duplicates: a dict entry per row (~100 bytes), so bounded.
DUPLICATE_WINDOW = 500_000
BULK_COLUMNS = (
    "resident_code",
    "individual_number",
    "name_kana",
    "birth_date",
    "sex",
    "address_prefix",
)


class NetworkError(ValueError):
    """Bad input to the network: ``field`` broke ``rule``. Nothing was written."""

    def __init__(self, field: str, rule: str, message: str) -> None:
        super().__init__(f"{field}: {message} (rule: {rule})")
        self.field = field
        self.rule = rule
        self.message = message


# --- change messages -----------------------------------------------------------------------------


@dataclass(frozen=True)
class IdentityChange:
    """A checked ``register.identity_changed`` message: the 本人確認情報 after the change."""

    event_id: str
    occurred_at: datetime
    resident_code: str
    previous_resident_code: str | None
    municipality_code: str
    prefecture_code: str
    family_name: str
    given_name: str
    family_name_kana: str
    given_name_kana: str
    old_family_name: str | None
    old_family_name_kana: str | None
    birth_date: date
    sex: int
    address: str
    individual_number: str | None
    status: str
    reason: str
    reason_ja: str
    effective_on: date
    notified_on: date | None


def _text(payload: Mapping[str, Any], name: str, *, required: bool) -> str | None:
    value = payload.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise NetworkError(f"payload.{name}", "required", "must be a non-empty string")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise NetworkError(f"payload.{name}", "control_characters", "must not contain control characters")
    return value


def _date(payload: Mapping[str, Any], name: str, *, required: bool = True) -> date | None:
    value = payload.get(name)
    if value is None and not required:
        return None
    try:
        return date.fromisoformat(value) if isinstance(value, str) else _bad_date(name)
    except ValueError:
        return _bad_date(name)


def _bad_date(name: str) -> date:
    raise NetworkError(f"payload.{name}", "iso_date", "must be an ISO date (YYYY-MM-DD)")


def _identifier(payload: Mapping[str, Any], name: str, check: Any, *, required: bool) -> str | None:
    value = payload.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise NetworkError(f"payload.{name}", "required", "must be a string of digits")
    try:
        return cast(str, check(value))
    except IdentifierError as exc:
        raise NetworkError(f"payload.{name}", exc.rule, exc.detail) from exc


def parse_change(event: DomainEvent) -> IdentityChange:
    """Check a change message; :class:`NetworkError` names the first field that breaks a rule."""
    if event.schema_version != SCHEMA_VERSION:
        raise NetworkError("schema_version", "unsupported", f"version {event.schema_version} is not 1")
    payload = event.payload
    extra = sorted(set(payload) - _PAYLOAD_KEYS)
    if extra:
        raise NetworkError(
            f"payload.{extra[0]}",
            "not_identity_information",
            f"items {extra} are not 本人確認情報 and must not leave the municipality",
        )
    address = payload.get("address")
    if address is not None and (not isinstance(address, dict) or set(address) - _ADDRESS_KEYS):
        raise NetworkError("payload.address", "not_identity_information", "address parts only")
    missing = sorted(
        name
        for name in (*_REQUIRED_TEXT, "resident_code", "municipality_code", "birth_date", "sex", "status")
        if payload.get(name) in (None, "")
    )
    if missing:
        raise NetworkError(f"payload.{missing[0]}", "required", f"missing items {missing}")
    code = _identifier(payload, "resident_code", validate_resident_code, required=True)
    assert code is not None
    if code != event.key:
        raise NetworkError("payload.resident_code", "key_match", "differs from the event key")
    previous = _identifier(payload, "previous_resident_code", validate_resident_code, required=False)
    number = _identifier(payload, "individual_number", validate_individual_number, required=False)
    municipality_code = payload.get("municipality_code")
    try:
        place = master.municipality(str(municipality_code))
    except master.MasterError as exc:
        raise NetworkError("payload.municipality_code", "unknown_municipality", str(exc)) from exc
    if not place.is_municipality:
        raise NetworkError(
            "payload.municipality_code", "unknown_municipality", f"{place.code} is a ward, not a municipality"
        )
    sex = payload.get("sex")
    if isinstance(sex, bool) or sex not in (1, 2):
        raise NetworkError("payload.sex", "sex_code", "must be 1 (男) or 2 (女)")
    status = payload.get("status")
    if status not in STATUSES:
        raise NetworkError("payload.status", "status", f"must be one of {STATUSES}")
    birth = _date(payload, "birth_date")
    effective = _date(payload, "effective_on")
    assert birth is not None and effective is not None
    if effective < birth:
        raise NetworkError("payload.effective_on", "before_birth", "異動年月日 is before the birth date")
    texts = {name: _text(payload, name, required=True) for name in _REQUIRED_TEXT}
    olds = {
        name: _text(payload, name, required=False) for name in ("old_family_name", "old_family_name_kana")
    }
    return IdentityChange(
        event_id=event.id,
        occurred_at=event.occurred_at,
        resident_code=code,
        previous_resident_code=previous,
        municipality_code=place.code,
        prefecture_code=place.prefecture_code,
        family_name=cast(str, texts["family_name"]),
        given_name=cast(str, texts["given_name"]),
        family_name_kana=cast(str, texts["family_name_kana"]),
        given_name_kana=cast(str, texts["given_name_kana"]),
        old_family_name=olds["old_family_name"],
        old_family_name_kana=olds["old_family_name_kana"],
        birth_date=birth,
        sex=int(sex),
        address=cast(str, texts["address_text"]),
        individual_number=number,
        status=cast(str, status),
        reason=cast(str, _text(payload, "reason", required=True))[:40],
        reason_ja=cast(str, _text(payload, "reason_ja", required=True)),
        effective_on=effective,
        notified_on=_date(payload, "notified_on", required=False),
    )


def _scrubbed(event: DomainEvent) -> dict[str, Any]:
    """The event as a document, without the values of items that must not leave the municipality."""
    doc = event.to_document()
    payload = doc.get("payload")
    if event.type == RESTRICTION_CHANGED_IN and isinstance(payload, dict):
        measures = payload.get("measures")
        if isinstance(measures, list):
            payload["measures"] = [
                {k: (v if k in _MEASURE_KEYS else "<withheld>") for k, v in m.items()}
                if isinstance(m, dict)
                else m
                for m in measures
            ]
        doc["payload"] = {k: (v if k in _RESTRICTION_KEYS else "<withheld>") for k, v in payload.items()}
    elif isinstance(payload, dict):
        doc["payload"] = {k: (v if k in _PAYLOAD_KEYS else "<withheld>") for k, v in payload.items()}
    return doc


def quarantine(session: Session, event: DomainEvent, error: NetworkError) -> QuarantinedMessage:
    """Keep a refused message with its reason (隔離); it is never applied."""
    municipality = event.payload.get("municipality_code")
    row = QuarantinedMessage(
        event_id=event.id,
        event_type=event.type,
        key=event.key,
        municipality_code=municipality if isinstance(municipality, str) and len(municipality) == 6 else None,
        field=error.field[:100],
        rule=error.rule[:40],
        message=error.message,
        document=_scrubbed(event),
        quarantined_at=utcnow(),
    )
    session.add(row)
    session.flush()
    log.warning("quarantined %s %s: %s", event.type, event.id, error)
    return row


# --- applying a change to the copies -------------------------------------------------------------

_ITEMS = (
    "municipality_code",
    "previous_resident_code",
    "family_name",
    "given_name",
    "family_name_kana",
    "given_name_kana",
    "old_family_name",
    "old_family_name_kana",
    "birth_date",
    "sex",
    "address",
    "individual_number",
    "status",
    "reason",
    "reason_ja",
    "effective_on",
    "notified_on",
)


def _current(session: Session, model: Any, code: str, prefecture: str | None = None) -> Any:
    query = select(model).where(model.resident_code == code, current_version(model))
    if prefecture is not None:
        query = query.where(model.prefecture_code == prefecture)
    return session.scalars(query.with_for_update()).one_or_none()


def _new_version(session: Session, model: Any, current: Any, values: dict[str, Any]) -> Any:
    if current is not None:
        current.is_current = False
        session.flush()  # the partial unique index allows one current row at a time
    row = model(
        version_no=(current.version_no + 1) if current is not None else 1,
        is_current=True,
        kana_key=kana_search_key(values["family_name_kana"], values["given_name_kana"]),
        applied_at=utcnow(),
        **values,
    )
    session.add(row)
    session.flush()
    return row


def _basic(row: Any) -> dict[str, Any] | None:
    if row is None:
        return None
    return {
        "family_name": row.family_name,
        "given_name": row.given_name,
        "family_name_kana": row.family_name_kana,
        "given_name_kana": row.given_name_kana,
        "old_family_name": row.old_family_name,
        "birth_date": row.birth_date.isoformat(),
        "sex": row.sex,
        "address_text": row.address,
    }


# Gives the 個人番号 of an active person the message brings without one (the national role's
# numbering, in distributed mode; see kiban.network.distributed).
Numberer = Callable[[Session, "IdentityChange"], str | None]


def apply_identity_change(session: Session, event: DomainEvent, *, numberer: Numberer | None = None) -> str:
    """Handler of ``register.identity_changed``: apply to both copies, or quarantine.

    Returns what happened: ``applied``, ``duplicate`` (this event is already in the copy) or
    ``quarantined``. Never raises for a bad message, so a bad message cannot block its key.
    With ``numberer``, an active person without a 個人番号 gets one in the same version (付番).
    """
    try:
        change = parse_change(event)
    except NetworkError as exc:
        quarantine(session, event, exc)
        return "quarantined"
    if session.scalar(select(NationalIdentity.id).where(NationalIdentity.event_id == change.event_id)):
        return "duplicate"
    current = _current(session, NationalIdentity, change.resident_code)
    if current is not None and change.occurred_at < current.event_occurred_at:
        quarantine(
            session,
            event,
            NetworkError(
                "occurred_at",
                "out_of_order",
                f"older ({change.occurred_at.isoformat()}) than the applied version "
                f"{current.version_no} ({current.event_occurred_at.isoformat()})",
            ),
        )
        return "quarantined"
    if (
        current is not None
        and current.status == "active"
        and change.status == "active"
        and current.municipality_code != change.municipality_code
    ):
        _conflict(session, event, change, current.municipality_code)
        return "quarantined"
    values: dict[str, Any] = {name: getattr(change, name) for name in _ITEMS}
    # The national role numbers people: a message without the number does not erase it.
    if values["individual_number"] is None and current is not None:
        values["individual_number"] = current.individual_number
    if values["individual_number"] is None and change.status == "active" and numberer is not None:
        values["individual_number"] = numberer(session, change)
    values.update(
        resident_code=change.resident_code,
        prefecture_code=change.prefecture_code,
        event_id=change.event_id,
        event_occurred_at=change.occurred_at,
    )
    old = _basic(current)
    _new_version(session, NationalIdentity, current, values)
    prefectural = _current(session, PrefecturalIdentity, change.resident_code, change.prefecture_code)
    _new_version(session, PrefecturalIdentity, prefectural, values)
    if change.previous_resident_code:
        _retire_code(session, change)
    emit(
        session,
        IDENTITY_CHANGED_OUT,
        change.resident_code,
        {
            "resident_code": change.resident_code,
            "previous_resident_code": change.previous_resident_code,
            "municipality_code": change.municipality_code,
            "old": old,
            "new": _basic(_current(session, NationalIdentity, change.resident_code)),
            "status": change.status,
            "reason": change.reason,
            "reason_ja": change.reason_ja,
            "date": change.effective_on.isoformat(),
        },
        schema_version=SCHEMA_VERSION,
    )
    return "applied"


def _retire_code(session: Session, change: IdentityChange) -> None:
    """住民票コード変更: the old code's newest version closes (its history stays)."""
    assert change.previous_resident_code is not None
    for model, prefecture in ((NationalIdentity, None), (PrefecturalIdentity, change.prefecture_code)):
        old = _current(session, model, change.previous_resident_code, prefecture)
        if old is None or old.status == "removed":
            continue
        values = {name: getattr(old, name) for name in _ITEMS}
        values.update(
            resident_code=old.resident_code,
            prefecture_code=old.prefecture_code,
            status="removed",
            reason=change.reason,
            reason_ja=change.reason_ja,
            effective_on=change.effective_on,
            notified_on=change.notified_on,
            event_id=f"{change.event_id}:retired",
            event_occurred_at=change.occurred_at,
        )
        _new_version(session, model, old, values)


def _conflict(session: Session, event: DomainEvent, change: IdentityChange, active_at: str) -> None:
    """A second active registration (二重登録): quarantined, recorded, reported to both municipalities."""
    quarantine(
        session,
        event,
        NetworkError(
            "payload.municipality_code",
            "second_active_registration",
            f"{change.resident_code} is active in {active_at}; {change.municipality_code} registers it "
            "without a completed 転出/転入",
        ),
    )
    session.add(
        RegistrationConflict(
            resident_code=change.resident_code,
            active_municipality_code=active_at,
            claiming_municipality_code=change.municipality_code,
            event_id=change.event_id,
            detected_at=utcnow(),
        )
    )
    emit(
        session,
        REGISTRATION_CONFLICT,
        change.resident_code,
        {
            "resident_code": change.resident_code,
            "active_municipality_code": active_at,
            "claiming_municipality_code": change.municipality_code,
            "event_id": change.event_id,
            "notify": [active_at, change.municipality_code],
        },
    )


def apply_number(session: Session, event: DomainEvent) -> str:
    """Handler of ``numbering.number_assigned`` / ``number_reissued``: the copies learn the 個人番号.

    A person the copies do not know yet (loaded before the network ran) is left to
    :func:`seed_copies`; a bad message is quarantined.
    """
    try:
        code = _identifier(event.payload, "resident_code", validate_resident_code, required=True)
        number = _identifier(event.payload, "individual_number", validate_individual_number, required=True)
        if code != event.key:
            raise NetworkError("payload.resident_code", "key_match", "differs from the event key")
    except NetworkError as exc:
        quarantine(session, event, exc)
        return "quarantined"
    assert code is not None
    current = _current(session, NationalIdentity, code)
    if current is None:
        log.info("number for %s: not in the national copy yet", code)
        return "unknown"
    if current.individual_number == number:
        return "duplicate"
    reissued = event.type.endswith("reissued")
    for model, prefecture in ((NationalIdentity, None), (PrefecturalIdentity, current.prefecture_code)):
        row = current if prefecture is None else _current(session, model, code, prefecture)
        if row is None:
            continue
        values = {name: getattr(row, name) for name in _ITEMS}
        values.update(
            resident_code=code,
            prefecture_code=row.prefecture_code,
            individual_number=number,
            reason="individual_number_reissued" if reissued else "individual_number_assigned",
            reason_ja="個人番号の変更" if reissued else "個人番号の指定",
            effective_on=event.occurred_at.astimezone(JST).date(),
            notified_on=None,
            event_id=event.id,
            event_occurred_at=max(event.occurred_at, row.event_occurred_at),
        )
        _new_version(session, model, row, values)
    return "applied"


# --- DV等支援措置 (the copy of the municipalities' support measures) ------------------------------

_RESTRICTION_KEYS = frozenset({"resident_code", "municipality_code", "measures"})
_MEASURE_KEYS = frozenset({"id", "starts_on", "ends_on", "lifted_on"})
MAX_MEASURES = 100  # a person has a handful; more is not a state but a flood


@dataclass(frozen=True)
class Measure:
    """One support measure as the network holds it: its period and lifting, never its reason."""

    id: str
    starts_on: date
    ends_on: date
    lifted_on: date | None


@dataclass(frozen=True)
class RestrictionState:
    """A checked ``register.restriction_changed``: one municipality's whole set for one person."""

    event_id: str
    occurred_at: datetime
    resident_code: str
    municipality_code: str
    measures: tuple[Measure, ...]


def parse_restrictions(event: DomainEvent) -> RestrictionState:
    """Check a restriction message; :class:`NetworkError` names the first field that breaks a rule."""
    if event.schema_version != SCHEMA_VERSION:
        raise NetworkError("schema_version", "unsupported", f"version {event.schema_version} is not 1")
    payload = event.payload
    extra = sorted(set(payload) - _RESTRICTION_KEYS)
    if extra:
        raise NetworkError(
            f"payload.{extra[0]}", "not_identity_information", f"items {extra} stay in the municipality"
        )
    code = _identifier(payload, "resident_code", validate_resident_code, required=True)
    if code != event.key:
        raise NetworkError("payload.resident_code", "key_match", "differs from the event key")
    municipality_code = payload.get("municipality_code")
    try:
        place = master.municipality(str(municipality_code))
    except master.MasterError as exc:
        raise NetworkError("payload.municipality_code", "unknown_municipality", str(exc)) from exc
    raw = payload.get("measures")
    if not isinstance(raw, list):
        raise NetworkError("payload.measures", "required", "must be a list (empty when none)")
    if len(raw) > MAX_MEASURES:
        raise NetworkError("payload.measures", "length", f"{len(raw)} measures, at most {MAX_MEASURES}")
    measures: list[Measure] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        field = f"payload.measures[{i}]"
        if not isinstance(item, dict):
            raise NetworkError(field, "required", "must be an object")
        extra = sorted(set(item) - _MEASURE_KEYS)
        if extra:
            raise NetworkError(
                f"{field}.{extra[0]}", "not_identity_information", f"items {extra} stay in the municipality"
            )
        ident = item.get("id")
        if not isinstance(ident, str) or not ident.strip() or len(ident) > 64:
            raise NetworkError(f"{field}.id", "required", "must be a non-empty string of at most 64")
        if ident in seen:
            raise NetworkError(f"{field}.id", "duplicate", f"measure {ident} is listed twice")
        seen.add(ident)
        try:
            starts = _date(item, "starts_on")
            ends = _date(item, "ends_on")
            lifted = _date(item, "lifted_on", required=False)
        except NetworkError as exc:
            raise NetworkError(exc.field.replace("payload.", f"{field}.", 1), exc.rule, exc.message) from exc
        assert starts is not None and ends is not None
        if ends < starts:
            raise NetworkError(f"{field}.ends_on", "period", "ends before it starts")
        measures.append(Measure(ident, starts, ends, lifted))
    return RestrictionState(
        event_id=event.id,
        occurred_at=event.occurred_at,
        resident_code=cast(str, code),
        municipality_code=place.code,
        measures=tuple(measures),
    )


def apply_restrictions(session: Session, event: DomainEvent) -> str:
    """Handler of ``register.restriction_changed``: the set replaces the municipality's previous one.

    Returns ``applied``, ``duplicate`` (this state is the one held) or ``quarantined`` (malformed,
    or older than the state held: ``out_of_order``). Never raises for a bad message.
    """
    try:
        state = parse_restrictions(event)
    except NetworkError as exc:
        quarantine(session, event, exc)
        return "quarantined"
    held = session.get(RestrictionSet, (state.resident_code, state.municipality_code), with_for_update=True)
    if held is not None and held.event_id == state.event_id:
        return "duplicate"
    if held is not None and state.occurred_at < held.event_occurred_at:
        quarantine(
            session,
            event,
            NetworkError(
                "occurred_at",
                "out_of_order",
                f"older ({state.occurred_at.isoformat()}) than the state held "
                f"({held.event_occurred_at.isoformat()})",
            ),
        )
        return "quarantined"
    now = utcnow()
    if held is None:
        session.add(
            RestrictionSet(
                resident_code=state.resident_code,
                municipality_code=state.municipality_code,
                event_id=state.event_id,
                event_occurred_at=state.occurred_at,
                applied_at=now,
                measures=len(state.measures),
            )
        )
    else:
        held.event_id = state.event_id
        held.event_occurred_at = state.occurred_at
        held.applied_at = now
        held.measures = len(state.measures)
    session.execute(
        delete(RestrictionCopy).where(
            RestrictionCopy.resident_code == state.resident_code,
            RestrictionCopy.municipality_code == state.municipality_code,
        )
    )
    if state.measures:
        session.execute(
            insert(cast(Table, RestrictionCopy.__table__)),
            [
                {
                    "resident_code": state.resident_code,
                    "municipality_code": state.municipality_code,
                    "measure_id": m.id,
                    "starts_on": m.starts_on,
                    "ends_on": m.ends_on,
                    "lifted_on": m.lifted_on,
                }
                for m in state.measures
            ],
        )
    session.flush()
    return "applied"


def restrictions_of(session: Session, resident_code: str) -> list[RestrictionCopy]:
    """The measures the network holds for a person (all municipalities), by start date."""
    return list(
        session.scalars(
            select(RestrictionCopy)
            .where(RestrictionCopy.resident_code == resident_code)
            .order_by(RestrictionCopy.starts_on, RestrictionCopy.measure_id)
        )
    )


def seed_copies(session: Session, municipality_codes: Sequence[str] | None = None) -> int:
    """初期登録: copy the active residents that the copies do not hold yet (a register loaded in bulk).

    Returns how many people were added. The version carries reason ``initial_load``.
    """
    known = select(NationalIdentity.resident_code).where(current_version(NationalIdentity))
    query = select(Resident).where(Resident.status == "active", Resident.resident_code.not_in(known))
    if municipality_codes:
        query = query.where(Resident.municipality_code.in_(list(municipality_codes)))
    now = utcnow()
    national: list[dict[str, Any]] = []
    for r in session.scalars(query.order_by(Resident.resident_code)):
        text = f"{r.prefecture}{r.municipality}{r.town}{r.banchi}"
        national.append(
            {
                "resident_code": r.resident_code,
                "prefecture_code": r.municipality_code[:2],
                "municipality_code": r.municipality_code,
                "version_no": 1,
                "is_current": True,
                "previous_resident_code": None,
                "family_name": r.family_name,
                "given_name": r.given_name,
                "family_name_kana": r.family_name_kana,
                "given_name_kana": r.given_name_kana,
                "old_family_name": r.old_family_name,
                "old_family_name_kana": r.old_family_name_kana,
                "kana_key": kana_search_key(r.family_name_kana, r.given_name_kana),
                "birth_date": r.birth_date,
                "sex": r.sex,
                "address": f"{text}　{r.katagaki}" if r.katagaki else text,
                "individual_number": r.individual_number,
                "status": "active",
                "reason": "initial_load",
                "reason_ja": "初期登録",
                "effective_on": r.address_since or r.birth_date,
                "notified_on": None,
                "event_id": f"initial:{r.id}",
                "event_occurred_at": now,
                "applied_at": now,
            }
        )
    for start in range(0, len(national), 2000):
        chunk = national[start : start + 2000]
        session.execute(insert(cast(Table, NationalIdentity.__table__)), chunk)
        session.execute(insert(cast(Table, PrefecturalIdentity.__table__)), chunk)
    return len(national)


INITIAL_LOAD = "network.initial_load"  # 初期登録 sent by a municipal node (distributed mode)
INITIAL_LOAD_MAX = 2_000  # persons in one message (a larger one is refused whole)


def initial_load_person(r: Resident) -> dict[str, Any]:
    """One active resident's 本人確認情報 for an ``initial_load`` message (only the allowed items)."""
    text = f"{r.prefecture}{r.municipality}{r.town}{r.banchi}"
    person: dict[str, Any] = {
        "resident_code": r.resident_code,
        "previous_resident_code": None,
        "municipality_code": r.municipality_code,
        "family_name": r.family_name,
        "given_name": r.given_name,
        "family_name_kana": r.family_name_kana,
        "given_name_kana": r.given_name_kana,
        "old_family_name": r.old_family_name,
        "old_family_name_kana": r.old_family_name_kana,
        "birth_date": r.birth_date.isoformat(),
        "sex": r.sex,
        "address_text": f"{text}　{r.katagaki}" if r.katagaki else text,
        "individual_number": r.individual_number,
        "status": "active",
        "reason": "initial_load",
        "reason_ja": "初期登録",
        "effective_on": (r.address_since or r.birth_date).isoformat(),
        "notified_on": None,
    }
    assert set(person) <= _PAYLOAD_KEYS  # nothing but 本人確認情報 leaves the municipality
    return person


@dataclass(frozen=True)
class InitialLoadResult:
    """What one ``initial_load`` message did on the national node."""

    applied: int  # new people in the copies (version 1, 初期登録)
    present: int  # already in the copies (a replayed chunk, or a change that came first)
    quarantined: int  # persons that broke a rule (each in network_quarantine with its reason)


def apply_initial_load(
    session: Session, event: DomainEvent, *, numberer: Numberer | None = None
) -> InitialLoadResult:
    """Handler of ``network.initial_load``: 初期登録 of a municipality's active residents, in chunks.

    Payload: ``municipality_code`` and ``persons`` (each as :func:`initial_load_person`; the
    message's key is the municipality). Each person is checked like a change (every rule of
    :func:`parse_change`; a bad one is quarantined alone) and written as version 1 ``initial_load``
    unless the copies already hold the 住民票コード, in any status: a change that arrived first is
    newer than the register's state when the load read it. So a chunk applies once however often
    it is sent (idempotent) and a load can be resent from any point (resumable). With
    ``numberer``, a person without a 個人番号 gets one, as a change would.
    """
    payload = event.payload
    municipality = payload.get("municipality_code")
    persons = payload.get("persons")
    if set(payload) - {"municipality_code", "persons"} or not isinstance(persons, list):
        error = NetworkError("payload", "required", "municipality_code and a list of persons, nothing else")
        quarantine(session, event, error)
        return InitialLoadResult(0, 0, 1)
    if len(persons) > INITIAL_LOAD_MAX:
        error = NetworkError("payload.persons", "length", f"at most {INITIAL_LOAD_MAX} persons a message")
        quarantine(session, event, error)
        return InitialLoadResult(0, 0, 1)
    changes: list[IdentityChange] = []
    quarantined = 0
    for i, person in enumerate(persons):
        code = person.get("resident_code") if isinstance(person, dict) else None
        one = DomainEvent(
            id=f"initial:{municipality}:{code if isinstance(code, str) else i}"[:64],
            type=IDENTITY_CHANGED_IN,
            key=code if isinstance(code, str) else "",
            schema_version=event.schema_version,
            occurred_at=event.occurred_at,
            payload=person if isinstance(person, dict) else {"person": person},
            source=event.source,
        )
        try:
            change = parse_change(one)
            if change.municipality_code != municipality or change.status != "active":
                raise NetworkError("payload.municipality_code", "key_match", "a person of another load")
        except NetworkError as exc:
            if not session.scalar(
                select(QuarantinedMessage.id).where(QuarantinedMessage.event_id == one.id).limit(1)
            ):
                quarantine(session, one, exc)
            quarantined += 1
            continue
        changes.append(change)
    codes = [c.resident_code for c in changes]
    held = set(
        session.scalars(
            select(NationalIdentity.resident_code).where(NationalIdentity.resident_code.in_(codes))
        )
    )
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for change in changes:
        if change.resident_code in held:
            continue
        held.add(change.resident_code)  # a code twice in one chunk applies once
        values: dict[str, Any] = {name: getattr(change, name) for name in _ITEMS}
        if values["individual_number"] is None and numberer is not None:
            values["individual_number"] = numberer(session, change)
        values.update(
            resident_code=change.resident_code,
            prefecture_code=change.prefecture_code,
            event_id=change.event_id,
            event_occurred_at=change.occurred_at,
            version_no=1,
            is_current=True,
            kana_key=kana_search_key(change.family_name_kana, change.given_name_kana),
            applied_at=now,
        )
        rows.append(values)
    if rows:
        session.execute(insert(cast(Table, NationalIdentity.__table__)), rows)
        session.execute(insert(cast(Table, PrefecturalIdentity.__table__)), rows)
    return InitialLoadResult(len(rows), len(changes) - len(rows), quarantined)


# --- replication status --------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicationStatus:
    """Per municipality: the newest change applied to the national copy and how late it came."""

    municipality_code: str
    prefecture_code: str
    versions: int  # versions applied from this municipality
    last_event_id: str | None  # None: nothing applied yet (only quarantined messages)
    last_occurred_at: datetime | None
    last_applied_at: datetime | None
    lag: timedelta | None  # applied - occurred, of the newest applied change
    quarantined: int  # messages from this municipality waiting in quarantine


def replication_status(session: Session) -> list[ReplicationStatus]:
    """Replication lag per municipality (the operator screen and /metrics read this)."""
    n = NationalIdentity
    newest = (
        select(n.municipality_code, func.max(n.applied_at).label("applied"), func.count().label("versions"))
        .where(~n.event_id.like("initial:%"))
        .group_by(n.municipality_code)
        .subquery()
    )
    rows = session.execute(
        select(n, newest.c.versions)
        .join(
            newest, and_(n.municipality_code == newest.c.municipality_code, n.applied_at == newest.c.applied)
        )
        .order_by(n.municipality_code, n.id.desc())
    ).all()
    waiting: dict[str | None, int] = {
        m: c
        for m, c in session.execute(
            select(QuarantinedMessage.municipality_code, func.count())
            .where(QuarantinedMessage.released_at.is_(None))
            .group_by(QuarantinedMessage.municipality_code)
        )
    }
    out: dict[str, ReplicationStatus] = {}
    for row, versions in rows:
        if row.municipality_code in out:
            continue
        out[row.municipality_code] = ReplicationStatus(
            municipality_code=row.municipality_code,
            prefecture_code=row.prefecture_code,
            versions=versions,
            last_event_id=row.event_id,
            last_occurred_at=row.event_occurred_at,
            last_applied_at=row.applied_at,
            lag=row.applied_at - row.event_occurred_at,
            quarantined=waiting.get(row.municipality_code, 0),
        )
    for code, count in waiting.items():
        if code is not None and code not in out:
            out[code] = ReplicationStatus(code, code[:2], 0, None, None, None, None, count)
    return sorted(out.values(), key=lambda st: st.municipality_code)


def national_history(session: Session, resident_code: str) -> list[NationalIdentity]:
    """Every version of a person's 機構保存本人確認情報, oldest first."""
    return list(
        session.scalars(
            select(NationalIdentity)
            .where(NationalIdentity.resident_code == resident_code)
            .order_by(NationalIdentity.version_no)
        )
    )


def prefectural_history(
    session: Session, prefecture_code: str, resident_code: str
) -> list[PrefecturalIdentity]:
    """Every version of a person's 都道府県知事保存本人確認情報 held by one prefecture, oldest first."""
    return list(
        session.scalars(
            select(PrefecturalIdentity)
            .where(
                PrefecturalIdentity.prefecture_code == prefecture_code,
                PrefecturalIdentity.resident_code == resident_code,
            )
            .order_by(PrefecturalIdentity.version_no)
        )
    )


# --- agencies and uses ---------------------------------------------------------------------------


def _registry_document(path: Path | None) -> dict[str, Any]:
    if path is None:
        text = resources.files("kiban.network").joinpath("data/uses.json").read_text(encoding="utf-8")
    else:
        text = path.read_text(encoding="utf-8")
    return cast(dict[str, Any], json.loads(text))


def load_registry(session: Session, path: Path | None = None) -> tuple[int, int]:
    """Load the agencies and their statutory uses from the data file (replacing what was there).

    Returns (agencies, uses). A use naming an unknown item, an unknown policy or an agency naming
    an unknown use raises :class:`NetworkError` and loads nothing.
    """
    doc = _registry_document(path)
    uses = doc.get("uses") or []
    agencies = doc.get("agencies") or []
    codes = set()
    for i, use in enumerate(uses):
        unknown = set(use.get("items") or []) - set(ITEM_COLUMNS)
        if unknown or not use.get("items"):
            raise NetworkError(f"uses[{i}].items", "known_items", f"unknown or no items: {sorted(unknown)}")
        if use.get("restricted_policy") not in RESTRICTED_POLICIES:
            raise NetworkError(f"uses[{i}].restricted_policy", "policy", f"one of {RESTRICTED_POLICIES}")
        codes.add(use["code"])
    for i, agency in enumerate(agencies):
        unknown = set(agency.get("uses") or []) - codes
        if unknown:
            raise NetworkError(f"agencies[{i}].uses", "known_uses", f"unknown uses {sorted(unknown)}")
    session.execute(delete(AgencyUse))
    session.execute(delete(Agency))
    session.execute(delete(StatutoryUse))
    session.flush()
    for use in uses:
        session.add(
            StatutoryUse(
                code=use["code"],
                name=use["name"],
                legal_basis=use["legal_basis"],
                items=list(use["items"]),
                restricted_policy=use["restricted_policy"],
            )
        )
    for agency in agencies:
        session.add(Agency(code=agency["code"], name=agency["name"], kind=agency["kind"]))
        for use_code in agency.get("uses") or []:
            session.add(AgencyUse(agency_code=agency["code"], use_code=use_code))
    session.flush()
    return len(agencies), len(uses)


@dataclass(frozen=True)
class _Permit:
    agency: str
    use: StatutoryUse | None
    rule: str | None  # why not permitted


def _permit(session: Session, agency_code: str, use_code: str) -> _Permit:
    if session.get(Agency, agency_code) is None:
        return _Permit(agency_code, None, "unknown_agency")
    use = session.get(StatutoryUse, use_code)
    if use is None:
        return _Permit(agency_code, None, "unknown_use")
    if session.get(AgencyUse, (agency_code, use_code)) is None:
        return _Permit(agency_code, use, "use_not_allowed")
    return _Permit(agency_code, use, None)


# --- provision -----------------------------------------------------------------------------------

# A bulk row: a query, its fields, or the reader's verdict that the line is bad.
BulkRow = ProvisionQuery | Mapping[str, Any] | NetworkError


def _restricted(session: Session, codes: Iterable[str], on: date) -> set[str]:
    """The codes under a DV等支援措置 in force on ``on``, read from the network's own copy."""
    codes = list(codes)
    found: set[str] = set()
    r = RestrictionCopy
    for start in range(0, len(codes), 1000):
        found.update(
            session.scalars(
                select(r.resident_code).where(
                    r.resident_code.in_(codes[start : start + 1000]),
                    r.starts_on <= on,
                    r.ends_on >= on,
                    or_(r.lifted_on.is_(None), r.lifted_on > on),
                )
            )
        )
    return found


def is_restricted(session: Session, resident_code: str, on: date | None = None) -> bool:
    """Whether a DV等支援措置 of any municipality is in force for the person (the network's copy)."""
    return bool(_restricted(session, [resident_code], on or datetime.now(JST).date()))


def _items_of(row: NationalIdentity, items: Sequence[str]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for item in items:
        for column in ITEM_COLUMNS[item]:
            value = getattr(row, column)
            data[column] = value.isoformat() if isinstance(value, date) else value
    return data


def _find(session: Session, query: ProvisionQuery) -> list[NationalIdentity]:
    n = NationalIdentity
    where: list[Any] = [current_version(n)]
    if query.resident_code is not None:
        where.append(n.resident_code == query.resident_code)
    elif query.individual_number is not None:
        where.append(n.individual_number == query.individual_number)
    else:
        assert query.address_prefix is not None
        where += [
            n.kana_key == query.name_kana,
            n.birth_date == query.birth_date,
            n.sex == query.sex,
            n.address.startswith(query.address_prefix, autoescape=True),
        ]
    return list(session.scalars(select(n).where(*where).order_by(n.resident_code).limit(BASIC4_LIMIT + 1)))


@dataclass
class _Outcome:
    answer: Answer
    resident_code: str | None
    query_kind: str


def _answer(
    permit: _Permit,
    query: ProvisionQuery,
    matches: list[NationalIdentity],
    restricted: set[str],
    row_no: int | None,
) -> _Outcome:
    kind = query.kind
    asked = query.resident_code
    if permit.rule is not None:
        answer = Answer(row=row_no, outcome="refused", rule=permit.rule, message=_REFUSALS[permit.rule])
        return _Outcome(answer, asked, kind)
    use = permit.use
    assert use is not None
    if kind == "individual_number" and "individual_number" not in use.items:
        answer = Answer(
            row=row_no, outcome="refused", rule="number_not_allowed", message=_REFUSALS["number_not_allowed"]
        )
        return _Outcome(answer, None, kind)
    if not matches:
        return _Outcome(Answer(row=row_no, outcome="not_found"), asked, kind)
    if len(matches) > 1:
        return _Outcome(
            Answer(row=row_no, outcome="ambiguous", message=f"{len(matches)} or more persons match"),
            None,
            kind,
        )
    person = matches[0]
    items = list(use.items)
    is_restricted = person.resident_code in restricted
    if is_restricted:
        if use.restricted_policy == "refuse":
            answer = Answer(
                row=row_no, outcome="refused", rule=DV_FLAG, message=_REFUSALS[DV_FLAG], restricted=True
            )
            return _Outcome(answer, person.resident_code, kind)
        if use.restricted_policy == "withhold_address":
            items = [i for i in items if i != "address"]
    answer = Answer(
        row=row_no,
        outcome="provided",
        items=items,
        data=_items_of(person, items),
        restricted=is_restricted,
    )
    return _Outcome(answer, person.resident_code, kind)


_REFUSALS = {
    "unknown_agency": "the agency is not registered",
    "unknown_use": "no such statutory use (事務)",
    "use_not_allowed": "this use (事務) is not one the agency may make",
    "number_not_allowed": "this use may not receive or search by the 個人番号",
    DV_FLAG: "a DV等支援措置 is in force and this use may not receive the person's information",
}


def _log(
    session: Session,
    outcomes: Sequence[_Outcome],
    agency_code: str,
    use_code: str,
    *,
    now: datetime,
    job_id: uuid.UUID | None = None,
) -> None:
    """Write the provision log and the audit entries of ``outcomes`` (in the caller's transaction)."""
    rows: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    for o in outcomes:
        a = o.answer
        rows.append(
            {
                "provided_at": now,
                "agency_code": agency_code[:40],
                "use_code": use_code[:40],
                "resident_code": o.resident_code,
                "query_kind": o.query_kind,
                "outcome": a.outcome,
                "rule": a.rule,
                "items": a.items,
                "restricted": a.restricted,
                "job_id": job_id,
                "row_no": a.row,
            }
        )
        if a.outcome in ("provided", "refused"):
            detail: dict[str, Any] = {"query": o.query_kind, "outcome": a.outcome}
            if a.rule:
                detail["rule"] = a.rule
            if job_id is not None:
                detail["job"] = str(job_id)
                detail["row"] = a.row
            entries.append(
                {
                    "actor": agency_code[:64] or "?",
                    "role": "agency",
                    "action": "provide" if a.outcome == "provided" else "refuse",
                    "purpose": use_code[:200] or "?",
                    "subject": o.resident_code or "",
                    "items": a.items,
                    "organisation": agency_code[:64] or None,
                    "detail": detail,
                    "flags": [DV_FLAG] if a.restricted else [],
                    "occurred_at": now,
                }
            )
    if rows:
        session.execute(insert(cast(Table, Provision.__table__)), rows)
    audit.record_many(session, entries)


def provide(
    session: Session,
    agency_code: str,
    use_code: str,
    query: ProvisionQuery | Mapping[str, Any],
    *,
    on: date | None = None,
) -> Answer:
    """本人確認情報の提供: one query by an agency for one statutory use.

    A malformed query raises :class:`NetworkError` (nothing logged: there is nothing to log). A
    use the agency may not make is refused: the answer carries no data and the refusal is logged.
    Otherwise the answer carries only the use's items; a person under a DV等支援措置 is provided
    as the use's policy says, and the read is flagged. Everything is logged in the caller's
    transaction.
    """
    parsed = _parse_query(query, None)
    permit = _permit(session, agency_code, use_code)
    matches = _find(session, parsed) if permit.rule is None else []
    day = on if on is not None else datetime.now(JST).date()
    restricted = _restricted(session, [m.resident_code for m in matches], day) if matches else set()
    outcome = _answer(permit, parsed, matches, restricted, None)
    _log(session, [outcome], agency_code, use_code, now=utcnow())
    return outcome.answer


def _parse_query(query: ProvisionQuery | Mapping[str, Any], row: int | None) -> ProvisionQuery:
    if isinstance(query, ProvisionQuery):
        return query
    try:
        return ProvisionQuery.model_validate(dict(query))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "query"
        message = first["msg"]
        rule = "invalid"
        ctx_error = (first.get("ctx") or {}).get("error")
        if isinstance(ctx_error, (IdentifierError, NetworkError)):
            rule = ctx_error.rule
        elif "(rule: " in message:
            rule = message.rsplit("(rule: ", 1)[1].rstrip(")")
        prefix = f"rows[{row}]." if row is not None else ""
        raise NetworkError(f"{prefix}{field}", rule, message) from exc
    except TypeError as exc:
        raise NetworkError("query", "mapping", "each query must be a mapping of fields") from exc


def create_bulk_job(session: Session, agency_code: str, use_code: str) -> uuid.UUID:
    """Open a bulk provision (一括提供) for ``agency_code`` and ``use_code``; returns its id.

    The job is created even for a use the agency may not make: every row is then refused and
    logged, as a single query would be.
    """
    job = BulkJob(
        agency_code=agency_code[:40],
        use_code=use_code[:40],
        created_at=utcnow(),
        next_row=0,
        provided=0,
        failed=0,
    )
    session.add(job)
    session.flush()
    return job.id


def provide_bulk(
    factory: sessionmaker[Session],
    job_id: uuid.UUID,
    rows: Iterable[BulkRow],
    *,
    start: int | None = None,
    chunk_size: int = 1000,
    on: date | None = None,
) -> Iterator[Answer]:
    """一括提供: answer a file of queries, streamed, one committed chunk at a time.

    Every answer carries its ``row`` number (0-based). A chunk's answers are yielded only after
    its log and audit entries and the job's cursor (``next_row``) have committed, so an answer
    is never out without its record. To resume after a broken stream, call again with the same
    job and the same rows: by default from the cursor (rows already answered are not answered
    again); a client that lost answers it had not yet received passes ``start`` = the first row
    it lacks (at most the cursor), and those rows are provided — and logged — again. A bad row
    gets an ``invalid`` answer naming its field and rule; the others go on.
    """
    if chunk_size < 1:
        raise NetworkError("chunk_size", "positive", "must be at least 1")
    day = on if on is not None else datetime.now(JST).date()
    with factory() as session:
        job = session.get(BulkJob, job_id)
        if job is None:
            raise NetworkError("job_id", "unknown_job", f"no bulk job {job_id}")
        if job.finished_at is not None and start is None:
            raise NetworkError(
                "job_id", "finished", f"bulk job {job_id} is finished (give start to re-fetch)"
            )
        agency_code, use_code = job.agency_code, job.use_code
        if start is None:
            start = job.next_row
        elif not 0 <= start <= job.next_row:
            raise NetworkError(
                "start", "within_cursor", f"must be between 0 and the job's cursor {job.next_row}"
            )
    chunk: list[tuple[int, BulkRow]] = []
    for row_no, row in enumerate(rows):
        if row_no < start:
            continue
        chunk.append((row_no, row))
        if len(chunk) >= chunk_size:
            yield from _bulk_chunk(factory, agency_code, use_code, chunk, job_id, day)
            chunk = []
    if chunk:
        yield from _bulk_chunk(factory, agency_code, use_code, chunk, job_id, day)
    with transaction(factory) as session:
        done = session.get(BulkJob, job_id)
        if done is not None and done.finished_at is None:
            done.finished_at = utcnow()


def _bulk_chunk(
    factory: sessionmaker[Session],
    agency_code: str,
    use_code: str,
    chunk: list[tuple[int, BulkRow]],
    job_id: uuid.UUID,
    day: date,
) -> list[Answer]:
    with transaction(factory) as session:
        permit = _permit(session, agency_code, use_code)
        parsed: list[tuple[int, ProvisionQuery | NetworkError]] = []
        for row_no, row in chunk:
            if isinstance(row, NetworkError):  # the file reader already found it bad
                parsed.append((row_no, row))
                continue
            try:
                parsed.append((row_no, _parse_query(row, row_no)))
            except NetworkError as exc:
                parsed.append((row_no, exc))
        by_code: dict[str, NationalIdentity] = {}
        by_number: dict[str, NationalIdentity] = {}
        if permit.rule is None:
            n = NationalIdentity
            codes = [q.resident_code for _, q in parsed if isinstance(q, ProvisionQuery) and q.resident_code]
            numbers = [
                q.individual_number
                for _, q in parsed
                if isinstance(q, ProvisionQuery) and q.individual_number
            ]
            if codes:
                found = select(n).where(current_version(n), n.resident_code.in_(codes))
                by_code = {r.resident_code: r for r in session.scalars(found)}
            if numbers and permit.use is not None and "individual_number" in permit.use.items:
                found = select(n).where(current_version(n), n.individual_number.in_(numbers))
                by_number = {cast(str, r.individual_number): r for r in session.scalars(found)}
        outcomes: list[_Outcome] = []
        matched: list[tuple[int, ProvisionQuery, list[NationalIdentity]]] = []
        for row_no, q in parsed:
            if isinstance(q, NetworkError):
                continue
            if permit.rule is not None:
                matches: list[NationalIdentity] = []
            elif q.resident_code is not None:
                matches = [by_code[q.resident_code]] if q.resident_code in by_code else []
            elif q.individual_number is not None:
                matches = [by_number[q.individual_number]] if q.individual_number in by_number else []
            else:
                matches = _find(session, q)
            matched.append((row_no, q, matches))
        restricted = _restricted(session, {m.resident_code for _, _, ms in matched for m in ms}, day)
        results: dict[int, _Outcome] = {}
        for row_no, q, matches in matched:
            results[row_no] = _answer(permit, q, matches, restricted, row_no)
        for row_no, q in parsed:
            if isinstance(q, NetworkError):
                results[row_no] = _Outcome(
                    Answer(row=row_no, outcome="invalid", field=q.field, rule=q.rule, message=q.message),
                    None,
                    "invalid",
                )
        outcomes = [results[row_no] for row_no, _ in chunk]
        _log(session, outcomes, agency_code, use_code, now=utcnow(), job_id=job_id)
        job = session.get(BulkJob, job_id, with_for_update=True)
        assert job is not None
        job.next_row = max(job.next_row, chunk[-1][0] + 1)
        job.provided += sum(o.answer.outcome == "provided" for o in outcomes)
        job.failed += sum(o.answer.outcome != "provided" for o in outcomes)
    return [o.answer for o in outcomes]


# --- disclosure ----------------------------------------------------------------------------------


def provisions_about(
    session: Session,
    resident_code: str,
    year: int,
    *,
    actor: str = "resident",
    role: str = "resident",
) -> list[DisclosureEntry]:
    """提供状況の開示: who received this person's information in ``year`` (JST), when, for which use.

    Only provisions (not refusals, which gave nothing). The disclosure itself is an audited read.
    """
    code = validate_resident_code(resident_code)
    start = datetime(year, 1, 1, tzinfo=JST).astimezone(UTC)
    end = datetime(year + 1, 1, 1, tzinfo=JST).astimezone(UTC)
    rows = session.execute(
        select(Provision, Agency.name, StatutoryUse.name)
        .outerjoin(Agency, Agency.code == Provision.agency_code)
        .outerjoin(StatutoryUse, StatutoryUse.code == Provision.use_code)
        .where(
            Provision.resident_code == code,
            Provision.outcome == "provided",
            Provision.provided_at >= start,
            Provision.provided_at < end,
        )
        .order_by(Provision.provided_at, Provision.id)
    ).all()
    audit.audited_read(
        session,
        actor=actor,
        role=role,
        purpose="提供状況の開示",
        subject=code,
        items=["provision_record"],
        detail={"year": year, "entries": len(rows)},
    )
    return [
        DisclosureEntry(
            provided_at=p.provided_at,
            agency_code=p.agency_code,
            agency_name=agency_name or p.agency_code,
            use_code=p.use_code,
            use_name=use_name or p.use_code,
            items=list(p.items),
        )
        for p, agency_name, use_name in rows
    ]


def bulk_job(session: Session, job_id: uuid.UUID) -> BulkJob | None:
    """The state of a bulk provision (its cursor ``next_row``, counts, ``finished_at``)."""
    return session.get(BulkJob, job_id)


def quarantined(session: Session, *, include_released: bool = False) -> list[QuarantinedMessage]:
    """The quarantine queue, oldest first."""
    query = select(QuarantinedMessage).order_by(QuarantinedMessage.id)
    if not include_released:
        query = query.where(QuarantinedMessage.released_at.is_(None))
    return list(session.scalars(query))


def release_quarantined(session: Session, quarantine_id: int, *, actor: str) -> str:
    """Apply a quarantined ``register.identity_changed`` message again, after its cause was fixed.

    (An operator resolved the conflicting registration, the master learned a new municipality…)
    When it applies now, the quarantine row is released and a conflict it caused is resolved;
    when it still breaks a rule, :class:`NetworkError` says which, and nothing changes. It is
    applied as of now (its original time is in the quarantine row's document). A
    message whose withheld items were stripped can never apply: the municipality must resend.
    """
    row = session.get(QuarantinedMessage, quarantine_id, with_for_update=True)
    if row is None or row.released_at is not None:
        raise NetworkError("quarantine_id", "not_quarantined", f"no quarantined message {quarantine_id}")
    if row.event_type != IDENTITY_CHANGED_IN:
        raise NetworkError("quarantine_id", "not_a_change", f"{row.event_type} messages are not re-applied")
    original = DomainEvent.from_document(row.document)
    # The release is the operator's decision now: the message takes its place after what has been
    # applied meanwhile (else the conflict's own resolution would make it out of order).
    event = DomainEvent(**{**original.__dict__, "occurred_at": utcnow()})
    # A savepoint: when it is quarantined again, the new quarantine row goes with the rollback.
    with session.begin_nested():
        outcome = apply_identity_change(session, event)
        if outcome == "quarantined":
            again = session.scalars(
                select(QuarantinedMessage)
                .where(QuarantinedMessage.event_id == event.id, QuarantinedMessage.id != row.id)
                .order_by(QuarantinedMessage.id.desc())
            ).first()
            assert again is not None
            raise NetworkError(again.field, again.rule, again.message)
    now = utcnow()
    row.released_at = now
    for conflict in session.scalars(
        select(RegistrationConflict).where(
            RegistrationConflict.event_id == event.id, RegistrationConflict.resolved_at.is_(None)
        )
    ):
        conflict.resolved_at = now
    audit.record(
        session,
        actor=actor,
        role="operator",
        action="release",
        purpose="隔離された異動情報の再適用",
        subject=event.key,
        items=[],
        detail={"quarantine_id": quarantine_id, "outcome": outcome, "rule": row.rule},
    )
    return outcome


class ReplicationCollector:
    """Prometheus gauges of replication: lag and quarantine per municipality (read at each scrape).

    Register with ``metrics.registry.register(ReplicationCollector(session_factory))``.
    """

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self._factory = factory

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        lag = GaugeMetricFamily(
            "kiban_network_replication_lag_seconds",
            "Lag of the newest change applied to the national copy, per municipality.",
            labels=["municipality", "prefecture"],
        )
        waiting = GaugeMetricFamily(
            "kiban_network_quarantined",
            "Change messages waiting in quarantine, per municipality.",
            labels=["municipality", "prefecture"],
        )
        try:
            with self._factory() as session:
                statuses = replication_status(session)
        except Exception:  # an unreachable database shows as missing gauges
            log.warning("replication status unavailable for /metrics")
            return
        for st in statuses:
            labels = [st.municipality_code, st.prefecture_code]
            if st.lag is not None:
                lag.add_metric(labels, st.lag.total_seconds())
            waiting.add_metric(labels, st.quarantined)
        yield lag
        yield waiting


def read_bulk_csv(
    lines: Iterable[bytes],
    *,
    declared_size: int | None = None,
    max_bytes: int = MAX_BULK_BYTES,
) -> Iterator[BulkRow]:
    """Rows of a bulk file (UTF-8 CSV, a header naming columns of :data:`BULK_COLUMNS`), lazily.

    A file that claims more than ``max_bytes``, or grows past it, or whose header is not UTF-8
    or names unknown or repeated columns, raises :class:`NetworkError` (``file`` / ``header``).
    A bad line does not stop the file: it becomes a :class:`NetworkError` row (``rows[i]``:
    ``utf8``, ``columns``, ``empty``, ``duplicate_row``) that :func:`provide_bulk` answers as
    ``invalid``. Row ``i`` is the i-th line after the header. Fields cannot span lines.
    """
    if declared_size is not None and declared_size > max_bytes:
        raise NetworkError("file", "too_large", f"{declared_size} bytes claimed; at most {max_bytes}")
    import csv
    import hashlib

    it = iter(lines)
    total = 0
    header_line = next(it, b"")
    total += len(header_line)
    try:
        header_text = header_line.decode("utf-8-sig").strip("\r\n")
    except UnicodeDecodeError as exc:
        raise NetworkError("header", "utf8", "the file must be UTF-8") from exc
    header = [h.strip() for h in next(csv.reader([header_text]), [])]
    unknown = [h for h in header if h not in BULK_COLUMNS]
    if not header or unknown or len(set(header)) != len(header):
        raise NetworkError(
            "header", "columns", f"columns must be distinct names from {list(BULK_COLUMNS)}; got {header}"
        )
    seen: dict[int, int] = {}
    for i, raw in enumerate(it):
        total += len(raw)
        if total > max_bytes:
            raise NetworkError("file", "too_large", f"more than {max_bytes} bytes")
        try:
            text = raw.decode("utf-8").strip("\r\n")
        except UnicodeDecodeError:
            yield NetworkError(f"rows[{i}]", "utf8", "the line is not UTF-8")
            continue
        if not text.strip():
            yield NetworkError(f"rows[{i}]", "empty", "an empty line")
            continue
        fields = next(csv.reader([text]), [])
        if len(fields) != len(header):
            yield NetworkError(f"rows[{i}]", "columns", f"{len(fields)} fields; the header has {len(header)}")
            continue
        if i < DUPLICATE_WINDOW:
            digest = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
            first = seen.get(digest)
            if first is not None:
                yield NetworkError(f"rows[{i}]", "duplicate_row", f"the same query as row {first}")
                continue
            seen[digest] = i
        row: dict[str, Any] = {k: v.strip() for k, v in zip(header, fields, strict=True) if v.strip()}
        if "sex" in row and row["sex"] in ("1", "2"):
            row["sex"] = int(row["sex"])
        yield row
