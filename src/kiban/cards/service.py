"""Card lifecycle service (カード管理, SPEC K4): every transition is a function here.

Every function takes the caller's ``Session`` and writes in its transaction (nothing commits by
itself): the card row, its :class:`~kiban.cards.models.Transition`, the audit entry and, once a
card has been issued, the ``cards.state_changed`` event commit together or not at all. Bad input
raises :class:`CardsError` (a ``ValueError`` with ``field``, ``rule`` and ``status``) before
anything is written.

The register is read only through :func:`kiban.register.service.get_record` (audited), the CA only
through :mod:`kiban.jpki.service`. No PIN reaches this module's tables: the counter hands the PINs
straight to the software card (:class:`kiban.cards.softcard.SoftCard`).
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, Literal, Protocol
from zoneinfo import ZoneInfo

from cryptography.hazmat.primitives import serialization
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from kiban.cards import states
from kiban.cards.models import ApplicationForm, Batch, Card, Change, QueueMessage, Transition
from kiban.cards.softcard import CardError, SoftCard, check_pin, verify_signature
from kiban.core import audit
from kiban.core.database import utcnow
from kiban.core.events import DomainEvent, emit
from kiban.jpki import profiles
from kiban.jpki import service as jpki
from kiban.jpki.keys import KeyStore
from kiban.register import service as register
from kiban.register.rules import RegisterError
from kiban.register.schemas import Actor as RegisterActor
from kiban.register.schemas import ResidentView

JST = ZoneInfo("Asia/Tokyo")
STATE_CHANGED: Final = "cards.state_changed"
PURPOSE: Final = "個人番号カード交付等事務"
ITEMS: Final = ["個人番号カード"]
CHANNELS: Final = ("paper", "online", "bulk")
EXPRESS_REASONS: Final = ("newborn", "loss", "arrival")  # 出生, 紛失による再交付, 国外からの転入
EXPRESS_TARGET: Final = timedelta(days=7)  # 特急発行: one week from application to the counter
ARRIVAL_WINDOW: Final = timedelta(days=30)
# Defect reason codes (申請書不備): the checker picks one.
DEFECT_CODES: Final[dict[str, str]] = {
    "photo_unclear": "顔写真不鮮明",
    "photo_size": "顔写真の規格不適合",
    "signature_missing": "署名・記名押印なし",
    "item_missing": "記載事項の不足",
    "identity_mismatch": "住民基本台帳との不一致",
}
SUSPEND_REASONS: Final = ("lost", "stolen", "other")
ABOLISH_REASONS: Final = (
    "returned",
    "abolished",
    "key_compromise",
    "withdrawn",
    "not_collected",
    "replaced",
    "renewed",
)
# 更新: a card renewal application, and a certificate renewal, from 3 months before expiry
# (REFERENCE: renewal possible from 3 months before expiry; the CA's own window is the same).
RENEWAL_WINDOW_MONTHS: Final = profiles.RENEWAL_WINDOW_MONTHS
# 本人確認書類: A = one suffices (photo ID), B = two needed (交付時の本人確認, 番号法施行規則).
ID_DOCUMENTS_A: Final = frozenset({"passport", "driving_licence", "residence_card", "disability_certificate"})
ID_DOCUMENTS_B: Final = frozenset(
    {"health_insurance", "pension_book", "student_id", "employee_id", "notice_letter"}
)
MAX_BATCH: Final = 10_000
MAX_REQUEST_ID: Final = 64
MANUFACTURER_QUEUE: Final = "manufacturer"
MUNICIPALITY_QUEUE: Final = "municipality"


class CardsError(ValueError):
    """A card request broke a rule; nothing was written. ``status``: 404, 409 or 422 (403 for roles)."""

    def __init__(self, field: str, rule: str, message: str, *, status: int = 422) -> None:
        super().__init__(f"{field}: {message} (rule: {rule})")
        self.field = field
        self.rule = rule
        self.message = self.detail = message
        self.status = status


@dataclass(frozen=True)
class Actor:
    """Who acts: a clerk (窓口), the call centre (コールセンター), J-LIS staff, or a system job."""

    username: str
    role: str = "clerk"
    municipality_code: str | None = None


@dataclass(frozen=True)
class Application:
    """交付申請: the 申請書ID from the form, the channel, and optionally the employer and 特急 reason."""

    application_id: str
    channel: Literal["paper", "online", "bulk"] = "paper"
    employer: str | None = None
    express_reason: str | None = None


@dataclass(frozen=True)
class IdentityCheck:
    """本人確認 at the counter: the documents the clerk saw (one A document or two B ones)."""

    documents: tuple[str, ...] = ()
    checked_by: str = ""


@dataclass(frozen=True)
class HandOverResult:
    card: Card
    user_auth_serial: str
    signature_serial: str | None
    replaced: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- helpers


def today_jst(now: datetime | None = None) -> date:
    return (now or utcnow()).astimezone(JST).date()


def aware_now(now: datetime | None) -> datetime:
    value = now or utcnow()
    if value.tzinfo is None:
        raise CardsError("now", "aware", "must be timezone-aware")
    return value.astimezone(UTC)


_NO_I_O = str.maketrans("IO", "89")  # base32 has no 8 or 9, so this stays one-to-one


def new_card_id() -> str:
    """12 random upper-case letters and digits, 60 bits (no I or O: read aloud to the call centre)."""
    return base64.b32encode(secrets.token_bytes(10)).decode("ascii")[:12].translate(_NO_I_O)


_CARD_ID_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567".translate(_NO_I_O)


def new_card_ids(n: int) -> list[str]:
    """``n`` card ids as :func:`new_card_id` makes them (60 random bits, the same alphabet), from
    one read of the random source: the bulk intake's (b32encode per id was a tenth of its time)."""
    raw = secrets.token_bytes(8 * n)
    alphabet = _CARD_ID_ALPHABET
    shifts = range(55, -1, -5)
    out = []
    for i in range(n):
        value = int.from_bytes(raw[8 * i : 8 * i + 8], "big") >> 4
        out.append("".join([alphabet[(value >> s) & 31] for s in shifts]))
    return out


def new_application_id() -> str:
    """申請書ID: 23 digits, random (not guessable from a neighbour's form)."""
    return f"{secrets.randbelow(10**23):023d}"


def card_validity(birth_date: date, issued_on: date, period_of_stay_end: date | None = None) -> date:
    """有効期限: the 10th birthday after issuance for holders 18+ on the issuance day, the 5th for
    younger ones (a birthday on the issuance day does not count; a Feb 29 birthday falls on Feb 28
    in a common year, as for certificates: :func:`kiban.jpki.profiles.anniversary`); a foreign
    resident's card ends with the period of stay (在留期間の満了日) when that comes first."""
    years = 10 if profiles.age_on(birth_date, issued_on) >= 18 else 5
    expiry = profiles.nth_birthday_after(birth_date, issued_on, years)
    if period_of_stay_end is not None and period_of_stay_end < expiry:
        return period_of_stay_end
    return expiry


def check_identity(identity: IdentityCheck | None, field_name: str = "identity") -> None:
    """Refuse a counter operation without a sufficient identity check (nothing is written)."""
    if identity is None or not isinstance(identity, IdentityCheck) or not identity.documents:
        raise CardsError(
            field_name, "identity_check_required", "本人確認 is required: one A document or two B ones"
        )
    unknown = [d for d in identity.documents if d not in ID_DOCUMENTS_A | ID_DOCUMENTS_B]
    if unknown:
        raise CardsError(f"{field_name}.documents", "unknown_document", f"unknown document {unknown[0]!r}")
    a = {d for d in identity.documents if d in ID_DOCUMENTS_A}
    b = {d for d in identity.documents if d in ID_DOCUMENTS_B}
    if not a and len(b) < 2:
        raise CardsError(f"{field_name}.documents", "identity_insufficient", "one A document or two B ones")


def _request_id(request_id: object) -> str | None:
    if request_id is None:
        return None
    if (
        not isinstance(request_id, str)
        or not 1 <= len(request_id) <= MAX_REQUEST_ID
        or not request_id.isprintable()
    ):
        raise CardsError("request_id", "format", f"must be 1–{MAX_REQUEST_ID} printable characters")
    return request_id


def get_card(session: Session, card_id: object, *, lock: bool = False) -> Card:
    if not isinstance(card_id, str) or len(card_id) != 12:
        raise CardsError("card_id", "format", "must be 12 letters and digits")
    query = select(Card).where(Card.card_id == card_id)
    if lock:
        query = query.with_for_update()
    card = session.scalar(query.execution_options(populate_existing=True))
    if card is None:
        raise CardsError("card_id", "not_found", f"no card {card_id}", status=404)
    return card


def _audit(session: Session, actor: Actor, card: Card, action: str, detail: dict[str, Any]) -> None:
    audit.record(
        session,
        actor=actor.username,
        role=actor.role,
        action=action,
        purpose=PURPOSE,
        subject=card.resident_code,
        items=ITEMS,
        organisation=actor.municipality_code,
        detail={"card_id": card.card_id, **detail},
    )


def _check_replay(session: Session, request_id: str | None) -> None:
    """A call carried out before (the same ``request_id``) is refused, so a retry never acts twice."""
    if request_id is not None and session.scalar(
        select(Transition.id).where(Transition.request_id == request_id)
    ):
        raise CardsError(
            "request_id", "replayed_request", f"request {request_id} was already carried out", status=409
        )


def _transition(
    session: Session,
    actor: Actor,
    card: Card,
    action: str,
    *,
    now: datetime,
    reason: str | None = None,
    request_id: str | None = None,
    event_state: str | None = None,
    audit_action: str = "update",
) -> None:
    """Move ``card`` by ``action`` if the state machine allows it, with its record, audit and event."""
    _check_replay(session, request_id)
    target = states.target_of(action, card.state)
    if target is None:
        raise CardsError(
            "card_id",
            "transition_not_allowed",
            f"{action} is not allowed for a card that is {card.state} ({states.STATE_JA[card.state]})",
            status=409,
        )
    before = card.state
    card.state = target
    card.state_since = now
    card.updated_at = now
    card.version += 1
    session.add(
        Transition(
            card_id=card.card_id,
            from_state=before,
            to_state=target,
            at=now,
            actor=actor.username[:64],
            reason=reason,
            request_id=request_id,
        )
    )
    _audit(session, actor, card, audit_action, {"from": before, "to": target, "reason": reason})
    # The CA and other consumers care once a card has been issued; before that no certificate exists.
    if before in states.ISSUED or target in states.ISSUED:
        emit(
            session,
            STATE_CHANGED,
            card.card_id,
            {
                "card_id": card.card_id,
                "state": event_state or target,
                "from": before,
                "reason": reason,
                "resident_code": card.resident_code,
            },
        )


def _register_actor(actor: Actor, municipality_code: str) -> RegisterActor:
    return RegisterActor(username=actor.username[:64], municipality_code=municipality_code, role=actor.role)


def resident_record(
    session: Session, actor: Actor, code: str, municipality_code: str, today: date, field: str
) -> ResidentView:
    """The person's record (audited read through the register), refusing the dead and the moved out."""
    try:
        record = register.get_record(session, _register_actor(actor, municipality_code), code, today=today)
    except RegisterError as exc:
        raise CardsError(field, exc.rule, exc.message, status=getattr(exc, "status", 422)) from None
    if record.status != "active":
        reason = record.removed_reason or ""
        if reason == "死亡":
            raise CardsError(field, "resident_dead", f"{code} is deceased (除票: 死亡)")
        if reason in ("転出", "国外転出"):
            raise CardsError(
                field, "resident_moved_out", f"{code} moved out of {municipality_code} ({reason})"
            )
        raise CardsError(field, "not_resident", f"{code} has no active record ({reason or 'removed'})")
    return record


# --------------------------------------------------------------------------- application


def issue_forms(
    session: Session,
    actor: Actor,
    resident_codes: Sequence[str],
    municipality_code: str,
    *,
    now: datetime | None = None,
) -> dict[str, str]:
    """交付申請書を発行: one form (申請書ID) per person; returns 住民票コード → 申請書ID."""
    moment = aware_now(now)
    out = {code: new_application_id() for code in resident_codes}
    if len(out) != len(resident_codes):
        raise CardsError("resident_codes", "duplicate", "one form per person per call")
    rows = [
        {
            "application_id": aid,
            "resident_code": code,
            "municipality_code": municipality_code,
            "issued_at": moment,
        }
        for code, aid in out.items()
    ]
    for start in range(0, len(rows), 5_000):  # multi-row INSERTs: forms are printed by the hundred thousand
        session.execute(insert(ApplicationForm), rows[start : start + 5_000])
    audit.record(
        session,
        actor=actor.username,
        role=actor.role,
        action="create",
        purpose=PURPOSE,
        subject=resident_codes[0] if len(resident_codes) == 1 else "",
        items=["交付申請書"],
        organisation=municipality_code,
        detail={"forms": len(out)},
    )
    return out


def _express_due(
    session: Session, reason: str | None, record: ResidentView, applied_on: date, field_name: str
) -> date | None:
    if reason is None:
        return None
    if reason not in EXPRESS_REASONS:
        raise CardsError(field_name, "express_reason", f"must be one of {', '.join(EXPRESS_REASONS)}")
    if reason == "newborn" and profiles.age_on(record.birth_date, applied_on) >= 1:
        raise CardsError(field_name, "express_not_eligible", "特急発行 for a newborn is for children under 1")
    if reason == "arrival" and applied_on - record.resident_since > ARRIVAL_WINDOW:
        raise CardsError(field_name, "express_not_eligible", "特急発行 on arrival is within 30 days of 転入")
    if reason == "loss":
        lost = session.scalar(
            select(func.count())
            .select_from(Card)
            .where(Card.resident_code == record.resident_code, Card.state == states.SUSPENDED)
        )
        lost_abolished = session.scalar(
            select(func.count())
            .select_from(Transition)
            .join(Card, Card.card_id == Transition.card_id)
            .where(Card.resident_code == record.resident_code, Transition.reason.in_(SUSPEND_REASONS[:2]))
        )
        if not lost and not lost_abolished:
            raise CardsError(field_name, "express_not_eligible", "no lost card is recorded for this person")
    return applied_on + EXPRESS_TARGET


def apply(session: Session, actor: Actor, application: Application, *, now: datetime | None = None) -> Card:
    """申請受付: a paper form, an online application or one line of an employer's bulk file."""
    moment = aware_now(now)
    today = today_jst(moment)
    application_id = application.application_id
    if not isinstance(application_id, str) or len(application_id) != 23 or not application_id.isdigit():
        raise CardsError("application_id", "format", "申請書ID is 23 digits")
    if application.channel not in CHANNELS:
        raise CardsError("channel", "channel", f"must be one of {', '.join(CHANNELS)}")
    if application.channel == "bulk" and not (application.employer or "").strip():
        raise CardsError("employer", "required", "a bulk application names the employer")
    form = session.scalar(select(ApplicationForm).where(ApplicationForm.application_id == application_id))
    if form is None:
        raise CardsError(
            "application_id", "unknown_application_id", f"no form with 申請書ID {application_id}", status=404
        )
    if session.scalar(select(Card.card_id).where(Card.application_id == application_id)):
        raise CardsError("application_id", "already_used", "this 申請書ID was already used", status=409)
    pending = session.scalar(
        select(Card.card_id).where(
            Card.resident_code == form.resident_code, Card.state.in_(states.BEFORE_ISSUE - {states.DEFECTIVE})
        )
    )
    if pending:
        raise CardsError(
            "application_id", "pending_application", f"card {pending} is already on its way", status=409
        )
    record = resident_record(
        session, actor, form.resident_code, form.municipality_code, today, "application_id"
    )
    due = _express_due(session, application.express_reason, record, today, "express_reason")
    card = Card(
        card_id=new_card_id(),
        application_id=application_id,
        resident_code=form.resident_code,
        municipality_code=form.municipality_code,
        channel=application.channel,
        employer=(application.employer or None) if application.channel == "bulk" else None,
        state=states.APPLIED,
        state_since=moment,
        applied_on=today,
        express=due is not None,
        express_reason=application.express_reason,
        express_due=due,
        overseas=False,
        version=1,
        created_at=moment,
        updated_at=moment,
    )
    session.add(card)
    session.add(
        Transition(
            card_id=card.card_id,
            from_state=None,
            to_state=states.APPLIED,
            at=moment,
            actor=actor.username[:64],
            reason=application.channel,
        )
    )
    _audit(
        session,
        actor,
        card,
        "create",
        {"to": states.APPLIED, "channel": application.channel, "express": application.express_reason},
    )
    session.flush()
    return card


def check(
    session: Session,
    actor: Actor,
    card_id: str,
    *,
    defect_code: str | None = None,
    now: datetime | None = None,
) -> Card:
    """審査: 正常 (no code) or 不備 with a reason code from :data:`DEFECT_CODES`."""
    moment = aware_now(now)
    if defect_code is not None and defect_code not in DEFECT_CODES:
        raise CardsError("defect_code", "defect_code", f"must be one of {', '.join(DEFECT_CODES)}")
    card = get_card(session, card_id, lock=True)
    if defect_code is None:
        _transition(session, actor, card, "check", now=moment)
        card.defect_code = None
    else:
        _transition(session, actor, card, "defect", now=moment, reason=defect_code)
        card.defect_code = defect_code
    return card


# --------------------------------------------------------------------------- production and shipping


def enqueue(
    session: Session,
    queue: str,
    kind: str,
    key: str,
    payload: dict[str, Any],
    *,
    message_id: str | None = None,
    now: datetime | None = None,
) -> QueueMessage:
    message = QueueMessage(
        queue=queue,
        message_id=message_id or str(uuid.uuid4()),
        kind=kind,
        key=key,
        payload=payload,
        enqueued_at=aware_now(now),
    )
    session.add(message)
    return message


def order_production(
    session: Session,
    actor: Actor,
    *,
    manufacturer: str = "jlis-card-works",
    limit: int = 1000,
    now: datetime | None = None,
) -> Batch | None:
    """製造依頼: checked cards, express ones first then oldest, in one batch to the manufacturer.

    One queue message per card (keyed by card id), so the manufacturer can produce, fail and resume
    card by card; returns the batch (None when nothing was waiting).
    """
    moment = aware_now(now)
    if not isinstance(limit, int) or not 1 <= limit <= MAX_BATCH:
        raise CardsError("limit", "range", f"must be 1–{MAX_BATCH}")
    cards = list(
        session.scalars(
            select(Card)
            .where(Card.state == states.CHECKED)
            .order_by(Card.express.desc(), Card.applied_on, Card.card_id)
            .limit(limit)
            .with_for_update()
        )
    )
    if not cards:
        return None
    batch = Batch(
        id=uuid.uuid4(),
        manufacturer=manufacturer,
        ordered_at=moment,
        size=len(cards),
        express=any(c.express for c in cards),
    )
    session.add(batch)
    for card in cards:
        _transition(session, actor, card, "order", now=moment, reason=f"batch {batch.id}")
        card.batch_id = batch.id
        enqueue(
            session,
            MANUFACTURER_QUEUE,
            "produce",
            card.card_id,
            {"card_id": card.card_id, "batch_id": str(batch.id), "express": card.express},
            now=moment,
        )
    return batch


def card_face(
    session: Session, actor: Actor, card: Card, *, today: date
) -> tuple[ResidentView, dict[str, Any]]:
    """What the manufacturer prints: read from the register (audited) at production time."""
    record = resident_record(session, actor, card.resident_code, card.municipality_code, today, "card_id")
    return record, {
        "name": f"{record.family_name}　{record.given_name}",
        "address": address_text(record),
        "birth_date": record.birth_date.isoformat(),
        "sex": record.sex,
        "individual_number": record.individual_number,
        "municipality_code": card.municipality_code,
    }


def address_text(record: ResidentView) -> str:
    text = f"{record.prefecture}{record.municipality}{record.town}{record.banchi}"
    return f"{text}　{record.katagaki}" if record.katagaki else text


def record_produced(
    session: Session, actor: Actor, card_id: str, *, expires_on: date, now: datetime | None = None
) -> Card:
    """製造済み: the manufacturer reports a card made (with the expiry printed on it, counted from the
    production date, the card's 発行日) and, in the same step, queues its shipping to the municipality."""
    moment = aware_now(now)
    card = get_card(session, card_id, lock=True)
    _transition(session, actor, card, "produce", now=moment)
    card.expires_on = expires_on
    enqueue(
        session,
        MUNICIPALITY_QUEUE,
        "arrive",
        card.card_id,
        {"card_id": card.card_id, "municipality_code": card.municipality_code},
        now=moment,
    )
    return card


def record_shipped(session: Session, actor: Actor, card_id: str, *, now: datetime | None = None) -> Card:
    """市区町村に到着: the municipality took the card in."""
    card = get_card(session, card_id, lock=True)
    _transition(session, actor, card, "ship", now=aware_now(now))
    return card


def record_notified(session: Session, actor: Actor, card_id: str, *, now: datetime | None = None) -> Card:
    """交付通知書 sent (the PDF is made by :func:`kiban.cards.documents.issue_notice`)."""
    card = get_card(session, card_id, lock=True)
    _transition(session, actor, card, "notify", now=aware_now(now), audit_action="print")
    return card


# --------------------------------------------------------------------------- the counter


def _spki_pem(public_key: Any) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def _holder(record: ResidentView, card_id: str) -> profiles.HolderInfo:
    kana = f"{record.family_name_kana}　{record.given_name_kana}".strip("　") or None
    return profiles.HolderInfo(
        resident_code=record.resident_code,
        name=f"{record.family_name}　{record.given_name}",
        birth_date=record.birth_date,
        sex=record.sex,
        address=address_text(record),
        card_id=card_id,
        name_kana=kana,
        former_name=record.old_family_name,
    )


def _issue_certificates(
    session: Session,
    actor: Actor,
    card: Card,
    soft: SoftCard,
    record: ResidentView,
    pins: Mapping[str, str],
    keystore: KeyStore,
    moment: datetime,
    renewal_of: Mapping[str, str] | None = None,
) -> tuple[str, str | None]:
    """Keys made on the card, certificates from the CA, written back onto the card.

    ``renewal_of`` (kind → serial of a good certificate, of this card or the card it replaces):
    the new certificate is issued as its renewal, so the CA supersedes the old one and links them
    (新旧紐付け: a verifier follows ``replaced_by``)."""
    assert card.expires_on is not None
    renewal_of = renewal_of or {}
    holder = _holder(record, card.card_id)
    user_key = soft.generate_key_pair("user_auth", pins["user_auth"])
    user = jpki.issue_user_auth_certificate(
        session,
        keystore,
        public_key=user_key,
        holder=holder,
        card_expiry=card.expires_on,
        now=moment,
        renewal_of=renewal_of.get("user_auth"),
        actor=actor.username,
    )
    soft.store_certificate("user_auth", user.der)
    card.user_auth_key = _spki_pem(user_key)
    card.user_auth_serial = user.serial
    card.signature_key = card.signature_serial = None
    # 署名用 only for holders 15+ (the CA refuses younger ones; asking would only fail).
    if profiles.age_on(record.birth_date, today_jst(moment)) >= 15 and "signature" in pins:
        sign_key = soft.generate_key_pair("signature", pins["signature"])
        sign = jpki.issue_signature_certificate(
            session,
            keystore,
            public_key=sign_key,
            holder=holder,
            card_expiry=card.expires_on,
            now=moment,
            renewal_of=renewal_of.get("signature"),
            actor=actor.username,
        )
        soft.store_certificate("signature", sign.der)
        card.signature_key = _spki_pem(sign_key)
        card.signature_serial = sign.serial
    return user.serial, card.signature_serial


def good_certificates(session: Session, card: Card) -> dict[str, str]:
    """The card's certificates that are still good at the CA (kind → serial): what a renewal supersedes."""
    out: dict[str, str] = {}
    for kind, serial in (("user_auth", card.user_auth_serial), ("signature", card.signature_serial)):
        if serial and jpki.find_certificate(session, serial).status == "good":
            out[kind] = serial
    return out


def _check_pins(pins: object, record: ResidentView, today: date) -> dict[str, str]:
    if not isinstance(pins, Mapping):
        raise CardsError("pins", "type", "must map PIN kind to PIN")
    needed = ["user_auth", "juki", "face"]
    if profiles.age_on(record.birth_date, today) >= 15:
        needed.append("signature")
    for kind in needed:
        if kind not in pins:
            raise CardsError(f"pins.{kind}", "required", f"the {kind} PIN is set at hand-over")
    extra = set(pins) - set(needed)
    if extra:
        raise CardsError(f"pins.{sorted(extra)[0]}", "not_allowed", "not a PIN set at this hand-over")
    try:
        for kind in needed:
            check_pin(kind, pins[kind], f"pins.{kind}")
    except CardError as exc:
        raise CardsError(exc.field, exc.rule, str(exc)) from None
    return {k: pins[k] for k in needed}


def hand_over(
    session: Session,
    actor: Actor,
    card_id: str,
    *,
    soft: SoftCard,
    identity: IdentityCheck | None,
    pins: Mapping[str, str],
    keystore: KeyStore,
    now: datetime | None = None,
) -> HandOverResult:
    """交付: identity checked, PINs set on the card, keys made on it, certificates issued, card active.

    Everything is checked before the card or the database is touched (identity, PIN rules, the
    card being the right one and blank); the previous card of the person, if still live, is
    abolished (reason ``replaced``). The software card is changed only after the checks, so a
    refused hand-over leaves it blank.
    """
    moment = aware_now(now)
    today = today_jst(moment)
    check_identity(identity)
    if actor.role != "clerk" or not actor.municipality_code:
        raise CardsError(
            "actor", "clerk_only", "hand-over is done by a clerk of the municipality", status=403
        )
    card = get_card(session, card_id, lock=True)
    if card.municipality_code != actor.municipality_code:
        raise CardsError(
            "card_id", "own_municipality", "the card is handed over by its municipality", status=403
        )
    if states.target_of("hand_over", card.state) is None:
        raise CardsError(
            "card_id",
            "transition_not_allowed",
            f"hand-over is not allowed for a {card.state} card",
            status=409,
        )
    if not isinstance(soft, SoftCard) or soft.card_id != card.card_id:
        raise CardsError("soft", "wrong_card", "the card presented is not this card")
    if any(status.is_set for status in soft.pin_status()):
        raise CardsError("soft", "not_blank", "the card already has PINs; it was handed over before")
    record = resident_record(session, actor, card.resident_code, card.municipality_code, today, "card_id")
    checked = _check_pins(pins, record, today)
    if record.period_of_stay_end is not None and record.period_of_stay_end <= today:
        raise CardsError("card_id", "stay_ended", "the period of stay has ended")
    card.issued_on = today
    expiry = card.expires_on or card_validity(record.birth_date, today, record.period_of_stay_end)
    if record.period_of_stay_end is not None:  # the stay may have been shortened since production
        expiry = min(expiry, record.period_of_stay_end)
    card.expires_on = expiry
    replaced: list[str] = []
    renewal_of: dict[str, str] = {}
    for old in session.scalars(
        select(Card)
        .where(
            Card.resident_code == card.resident_code,
            Card.card_id != card.card_id,
            Card.state.in_(states.ISSUED),
        )
        .order_by(Card.created_at.desc(), Card.card_id)
        .with_for_update()
    ):
        # The old card's good certificates are superseded by the new card's (新旧紐付け), read
        # before its abolition (the CA revokes what is left of it when the event arrives).
        if not renewal_of:
            renewal_of = good_certificates(session, old)
        reason = "renewed" if card.renewal_of == old.card_id else "replaced"
        _transition(session, actor, old, "abolish", now=moment, reason=reason, event_state="abolished")
        replaced.append(old.card_id)
    soft.set_initial_pins(checked)
    user_serial, sign_serial = _issue_certificates(
        session, actor, card, soft, record, checked, keystore, moment, renewal_of
    )
    _transition(session, actor, card, "hand_over", now=moment, reason="交付", audit_action="issue")
    return HandOverResult(card, user_serial, sign_serial, replaced)


def apply_reissue(session: Session, actor: Actor, card_id: str, *, now: datetime | None = None) -> Card:
    """再交付申請 at the counter for a card that is lost, damaged or must be replaced: a new 申請書 and
    application for the same person; 特急 when the card was reported lost or stolen. The old card
    stays as it is until the new one is handed over (then it is abolished as ``replaced``)."""
    old = get_card(session, card_id, lock=True)
    if actor.municipality_code != old.municipality_code:
        raise CardsError(
            "card_id", "own_municipality", "re-issue is applied for at the card's municipality", status=403
        )
    if old.state not in states.ISSUED:
        raise CardsError("card_id", "not_issued", f"the card is {old.state}", status=409)
    lost = old.state == states.SUSPENDED or bool(
        session.scalar(
            select(Transition.id).where(
                Transition.card_id == card_id, Transition.reason.in_(SUSPEND_REASONS[:2])
            )
        )
    )
    assert actor.municipality_code is not None
    form = issue_forms(session, actor, [old.resident_code], actor.municipality_code, now=now)[
        old.resident_code
    ]
    return apply(
        session, actor, Application(form, channel="paper", express_reason="loss" if lost else None), now=now
    )


def reissue_certificates(
    session: Session,
    actor: Actor,
    card_id: str,
    *,
    soft: SoftCard,
    identity: IdentityCheck | None,
    pins: Mapping[str, str],
    keystore: KeyStore,
    now: datetime | None = None,
) -> Card:
    """電子証明書の再発行 at the counter (after a card is found again, or a signature revoked by a move):
    new keys on the card, new certificates; the old ones are already revoked by the CA."""
    moment = aware_now(now)
    today = today_jst(moment)
    check_identity(identity)
    card = get_card(session, card_id, lock=True)
    if card.state != states.ACTIVE:
        raise CardsError("card_id", "not_active", f"the card is {card.state}", status=409)
    if not isinstance(soft, SoftCard) or soft.card_id != card.card_id:
        raise CardsError("soft", "wrong_card", "the card presented is not this card")
    record = resident_record(session, actor, card.resident_code, card.municipality_code, today, "card_id")
    if not isinstance(pins, Mapping) or "user_auth" not in pins:
        raise CardsError(
            "pins.user_auth", "required", "the user-authentication PIN is needed to make the key"
        )
    try:
        for kind, pin in pins.items():
            soft.verify_pin(kind, pin)  # type: ignore[arg-type]
    except CardError as exc:
        raise CardsError(f"pins.{kind}", exc.rule, str(exc)) from None
    _issue_certificates(
        session, actor, card, soft, record, pins, keystore, moment, good_certificates(session, card)
    )
    card.version += 1
    card.updated_at = moment
    _audit(session, actor, card, "issue", {"certificates": "reissued"})
    return card


def reset_pin(
    session: Session,
    actor: Actor,
    card_id: str,
    *,
    soft: SoftCard,
    identity: IdentityCheck | None,
    kind: str,
    new_pin: str,
    now: datetime | None = None,
) -> Card:
    """暗証番号の初期化 at the counter: identity checked, then the card resets its own PIN."""
    moment = aware_now(now)
    check_identity(identity)
    card = get_card(session, card_id, lock=True)
    if card.state not in states.ISSUED:
        raise CardsError("card_id", "not_issued", f"the card is {card.state}", status=409)
    if not isinstance(soft, SoftCard) or soft.card_id != card.card_id:
        raise CardsError("soft", "wrong_card", "the card presented is not this card")
    try:
        check_pin(kind, new_pin, "new_pin")
    except CardError as exc:
        raise CardsError(exc.field, exc.rule, str(exc)) from None
    soft.reset_pin(kind, new_pin)  # type: ignore[arg-type]
    _audit(session, actor, card, "update", {"reset": kind, "by": "counter"})
    card.updated_at = moment
    return card


class FaceVerifier(Protocol):
    """The external face match of a kiosk PIN reset (顔認証): the card's photo against the camera's.

    Pluggable: the platform does not match faces itself; a deployment plugs in its matcher."""

    def matches(self, card_id: str, face_image: bytes) -> bool: ...


KIOSK_RESET_KINDS: Final = ("user_auth", "signature")
MAX_FACE_IMAGE: Final = 5 * 1024 * 1024


def reset_pin_by_face(
    session: Session,
    actor: Actor,
    card_id: str,
    *,
    soft: SoftCard,
    verifier: FaceVerifier,
    face_image: bytes,
    kind: str,
    new_pin: str,
    now: datetime | None = None,
) -> Card:
    """暗証番号の初期化 at a kiosk (コンビニ): instead of the counter's identity documents, an external
    face match; only the two certificate PINs, only for an active card. Refused → nothing changed."""
    moment = aware_now(now)
    if kind not in KIOSK_RESET_KINDS:
        raise CardsError("kind", "kiosk_reset_kind", "only the certificate PINs are reset at a kiosk")
    if not isinstance(face_image, bytes) or not 1 <= len(face_image) <= MAX_FACE_IMAGE:
        raise CardsError("face_image", "length", f"must be 1–{MAX_FACE_IMAGE} bytes")
    try:
        check_pin(kind, new_pin, "new_pin")
    except CardError as exc:
        raise CardsError(exc.field, exc.rule, str(exc)) from None
    card = get_card(session, card_id, lock=True)
    if card.state != states.ACTIVE:
        raise CardsError("card_id", "not_active", f"the card is {card.state}", status=409)
    if not isinstance(soft, SoftCard) or soft.card_id != card.card_id:
        raise CardsError("soft", "wrong_card", "the card presented is not this card")
    if not verifier.matches(card.card_id, face_image):
        raise CardsError(
            "face_image", "face_mismatch", "the face does not match the card's photo", status=403
        )
    soft.reset_pin(kind, new_pin)  # type: ignore[arg-type]
    _audit(session, actor, card, "update", {"reset": kind, "by": "face_match"})
    card.updated_at = moment
    return card


# --------------------------------------------------------------------------- renewal, 在留期間


def renewal_opens(expires_on: date) -> date:
    """The first day a renewal may be applied for: 3 months before the expiry date (same day of
    the month, clamped to the month's end: 2027-05-31 → 2027-02-28)."""
    return profiles.add_months(expires_on, -RENEWAL_WINDOW_MONTHS)


def _own_clerk(actor: Actor, card: Card, what: str) -> None:
    if actor.role != "clerk" or not actor.municipality_code:
        raise CardsError("actor", "clerk_only", f"{what} is done by a clerk of the municipality", status=403)
    if card.municipality_code != actor.municipality_code:
        raise CardsError(
            "card_id", "own_municipality", f"{what} is done at the card's municipality", status=403
        )


def _record_change(
    session: Session,
    actor: Actor,
    card: Card,
    change: str,
    old: str | None,
    new: str | None,
    reason: str | None,
    moment: datetime,
) -> None:
    session.add(
        Change(
            card_id=card.card_id,
            change=change,
            old_value=old,
            new_value=new,
            reason=reason,
            at=moment,
            actor=actor.username[:64],
        )
    )
    card.version += 1
    card.updated_at = moment
    _audit(session, actor, card, "update", {"change": change, "old": old, "new": new, "reason": reason})


def apply_renewal(session: Session, actor: Actor, card_id: str, *, now: datetime | None = None) -> Card:
    """カードの更新申請 at the counter: an active card in its last 3 months (from
    :func:`renewal_opens` to its expiry date) gets a new 申請書 and application; the new card
    carries ``renewal_of`` and, at its hand-over, the old card is abolished (reason ``renewed``)
    and the old card's good certificates are superseded by the new ones (新旧紐付け)."""
    moment = aware_now(now)
    today = today_jst(moment)
    old = get_card(session, card_id, lock=True)
    _own_clerk(actor, old, "renewal")
    if old.state != states.ACTIVE:
        raise CardsError("card_id", "not_active", f"the card is {old.state}", status=409)
    assert old.expires_on is not None
    if not renewal_opens(old.expires_on) <= today <= old.expires_on:
        raise CardsError(
            "card_id",
            "renewal_window",
            f"renewal is applied for from {renewal_opens(old.expires_on)} to {old.expires_on}",
            status=409,
        )
    assert actor.municipality_code is not None
    form = issue_forms(session, actor, [old.resident_code], actor.municipality_code, now=moment)
    card = apply(session, actor, Application(form[old.resident_code], channel="paper"), now=moment)
    card.renewal_of = old.card_id
    session.flush()
    return card


def renew_certificates(
    session: Session,
    actor: Actor,
    card_id: str,
    *,
    soft: SoftCard,
    identity: IdentityCheck | None,
    pins: Mapping[str, str],
    keystore: KeyStore,
    now: datetime | None = None,
) -> Card:
    """電子証明書の更新 at the counter while the card stays (certificates end at the 5th birthday, the
    card at the 10th): in the certificate's last 3 months, new keys on the card and new certificates
    issued as renewals of the old ones (the CA supersedes them, links old to new, and — renewed in
    the window — counts to the 6th birthday). Refused when the card ends no later than the
    certificate: then the card itself is renewed (:func:`apply_renewal`)."""
    moment = aware_now(now)
    today = today_jst(moment)
    check_identity(identity)
    card = get_card(session, card_id, lock=True)
    _own_clerk(actor, card, "certificate renewal")
    if card.state != states.ACTIVE:
        raise CardsError("card_id", "not_active", f"the card is {card.state}", status=409)
    if not isinstance(soft, SoftCard) or soft.card_id != card.card_id:
        raise CardsError("soft", "wrong_card", "the card presented is not this card")
    good = good_certificates(session, card)
    if "user_auth" not in good:
        raise CardsError(
            "card_id", "no_certificate", "no good certificate to renew: re-issue instead", status=409
        )
    cert_end = jpki.find_certificate(session, good["user_auth"]).not_after
    if not profiles.in_renewal_window(cert_end, moment):
        raise CardsError(
            "card_id",
            "renewal_window",
            f"certificates are renewed from {renewal_opens(cert_end.astimezone(JST).date())}",
            status=409,
        )
    assert card.expires_on is not None
    if card.expires_on <= cert_end.astimezone(JST).date():
        raise CardsError(
            "card_id",
            "card_renewal_needed",
            "the card ends with its certificates: renew the card",
            status=409,
        )
    record = resident_record(session, actor, card.resident_code, card.municipality_code, today, "card_id")
    needed = ["user_auth"] + (["signature"] if "signature" in good else [])
    if not isinstance(pins, Mapping):
        raise CardsError("pins", "type", "must map PIN kind to PIN")
    for kind in needed:
        if kind not in pins:
            raise CardsError(f"pins.{kind}", "required", f"the {kind} PIN is needed to make the new key")
    extra = set(pins) - set(needed)
    if extra:
        raise CardsError(f"pins.{sorted(extra)[0]}", "not_allowed", "not a PIN of a certificate renewed here")
    try:
        for kind in needed:
            soft.verify_pin(kind, pins[kind])  # type: ignore[arg-type]
    except CardError as exc:
        raise CardsError(f"pins.{kind}", exc.rule, str(exc)) from None
    _issue_certificates(session, actor, card, soft, record, pins, keystore, moment, good)
    _record_change(
        session,
        actor,
        card,
        "certificates_renewed",
        good["user_auth"],
        card.user_auth_serial,
        "電子証明書の更新",
        moment,
    )
    return card


def card_maximum(session: Session, card: Card, birth_date: date) -> date:
    """The card's own longest validity, whatever the period of stay: 10th (5th) birthday after its
    発行日, the production date (the day of its ``produced`` transition)."""
    produced = session.scalar(
        select(Transition.at).where(
            Transition.card_id == card.card_id, Transition.to_state == states.PRODUCED
        )
    )
    issued = produced.astimezone(JST).date() if produced is not None else card.issued_on
    assert issued is not None
    return card_validity(birth_date, issued)


def extend_stay(
    session: Session,
    actor: Actor,
    card_id: str,
    *,
    identity: IdentityCheck | None,
    now: datetime | None = None,
) -> Card:
    """在留期間の更新 at the counter: a foreign resident's card ends with the period of stay; once the
    register holds the new 満了日 (from 出入国在留管理庁), the card's expiry follows it, within the
    card's own maximum (:func:`card_maximum`). Recorded in ``cards_changes`` and audited. The
    certificates keep their end (capped by the old expiry): new ones are issued with
    :func:`reissue_certificates`, superseding them."""
    moment = aware_now(now)
    today = today_jst(moment)
    check_identity(identity)
    card = get_card(session, card_id, lock=True)
    _own_clerk(actor, card, "extension of the card's expiry")
    if card.state not in states.ISSUED:
        raise CardsError("card_id", "not_issued", f"the card is {card.state}", status=409)
    assert card.expires_on is not None
    if card.expires_on < today:
        raise CardsError("card_id", "expired", "the card has expired: apply for a new one", status=409)
    record = resident_record(session, actor, card.resident_code, card.municipality_code, today, "card_id")
    stay_end = record.period_of_stay_end
    if stay_end is None:
        raise CardsError("card_id", "no_period_of_stay", "the holder has no period of stay (在留期間)")
    new_end = min(card_maximum(session, card, record.birth_date), stay_end)
    if new_end <= card.expires_on:
        raise CardsError(
            "card_id",
            "stay_not_extended",
            f"the register's period of stay ends {stay_end}: the card already runs to {card.expires_on}",
            status=409,
        )
    old_end = card.expires_on
    card.expires_on = new_end
    _record_change(
        session,
        actor,
        card,
        "expiry_extended",
        old_end.isoformat(),
        new_end.isoformat(),
        f"在留期間満了日 {stay_end.isoformat()}",
        moment,
    )
    return card


def changes(session: Session, card_id: str) -> list[Change]:
    """The card's changes other than states (expiry extended, certificates renewed), oldest first."""
    get_card(session, card_id)
    return list(session.scalars(select(Change).where(Change.card_id == card_id).order_by(Change.id)))


# --------------------------------------------------------------------------- after issuance


def suspend(
    session: Session,
    actor: Actor,
    card_id: str,
    *,
    reason: str = "lost",
    request_id: str | None = None,
    now: datetime | None = None,
) -> Card:
    """一時停止 (call centre, 24/7, or counter): the card's certificates go on hold through the event.

    A replayed call (same ``request_id``) or a card that is already suspended is refused with 409
    and nothing changes.
    """
    moment = aware_now(now)
    if reason not in SUSPEND_REASONS:
        raise CardsError("reason", "suspend_reason", f"must be one of {', '.join(SUSPEND_REASONS)}")
    rid = _request_id(request_id)
    card = get_card(session, card_id, lock=True)
    _check_replay(session, rid)
    if card.state == states.SUSPENDED:
        raise CardsError("card_id", "already_suspended", "the card is already suspended", status=409)
    _transition(
        session, actor, card, "suspend", now=moment, reason=reason, request_id=rid, event_state="suspended"
    )
    return card


def record_found(
    session: Session,
    actor: Actor,
    card_id: str,
    *,
    request_id: str | None = None,
    now: datetime | None = None,
) -> Card:
    """発見: the card is usable again; its held certificates are revoked by the CA (never released),
    so the holder gets new ones at the counter (:func:`reissue_certificates`)."""
    moment = aware_now(now)
    rid = _request_id(request_id)
    card = get_card(session, card_id, lock=True)
    _transition(
        session, actor, card, "found", now=moment, reason="found", request_id=rid, event_state="found"
    )
    card.user_auth_serial = card.signature_serial = None
    card.user_auth_key = card.signature_key = None
    return card


def abolish(
    session: Session, actor: Actor, card_id: str, *, reason: str = "returned", now: datetime | None = None
) -> Card:
    """廃止・返納 (or 申請取下げ before issuance): final; the certificates are revoked through the event."""
    if reason not in ABOLISH_REASONS:
        raise CardsError("reason", "abolish_reason", f"must be one of {', '.join(ABOLISH_REASONS)}")
    card = get_card(session, card_id, lock=True)
    state = "returned" if reason == "returned" else "abolished"
    _transition(session, actor, card, "abolish", now=aware_now(now), reason=reason, event_state=state)
    return card


def expire_due(
    session: Session, actor: Actor, *, today: date, now: datetime | None = None, limit: int = 10_000
) -> list[str]:
    """有効期限切れ: issued cards whose expiry date has passed (a daily job)."""
    moment = aware_now(now)
    cards = list(
        session.scalars(
            select(Card)
            .where(Card.state.in_(states.ISSUED), Card.expires_on < today)
            .order_by(Card.card_id)
            .limit(limit)
            .with_for_update()
        )
    )
    for card in cards:
        _transition(session, actor, card, "expire", now=moment, reason="expired", event_state="expired")
    return [c.card_id for c in cards]


def invalidate(
    session: Session, actor: Actor, card_id: str, *, reason: str, now: datetime | None = None
) -> Card:
    """失効 (death, 個人番号の変更): final."""
    card = get_card(session, card_id, lock=True)
    _transition(
        session, actor, card, "invalidate", now=aware_now(now), reason=reason, event_state="invalidated"
    )
    return card


def authenticate(
    session: Session, card_id: str, challenge: bytes, signature: bytes, *, now: datetime | None = None
) -> bool:
    """利用者証明 as the platform sees it: the card is active and in date, its user-authentication
    certificate is good at the CA, and the signature over the challenge verifies with its key."""
    moment = aware_now(now)
    card = get_card(session, card_id)
    if card.state != states.ACTIVE or card.expires_on is None or card.expires_on < today_jst(moment):
        return False
    if card.user_auth_key is None or card.user_auth_serial is None:
        return False
    cert = jpki.find_certificate(session, card.user_auth_serial)
    if cert.status != "good" or cert.not_after < moment:
        return False
    key = serialization.load_pem_public_key(card.user_auth_key.encode("ascii"))
    return verify_signature(key, signature, challenge)


# --------------------------------------------------------------------------- reports


def history(session: Session, card_id: str) -> list[Transition]:
    get_card(session, card_id)
    return list(
        session.scalars(select(Transition).where(Transition.card_id == card_id).order_by(Transition.id))
    )


def cards_of(session: Session, resident_code: str) -> list[Card]:
    return list(
        session.scalars(select(Card).where(Card.resident_code == resident_code).order_by(Card.created_at))
    )


@dataclass(frozen=True)
class ExpressStatus:
    card_id: str
    reason: str
    applied_on: date
    due: date
    issued_on: date | None
    on_time: bool | None  # None while pending and not yet late


def express_report(
    session: Session, *, today: date, municipality_code: str | None = None
) -> list[ExpressStatus]:
    """特急発行: each express card against its one-week target (done on time, late, or pending)."""
    out = []
    query = select(Card).where(Card.express.is_(True)).order_by(Card.applied_on, Card.card_id)
    if municipality_code is not None:
        query = query.where(Card.municipality_code == municipality_code)
    for card in session.scalars(query):
        assert card.express_due is not None and card.express_reason is not None
        if card.issued_on is not None:
            on_time: bool | None = card.issued_on <= card.express_due
        else:
            on_time = False if today > card.express_due else None
        out.append(
            ExpressStatus(
                card.card_id, card.express_reason, card.applied_on, card.express_due, card.issued_on, on_time
            )
        )
    return out


def queue_depths(session: Session) -> dict[str, int]:
    """Backlog: unconsumed messages per queue."""
    rows = session.execute(
        select(QueueMessage.queue, func.count())
        .where(QueueMessage.consumed_at.is_(None))
        .group_by(QueueMessage.queue)
    )
    depths = {MANUFACTURER_QUEUE: 0, MUNICIPALITY_QUEUE: 0}
    depths.update({queue: int(n) for queue, n in rows})
    return depths


# --------------------------------------------------------------------------- events from others

SYSTEM = Actor(username="cards-events", role="system")
DEATH_REASONS: Final = frozenset({"death", "死亡", "ex_officio_removal", "職権消除"})
EMIGRATION_REASONS: Final = frozenset({"emigration", "国外転出"})
IMMIGRATION_REASONS: Final = frozenset({"immigration", "国外からの転入"})


def handle_identity_changed(session: Session, event: DomainEvent) -> list[str]:
    """``network.identity_changed`` (異動等情報): death → every live card invalid; 住民票コード変更 →
    the cards follow the new code; 国外転出 → the issued card stays usable abroad (継続利用) and is
    flagged ``overseas``; 国外からの転入 clears the flag. Returns the card ids touched."""
    payload = event.payload
    code = str(payload.get("resident_code") or event.key)
    reason = str(payload.get("reason") or "")
    previous = payload.get("previous_resident_code")
    moment = event.occurred_at
    touched: list[str] = []
    if isinstance(previous, str) and previous and previous != code:
        for card in session.scalars(select(Card).where(Card.resident_code == previous)):
            card.resident_code = code
            card.version += 1
            card.updated_at = utcnow()
            _audit(session, SYSTEM, card, "update", {"resident_code_changed": True})
            touched.append(card.card_id)
    if reason in DEATH_REASONS:
        for card in session.scalars(
            select(Card).where(Card.resident_code == code, Card.state.in_(states.LIVE)).order_by(Card.card_id)
        ):
            _transition(
                session,
                SYSTEM,
                card,
                "invalidate",
                now=max(moment, card.state_since),
                reason="death",
                event_state="invalidated",
            )
            touched.append(card.card_id)
    elif reason in EMIGRATION_REASONS or reason in IMMIGRATION_REASONS:
        abroad = reason in EMIGRATION_REASONS
        for card in session.scalars(
            select(Card).where(Card.resident_code == code, Card.state.in_(states.ISSUED))
        ):
            if card.overseas != abroad:
                card.overseas = abroad
                card.version += 1
                card.updated_at = utcnow()
                _audit(session, SYSTEM, card, "update", {"overseas": abroad})
                touched.append(card.card_id)
    return touched


def handle_number_reissued(session: Session, event: DomainEvent) -> list[str]:
    """``numbering.number_reissued``: the 個人番号 printed on the card is no longer the person's, so
    every live card is invalidated and a new 申請書 is issued (再交付 is triggered)."""
    code = str(event.payload.get("resident_code") or event.key)
    municipality = str(event.payload.get("municipality_code") or "")
    touched = []
    for card in session.scalars(
        select(Card).where(Card.resident_code == code, Card.state.in_(states.LIVE)).order_by(Card.card_id)
    ):
        _transition(
            session,
            SYSTEM,
            card,
            "invalidate",
            now=max(event.occurred_at, card.state_since),
            reason="individual_number_changed",
            event_state="invalidated",
        )
        touched.append(card.card_id)
        municipality = municipality or card.municipality_code
    if touched and municipality:
        issue_forms(session, SYSTEM, [code], municipality, now=event.occurred_at)
    return touched


def live_cards(session: Session, codes: Iterable[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for card in session.scalars(
        select(Card).where(Card.resident_code.in_(list(codes)), Card.state.in_(states.LIVE))
    ):
        out.setdefault(card.resident_code, []).append(card.card_id)
    return out
