"""How the register reacts to other capabilities' events (SPEC §8).

``numbering.number_assigned`` / ``numbering.number_reissued``: the national role notifies the
municipality of a resident's 個人番号, and the register writes it on the 住民票. The handler is
idempotent: the outbox's inbox already guarantees one application per event, and writing the same
number twice changes nothing either.

``network.move_out_forwarded`` / ``network.move_in_forwarded``: the 転出証明書情報 and the 転入通知
reach the other municipality through the network role (:mod:`kiban.network.moves`), which checks
and addresses them; the register no longer consumes its own ``register.moved_out`` /
``register.moved_in`` directly. The forwarded event carries the register's payload unchanged under
``certificate``; the handlers hand it to :func:`kiban.register.service.receive_move_out` and
:func:`~kiban.register.service.complete_move_out` as the event they expect (both idempotent by
``certificate_id``).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date

from sqlalchemy import update
from sqlalchemy.orm import Session

from kiban.core.database import utcnow
from kiban.core.events import DomainEvent, Registry
from kiban.core.identifiers import validate_individual_number, validate_resident_code
from kiban.register.models import Resident

NUMBER_EVENTS = ("numbering.number_assigned", "numbering.number_reissued")
MOVED_OUT = "register.moved_out"
MOVED_IN = "register.moved_in"
MOVE_OUT_FORWARDED = "network.move_out_forwarded"
MOVE_IN_FORWARDED = "network.move_in_forwarded"


def apply_individual_number(session: Session, event: DomainEvent) -> None:
    """Write the notified 個人番号 on the resident's record (個人番号の記載)."""
    code = validate_resident_code(str(event.payload.get("resident_code", "")))
    number = validate_individual_number(str(event.payload.get("individual_number", "")))
    if code != event.key:
        raise ValueError(
            f"event {event.id}: payload resident_code differs from the event key (rule: key_match)"
        )
    session.execute(
        update(Resident)
        .where(Resident.resident_code == code)
        .values(individual_number=number, updated_at=utcnow(), version=Resident.version + 1)
    )


# 印鑑登録 ends with the record: 印鑑登録事務処理要領 (職権抹消 on death and moving away).
SEAL_ENDING_REASONS = ("死亡", "転出", "国外転出")


def end_seal_with_record(session: Session, event: DomainEvent) -> None:
    """A closed record (死亡, 転出, 国外転出) ends the person's seal registration (職権抹消)."""
    from kiban.register.seals import abolish_for_resident

    payload = event.payload
    reason = str(payload.get("reason_ja", ""))
    if payload.get("status") != "removed" or reason not in SEAL_ENDING_REASONS:
        return
    effective = payload.get("effective_on")
    abolish_for_resident(
        session,
        event.key,
        reason,
        effective_on=date.fromisoformat(effective) if isinstance(effective, str) else None,
    )


def _as_register_event(event: DomainEvent, event_type: str) -> DomainEvent:
    """The register's own event inside a forwarded one (the payload under ``certificate``)."""
    body = event.payload.get("certificate")
    if not isinstance(body, dict):
        raise ValueError(f"event {event.id}: no certificate in the forwarded message (rule: required)")
    return replace(event, type=event_type, payload=body)


def receive_forwarded_move_out(session: Session, event: DomainEvent) -> None:
    """The destination keeps the 転出証明書情報 the network forwarded (until the 転入)."""
    from kiban.register.service import receive_move_out

    receive_move_out(session, _as_register_event(event, MOVED_OUT))


def complete_forwarded_move_in(session: Session, event: DomainEvent) -> None:
    """The origin completes its 転出 when the network brings the 転入通知."""
    from kiban.register.service import complete_move_out

    complete_move_out(session, _as_register_event(event, MOVED_IN))


def register_handlers(registry: Registry) -> None:
    for event_type in NUMBER_EVENTS:
        registry.add(event_type, "register.apply_individual_number", apply_individual_number)
    # 転出証明書情報 received at the destination; the 転出 completed at the origin after the 転入:
    # both arrive through the network (kiban.network.moves), not straight from the other register.
    registry.add(MOVE_OUT_FORWARDED, "register.receive_move_out", receive_forwarded_move_out)
    registry.add(MOVE_IN_FORWARDED, "register.complete_move_out", complete_forwarded_move_in)
    registry.add("register.identity_changed", "register.end_seal_with_record", end_seal_with_record)
