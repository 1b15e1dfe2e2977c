"""転出証明書情報 through the network (SPEC K2 "転出/転入 linkage", §8).

The register at the origin emits ``register.moved_out`` (the 転出証明書情報); the network role
checks it and forwards it as ``network.move_out_forwarded``, addressed to the destination
municipality, whose register keeps it until the 転入 (:mod:`kiban.register.handlers`). The 転入
completes it: ``register.moved_in`` (転入通知) goes back the same way as
``network.move_in_forwarded``, addressed to the origin.

Checks before forwarding a 転出証明書情報 (a message that fails one is quarantined in
``network_quarantine`` with the field and the rule, never forwarded):

- ``unsupported``: schema version other than 1;
- ``not_certificate_information``: an item that is not part of the 転出証明書情報 (住基法施行令
  23・24条 as the register sends it; the quarantine keeps only the 本人確認情報 values);
- ``required`` / ``iso_date`` / ``uuid`` / ``sex_code`` / identifier rules: malformed items;
- ``key_match``: the payload's 住民票コード is not the event key;
- ``unknown_municipality``: origin or destination not in the master (or a ward of a
  designated city, as for the copies);
- ``same_municipality``: the destination is the origin (a move within it is a 転居);
- ``origin_mismatch``: the national copy has the person (active, or removed by this very 転出)
  in another municipality than the one that issued the certificate.

Idempotent: the forwarded event's id is derived from the incoming event's id, and a certificate
already forwarded (same ``certificate_id``) is not forwarded again (``duplicate``), so a replay
through any path applies once; the register's handler also ignores a certificate it already holds.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from datetime import date
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from kiban.core import master
from kiban.core.events import DomainEvent, Registry, emit
from kiban.core.identifiers import IdentifierError, validate_individual_number, validate_resident_code
from kiban.core.models.events import OutboxEvent
from kiban.network.models import NationalIdentity, current_version
from kiban.network.service import NetworkError, quarantine

log = logging.getLogger(__name__)

MOVED_OUT = "register.moved_out"
MOVED_IN = "register.moved_in"
MOVE_OUT_FORWARDED = "network.move_out_forwarded"
MOVE_IN_FORWARDED = "network.move_in_forwarded"
SCHEMA_VERSION = 1
# Forwarded event ids are derived from the incoming event's id: a second run makes the same id.
_FORWARD_NAMESPACE = uuid.UUID("6f1d3c52-8a0e-4c7b-9d55-2b7f0e4a9c11")

# The 転出証明書情報 as the register sends it (register.moved_out v1): nothing else travels.
CERTIFICATE_KEYS = frozenset(
    {
        "certificate_id",
        "group_id",
        "resident_code",
        "individual_number",
        "from_municipality_code",
        "to_municipality_code",
        "destination_address",
        "planned_move_on",
        "notified_on",
        "family_name",
        "given_name",
        "family_name_kana",
        "given_name_kana",
        "old_family_name",
        "old_family_name_kana",
        "alias",
        "alias_kana",
        "romaji_name",
        "birth_date",
        "sex",
        "relationship",
        "head_name",
        "address",
        "address_text",
        "address_since",
        "honseki",
        "hittousha",
        "nationality",
        "residence_status",
        "period_of_stay_end",
        "residence_card_number",
        "foreign_resident_since",
        "national_health_insurance",
        "national_pension",
    }
)
_ADDRESS_KEYS = frozenset({"postal_code", "prefecture", "municipality", "town", "banchi", "katagaki"})
# 転入通知 (register.moved_in v1).
MOVE_IN_KEYS = frozenset(
    {"certificate_id", "resident_code", "from_municipality_code", "to_municipality_code", "effective_on"}
)


# --- checks --------------------------------------------------------------------------------------


def _field(name: str) -> str:
    return f"payload.{name}"


def _text(payload: Mapping[str, Any], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value.strip():
        raise NetworkError(_field(name), "required", "must be a non-empty string")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise NetworkError(_field(name), "control_characters", "must not contain control characters")
    return value


def _iso_date(payload: Mapping[str, Any], name: str) -> date:
    value = payload.get(name)
    try:
        if isinstance(value, str):
            return date.fromisoformat(value)
    except ValueError:
        pass
    raise NetworkError(_field(name), "iso_date", "must be an ISO date (YYYY-MM-DD)")


def _uuid(payload: Mapping[str, Any], name: str) -> uuid.UUID:
    value = payload.get(name)
    try:
        if isinstance(value, str):
            return uuid.UUID(value)
    except ValueError:
        pass
    raise NetworkError(_field(name), "uuid", "must be a UUID")


def _identifier(payload: Mapping[str, Any], name: str, check: Callable[[str], str]) -> str:
    value = payload.get(name)
    if not isinstance(value, str):
        raise NetworkError(_field(name), "required", "must be a string of digits")
    try:
        return check(value)
    except IdentifierError as exc:
        raise NetworkError(_field(name), exc.rule, exc.detail) from exc


def _municipality(payload: Mapping[str, Any], name: str) -> str:
    value = payload.get(name)
    try:
        place = master.municipality(str(value))
    except master.MasterError as exc:
        raise NetworkError(_field(name), "unknown_municipality", str(exc)) from exc
    if not place.is_municipality:
        raise NetworkError(
            _field(name), "unknown_municipality", f"{place.code} is a ward, not a municipality"
        )
    return place.code


def _route(payload: Mapping[str, Any], key: str) -> tuple[str, str, str]:
    """(住民票コード, origin, destination), checked: the code is the key, two different municipalities."""
    code = _identifier(payload, "resident_code", validate_resident_code)
    if code != key:
        raise NetworkError(_field("resident_code"), "key_match", "differs from the event key")
    origin = _municipality(payload, "from_municipality_code")
    destination = _municipality(payload, "to_municipality_code")
    if origin == destination:
        raise NetworkError(
            _field("to_municipality_code"),
            "same_municipality",
            "the destination is the origin (that is a 転居)",
        )
    return code, origin, destination


def check_certificate(event: DomainEvent) -> dict[str, Any]:
    """Check a ``register.moved_out`` message; :class:`NetworkError` names the first broken rule."""
    if event.schema_version != SCHEMA_VERSION:
        raise NetworkError("schema_version", "unsupported", f"version {event.schema_version} is not 1")
    payload = event.payload
    extra = sorted(set(payload) - CERTIFICATE_KEYS)
    if extra:
        raise NetworkError(
            _field(extra[0]),
            "not_certificate_information",
            f"items {extra} are not part of the 転出証明書情報",
        )
    address = payload.get("address")
    if not isinstance(address, dict) or set(address) - _ADDRESS_KEYS:
        raise NetworkError(_field("address"), "not_certificate_information", "address parts only")
    _uuid(payload, "certificate_id")
    _route(payload, event.key)
    if payload.get("individual_number") is not None:
        _identifier(payload, "individual_number", validate_individual_number)
    for name in ("family_name", "given_name", "address_text"):
        _text(payload, name)
    birth = _iso_date(payload, "birth_date")
    planned = _iso_date(payload, "planned_move_on")
    _iso_date(payload, "notified_on")
    sex = payload.get("sex")
    if isinstance(sex, bool) or sex not in (1, 2):
        raise NetworkError(_field("sex"), "sex_code", "must be 1 (男) or 2 (女)")
    if planned < birth:
        raise NetworkError(_field("planned_move_on"), "before_birth", "転出予定日 is before the birth date")
    return payload


def check_move_in(event: DomainEvent) -> dict[str, Any]:
    """Check a ``register.moved_in`` message (転入通知)."""
    if event.schema_version != SCHEMA_VERSION:
        raise NetworkError("schema_version", "unsupported", f"version {event.schema_version} is not 1")
    payload = event.payload
    extra = sorted(set(payload) - MOVE_IN_KEYS)
    if extra:
        raise NetworkError(_field(extra[0]), "not_certificate_information", f"items {extra} are not 転入通知")
    _uuid(payload, "certificate_id")
    _route(payload, event.key)
    _iso_date(payload, "effective_on")
    return payload


# --- forwarding ----------------------------------------------------------------------------------


def _forwarded_id(event: DomainEvent, event_type: str) -> str:
    return str(uuid.uuid5(_FORWARD_NAMESPACE, f"{event_type}:{event.id}"))


def forwarded(session: Session, event_type: str, resident_code: str) -> list[dict[str, Any]]:
    """The payloads already forwarded for a 住民票コード (outbox rows are read by key, indexed)."""
    rows = session.scalars(
        select(OutboxEvent.payload)
        .where(OutboxEvent.key == resident_code, OutboxEvent.type == event_type)
        .order_by(OutboxEvent.seq)
    )
    return [dict(row) for row in rows]


def _quarantine(session: Session, event: DomainEvent, error: NetworkError) -> str:
    row = quarantine(session, event, error)
    origin = event.payload.get("from_municipality_code")
    if row.municipality_code is None and isinstance(origin, str) and len(origin) == 6:
        row.municipality_code = origin  # the sender, so the operator knows whom to ask
    return "quarantined"


def _forward(session: Session, event: DomainEvent, event_type: str, body: dict[str, Any]) -> str:
    certificate_id = str(body["certificate_id"])
    done = forwarded(session, event_type, event.key)
    if any(str(p.get("certificate", {}).get("certificate_id")) == certificate_id for p in done):
        return "duplicate"
    emit(
        session,
        event_type,
        event.key,
        {
            "from_municipality_code": body["from_municipality_code"],
            "to_municipality_code": body["to_municipality_code"],
            "origin_event_id": event.id,
            "certificate": body,
        },
        schema_version=SCHEMA_VERSION,
        event_id=_forwarded_id(event, event_type),
    )
    return "forwarded"


def forward_move_out(session: Session, event: DomainEvent) -> str:
    """Handler of ``register.moved_out``: check and forward to the destination, or quarantine.

    Returns ``forwarded``, ``duplicate`` or ``quarantined``; never raises for a bad message (a
    raise would retry it five times and block the person's later messages meanwhile).
    """
    try:
        body = check_certificate(event)
        current = session.scalars(
            select(NationalIdentity).where(
                NationalIdentity.resident_code == event.key, current_version(NationalIdentity)
            )
        ).one_or_none()
        # The issuer must be where the copy has the person (active, or just removed by this 転出).
        if current is not None and current.municipality_code != body["from_municipality_code"]:
            raise NetworkError(
                _field("from_municipality_code"),
                "origin_mismatch",
                f"the national copy has the person in {current.municipality_code}",
            )
    except NetworkError as exc:
        return _quarantine(session, event, exc)
    return _forward(session, event, MOVE_OUT_FORWARDED, body)


def forward_move_in(session: Session, event: DomainEvent) -> str:
    """Handler of ``register.moved_in``: the 転入通知 goes back to the origin through the network.

    A 転入通知 whose certificate was forwarded to another municipality than the one completing it
    is quarantined as ``misaddressed``. One for a certificate the network never forwarded (a move
    begun before this route existed) is forwarded with a warning: only the origin's own pending
    certificate with that id can be completed by it.
    """
    try:
        body = check_move_in(event)
        sent = [
            p["certificate"]
            for p in forwarded(session, MOVE_OUT_FORWARDED, event.key)
            if isinstance(p.get("certificate"), dict)
            and str(p["certificate"].get("certificate_id")) == str(body["certificate_id"])
        ]
        if sent and (
            sent[0].get("to_municipality_code") != body["to_municipality_code"]
            or sent[0].get("from_municipality_code") != body["from_municipality_code"]
        ):
            raise NetworkError(
                _field("to_municipality_code"),
                "misaddressed",
                f"the 転出証明書情報 was sent to {sent[0].get('to_municipality_code')}",
            )
        if not sent:
            log.warning("転入通知 %s for a certificate the network did not forward", event.id)
    except NetworkError as exc:
        return _quarantine(session, event, exc)
    return _forward(session, event, MOVE_IN_FORWARDED, body)


def _move_out_handler(session: Session, event: DomainEvent) -> None:
    forward_move_out(session, event)


def _move_in_handler(session: Session, event: DomainEvent) -> None:
    forward_move_in(session, event)


def register_handlers(registry: Registry) -> None:
    """Subscribe the network's relay of the 転出証明書情報 and the 転入通知 (once: a second call is a no-op).

    Idempotent because several wirings call it (``kiban.network.handlers``, the distributed
    national node, the register's transitional hook) and a registry refuses a name twice.
    """
    if not registry.find("network.forward_move_out"):
        registry.add(MOVED_OUT, "network.forward_move_out", _move_out_handler)
    if not registry.find("network.forward_move_in"):
        registry.add(MOVED_IN, "network.forward_move_in", _move_in_handler)
