"""How the register reacts to other capabilities' events (SPEC §8).

``numbering.number_assigned`` / ``numbering.number_reissued``: the national role notifies the
municipality of a resident's 個人番号, and the register writes it on the 住民票. The handler is
idempotent: the outbox's inbox already guarantees one application per event, and writing the same
number twice changes nothing either.
"""

from __future__ import annotations

from datetime import date

from sqlalchemy import update
from sqlalchemy.orm import Session

from kiban.core.database import utcnow
from kiban.core.events import DomainEvent, Registry
from kiban.core.identifiers import validate_individual_number, validate_resident_code
from kiban.register.models import Resident

NUMBER_EVENTS = ("numbering.number_assigned", "numbering.number_reissued")


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


def register_handlers(registry: Registry) -> None:
    from kiban.register.service import register_event_handlers

    for event_type in NUMBER_EVENTS:
        registry.add(event_type, "register.apply_individual_number", apply_individual_number)
    # 転出証明書情報 received at the destination; the 転出 completed at the origin after the 転入.
    register_event_handlers(registry)
    registry.add("register.identity_changed", "register.end_seal_with_record", end_seal_with_record)
