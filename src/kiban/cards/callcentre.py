"""Call centre (個人番号カードコールセンター, 24/7; SPEC K4): calls, caller identification, suspension.

A call is recorded from ringing to its outcome, which gives the queue (calls waiting) and the
answer-rate report against the 95% target. The agent identifies the caller with knowledge
questions answered from the register (生年月日, 氏名の振り仮名, 住所の町名) — three wrong tries end
identification for that call — and only an identified caller's card can be suspended (with the
person's smartphone certificates) or recorded as found.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import date, datetime
from typing import Final

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kiban.cards import service
from kiban.cards.models import Call
from kiban.core import audit
from kiban.jpki import service as jpki
from kiban.jpki.models import Certificate

ANSWER_RATE_TARGET: Final = 0.95
MAX_IDENTIFY_TRIES: Final = 3
MOBILE_KINDS: Final = ("mobile_signature", "mobile_user_auth")


@dataclass(frozen=True)
class KnowledgeAnswers:
    """What the caller says: birth date, reading of their name, and the town (町名) they live in."""

    birth_date: date
    name_kana: str
    town: str


@dataclass(frozen=True)
class AnswerRate:
    received: int
    answered: int
    abandoned: int
    waiting: int
    rate: float | None  # answered / (answered + abandoned); None when no call has ended
    target: float
    meets_target: bool | None


def _call(session: Session, call_id: int) -> Call:
    call = session.get(Call, call_id, with_for_update=True)
    if call is None:
        raise service.CardsError("call_id", "not_found", f"no call {call_id}", status=404)
    return call


def receive_call(session: Session, *, now: datetime | None = None) -> Call:
    call = Call(received_at=service.aware_now(now), identified=False)
    session.add(call)
    session.flush()
    return call


def answer_call(session: Session, actor: service.Actor, call_id: int, *, now: datetime | None = None) -> Call:
    call = _call(session, call_id)
    if call.answered_at is not None or call.abandoned_at is not None:
        raise service.CardsError(
            "call_id", "call_closed", "the call was already answered or abandoned", status=409
        )
    call.answered_at = service.aware_now(now)
    call.agent = actor.username[:64]
    return call


def abandon_call(session: Session, call_id: int, *, now: datetime | None = None) -> Call:
    """The caller hung up while waiting."""
    call = _call(session, call_id)
    if call.answered_at is not None or call.abandoned_at is not None:
        raise service.CardsError(
            "call_id", "call_closed", "the call was already answered or abandoned", status=409
        )
    call.abandoned_at = service.aware_now(now)
    return call


def _kana(text: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFKC", text) if not ch.isspace())


def identify_caller(
    session: Session,
    actor: service.Actor,
    call_id: int,
    card_id: str,
    answers: KnowledgeAnswers,
    *,
    now: datetime | None = None,
) -> bool:
    """Check the caller's answers against the register (an audited read); True when all match."""
    moment = service.aware_now(now)
    call = _call(session, call_id)
    if call.answered_at is None:
        raise service.CardsError("call_id", "not_answered", "answer the call first", status=409)
    tries = (
        int(call.outcome[len("identify:") :]) if call.outcome and call.outcome.startswith("identify:") else 0
    )
    if tries >= MAX_IDENTIFY_TRIES and not call.identified:
        raise service.CardsError(
            "call_id", "identify_locked", "three failed identifications on this call", status=409
        )
    card = service.get_card(session, card_id)
    record = service.resident_record(
        session,
        service.Actor(actor.username, actor.role, card.municipality_code),
        card.resident_code,
        card.municipality_code,
        service.today_jst(moment),
        "card_id",
    )
    ok = (
        answers.birth_date == record.birth_date
        and _kana(answers.name_kana) == _kana(record.family_name_kana + record.given_name_kana)
        and bool(answers.town.strip())
        and _kana(answers.town) in _kana(record.town)
    )
    call.card_id = card.card_id
    call.identified = ok
    call.outcome = "identified" if ok else f"identify:{tries + 1}"
    audit.record(
        session,
        actor=actor.username,
        role=actor.role,
        action="read",
        purpose="コールセンター本人確認",
        subject=card.resident_code,
        items=["生年月日", "氏名振り仮名", "住所"],
        detail={"card_id": card.card_id, "call_id": call.id, "matched": ok},
    )
    return ok


def _identified(call: Call, card_id: str) -> None:
    if not call.identified or call.card_id != card_id:
        raise service.CardsError(
            "call_id", "caller_not_identified", "identify the caller for this card first", status=403
        )


def suspend_by_call(
    session: Session,
    actor: service.Actor,
    call_id: int,
    card_id: str,
    *,
    reason: str = "lost",
    request_id: str | None = None,
    now: datetime | None = None,
) -> list[str]:
    """一時停止 by phone: the card (its certificates are held through the event) and the person's
    smartphone certificates (held here, through the CA's service). Returns the smartphone serials."""
    moment = service.aware_now(now)
    call = _call(session, call_id)
    _identified(call, card_id)
    card = service.suspend(session, actor, card_id, reason=reason, request_id=request_id, now=moment)
    held = []
    # Read-only look-up of the person's good smartphone certificates; the change goes through jpki.hold.
    for serial, ca_id in session.execute(
        select(Certificate.serial, Certificate.ca_id).where(
            Certificate.resident_code == card.resident_code,
            Certificate.kind.in_(MOBILE_KINDS),
            Certificate.status == "good",
            Certificate.not_after > moment,
        )
    ):
        jpki.hold(session, serial, now=moment, actor=actor.username, ca_id=ca_id)
        held.append(serial)
    call.outcome = "suspended"
    return held


def found_by_call(
    session: Session,
    actor: service.Actor,
    call_id: int,
    card_id: str,
    *,
    request_id: str | None = None,
    now: datetime | None = None,
) -> None:
    call = _call(session, call_id)
    _identified(call, card_id)
    service.record_found(session, actor, card_id, request_id=request_id, now=now)
    call.outcome = "found"


def waiting(session: Session) -> list[Call]:
    """The queue: calls ringing, oldest first."""
    return list(
        session.scalars(
            select(Call).where(Call.answered_at.is_(None), Call.abandoned_at.is_(None)).order_by(Call.id)
        )
    )


def answer_rate(session: Session, start: datetime, end: datetime) -> AnswerRate:
    """応答率 over calls received in [start, end): answered / (answered + abandoned), against 95%."""
    window = (Call.received_at >= start, Call.received_at < end)
    received = session.scalar(select(func.count()).select_from(Call).where(*window)) or 0
    answered = (
        session.scalar(select(func.count()).select_from(Call).where(*window, Call.answered_at.is_not(None)))
        or 0
    )
    abandoned = (
        session.scalar(select(func.count()).select_from(Call).where(*window, Call.abandoned_at.is_not(None)))
        or 0
    )
    ended = answered + abandoned
    rate = answered / ended if ended else None
    return AnswerRate(
        received,
        answered,
        abandoned,
        received - ended,
        rate,
        ANSWER_RATE_TARGET,
        None if rate is None else rate >= ANSWER_RATE_TARGET,
    )
