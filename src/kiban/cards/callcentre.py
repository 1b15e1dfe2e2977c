"""Call centre (個人番号カードコールセンター, 24/7; SPEC K4): calls, caller identification, suspension.

A call is recorded from ringing to its outcome, which gives the queue (calls waiting) and the
answer-rate report against the 95% target. The agent identifies the caller with knowledge
questions answered from the register (生年月日, 氏名の振り仮名, 住所の町名) — three wrong tries end
identification for that call — and only an identified caller's card can be suspended (with the
person's smartphone certificates) or recorded as found.

The centre is national: a holder abroad (国外転出 with continued use, so no current record in any
municipality) is identified from the network's national copy (機構保存本人確認情報) instead —
birth date, reading, and the 町名 of the last address in Japan.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import date, datetime
from typing import Final

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kiban.cards import service
from kiban.cards.models import Call, Card
from kiban.core import audit, master
from kiban.jpki import service as jpki
from kiban.network import service as network

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
    _check_answers(answers)
    card = service.get_card(session, card_id)
    if card.overseas:
        known = _known_abroad(session, card)
        source = "national_copy"
    else:
        record = service.resident_record(
            session,
            service.Actor(actor.username, actor.role, card.municipality_code),
            card.resident_code,
            card.municipality_code,
            service.today_jst(moment),
            "card_id",
        )
        known = (record.birth_date, record.family_name_kana + record.given_name_kana, record.town)
        source = "register"
    birth, kana, town = known
    ok = (
        answers.birth_date == birth
        and _kana(answers.name_kana) == _kana(kana)
        and bool(_kana(answers.town))
        and _kana(answers.town) in _kana(town)
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
        detail={"card_id": card.card_id, "call_id": call.id, "matched": ok, "source": source},
    )
    return ok


MAX_ANSWER: Final = 100


def _check_answers(answers: object) -> None:
    if not isinstance(answers, KnowledgeAnswers):
        raise service.CardsError("answers", "type", "must be KnowledgeAnswers")
    if not isinstance(answers.birth_date, date):
        raise service.CardsError("answers.birth_date", "type", "must be a date")
    for name in ("name_kana", "town"):
        value = getattr(answers, name)
        if (
            not isinstance(value, str)
            or len(value) > MAX_ANSWER
            or any(unicodedata.category(ch).startswith("C") for ch in value)
        ):
            raise service.CardsError(
                f"answers.{name}", "format", f"at most {MAX_ANSWER} characters, no control characters"
            )


def _town_part(address: str, municipality_code: str) -> str:
    """The address after the prefecture and municipality (町名 onwards), so that naming the
    prefecture or city alone never identifies anyone."""
    try:
        body = master.municipality(municipality_code)
    except master.MasterError:
        return address
    for prefix in (f"{body.prefecture}{body.address_name}", f"{body.prefecture}{body.name}"):
        if address.startswith(prefix):
            return address[len(prefix) :]
    return address


def _known_abroad(session: Session, card: Card) -> tuple[date, str, str]:
    """What the national copy knows of a holder abroad: birth date, reading, and the town part of
    the last address in Japan (the newest version while the person was still a resident)."""
    versions = network.national_history(session, card.resident_code)
    if not versions:
        raise service.CardsError(
            "card_id", "not_in_national_copy", "the national copy holds no record of the holder", status=404
        )
    newest = versions[-1]
    domestic = [v for v in versions if v.status == "active"]
    home = domestic[-1] if domestic else newest
    return (
        newest.birth_date,
        newest.family_name_kana + newest.given_name_kana,
        _town_part(home.address, home.municipality_code),
    )


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
    # The person's live smartphone certificates, read through the CA's service; good ones are held.
    for cert in jpki.certificates_of(session, card.resident_code, kinds=MOBILE_KINDS):
        if cert.status == "good" and cert.not_after > moment:
            jpki.hold(session, cert.serial, now=moment, actor=actor.username, ca_id=cert.ca_id)
            held.append(cert.serial)
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
