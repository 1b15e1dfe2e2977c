"""Card renewal (更新), certificate renewal, 在留期間 extension, the CA's list of a person's
certificates, and the national call centre identifying a holder abroad (SPEC K4, issue 6)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from cards_support import (  # noqa: I001 - tests/ is on the path
    CALL,
    CLERK,
    ID_OK,
    OPERATOR,
    PINS,
    TRANSPORT,
    A,
    adults,
    ca,
    ks,
    notified,
    registry,
    s,
    snapshot,
    world,
)
from kiban.cards import callcentre, service, states
from kiban.cards.callcentre import KnowledgeAnswers
from kiban.cards.documents import issue_notice
from kiban.cards.manufacturer import Manufacturer, card_path, receive_shipments
from kiban.cards.models import Card, Change
from kiban.cards.service import Actor, CardsError
from kiban.cards.softcard import SoftCard
from kiban.core.audit import AuditEntry
from kiban.core.events import Registry, drain
from kiban.jpki import profiles
from kiban.jpki import service as jpki
from kiban.jpki.keys import FileKeyStore
from kiban.jpki.profiles import HolderInfo
from kiban.network import service as network
from kiban.network.handlers import register_handlers as network_handlers
from kiban.register import service as register
from kiban.register.models import Resident
from kiban.register.schemas import Actor as RegisterActor
from kiban.register.schemas import Emigration, ExOfficioCorrection, Target

__all__ = ["ca", "ks", "registry", "s", "world"]  # fixtures used by name

REG = RegisterActor(username="clerk-a", municipality_code=A)


def snap(s: Session) -> dict[str, Any]:
    out = snapshot(s)
    out["changes"] = s.scalar(select(func.count()).select_from(Change))
    out["expiry"] = sorted((c.card_id, c.expires_on) for c in s.scalars(select(Card)))
    return out


def active(
    s: Session, code: str, tmp_path: Path, session_maker: sessionmaker[Session], ks: FileKeyStore
) -> tuple[service.HandOverResult, SoftCard]:
    card, soft = notified(s, code, tmp_path, session_maker)
    result = service.hand_over(s, CLERK, card.card_id, soft=soft, identity=ID_OK, pins=PINS, keystore=ks)
    s.commit()
    return result, soft


def to_notified(s: Session, card_id: str, tmp_path: Path, session_maker: sessionmaker[Session]) -> SoftCard:
    """An application already made, taken through check, production, shipping and the notice."""
    service.check(s, OPERATOR, card_id)
    service.order_production(s, OPERATOR)
    s.commit()
    Manufacturer(tmp_path / "cards", TRANSPORT, algorithm="p256").run(session_maker)
    receive_shipments(session_maker)
    issue_notice(s, CLERK, card_id)
    s.commit()
    return SoftCard.open(card_path(tmp_path / "cards", A, card_id), TRANSPORT)


def set_expiry(s: Session, card_id: str, day: date) -> None:
    """Test shortcut: the card as if issued long ago (its expiry near)."""
    s.get_one(Card, card_id).expires_on = day
    s.commit()


# --------------------------------------------------------------------------- the renewal window


def test_renewal_opens_three_months_before_expiry_by_example() -> None:
    assert service.renewal_opens(date(2030, 6, 15)) == date(2030, 3, 15)
    assert service.renewal_opens(date(2027, 5, 31)) == date(2027, 2, 28)  # clamped to the month's end
    assert service.renewal_opens(date(2028, 5, 31)) == date(2028, 2, 29)
    assert service.renewal_opens(date(2030, 1, 10)) == date(2029, 10, 10)


@given(st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 12, 31)))
def test_renewal_window_is_about_three_months(expiry: date) -> None:
    opens = service.renewal_opens(expiry)
    assert 89 <= (expiry - opens).days <= 92
    assert (opens.year * 12 + opens.month) + 3 == expiry.year * 12 + expiry.month
    assert opens.day == expiry.day or (opens.day < expiry.day and (opens + timedelta(days=1)).day == 1)


# --------------------------------------------------------------------------- card renewal


def test_card_renewal_replaces_the_card_and_links_its_certificates(
    world: list[str],
    s: Session,
    session_maker: sessionmaker[Session],
    registry: Registry,
    ca: FileKeyStore,
    tmp_path: Path,
) -> None:
    person = adults(s)[0]
    old, _ = active(s, person.resident_code, tmp_path, session_maker, ca)
    old_id = old.card.card_id
    today = service.today_jst()
    # far from expiry: refused, nothing written
    before = snap(s)
    with pytest.raises(CardsError) as err:
        service.apply_renewal(s, CLERK, old_id)
    assert (err.value.field, err.value.rule, err.value.status) == ("card_id", "renewal_window", 409)
    s.rollback()
    assert snap(s) == before
    # the day before the window opens: still refused; the day it opens: accepted
    expiry = next(
        today + timedelta(days=d)
        for d in range(80, 100)
        if service.renewal_opens(today + timedelta(days=d)) == today + timedelta(days=1)
    )
    set_expiry(s, old_id, expiry)
    with pytest.raises(CardsError) as err:
        service.apply_renewal(s, CLERK, old_id)
    assert err.value.rule == "renewal_window"
    s.rollback()
    set_expiry(s, old_id, today + timedelta(days=60))
    # another municipality's clerk, or the call centre, cannot
    for actor, rule in ((Actor("clerk-b", "clerk", "011002"), "own_municipality"), (CALL, "clerk_only")):
        with pytest.raises(CardsError) as err:
            service.apply_renewal(s, actor, old_id)
        assert (err.value.rule, err.value.status) == (rule, 403)
        s.rollback()
    new = service.apply_renewal(s, CLERK, old_id)
    s.commit()
    assert new.renewal_of == old_id and new.state == states.APPLIED and not new.express
    # one renewal at a time: the new card is on its way
    with pytest.raises(CardsError) as err:
        service.apply_renewal(s, CLERK, old_id)
    assert err.value.rule == "pending_application"
    s.rollback()
    # the old card stays usable until the new one is handed over
    assert service.get_card(s, old_id).state == states.ACTIVE
    soft = to_notified(s, new.card_id, tmp_path, session_maker)
    result = service.hand_over(s, CLERK, new.card_id, soft=soft, identity=ID_OK, pins=PINS, keystore=ca)
    s.commit()
    assert result.replaced == [old_id]
    last = service.history(s, old_id)[-1]
    assert (last.to_state, last.reason) == (states.ABOLISHED, "renewed")
    # 新旧紐付け: each new certificate renews the old one, which is superseded
    for kind, old_serial, new_serial in (
        ("user_auth", old.user_auth_serial, result.user_auth_serial),
        ("signature", old.signature_serial, result.signature_serial),
    ):
        assert old_serial and new_serial, kind
        assert jpki.find_certificate(s, new_serial).renewal_of == old_serial
        assert jpki.replacement_of(s, old_serial) == new_serial
        superseded = jpki.find_certificate(s, old_serial)
        assert (superseded.status, superseded.reason) == ("revoked", "superseded")
    # the old card's abolition reaches the CA afterwards: nothing left to revoke, reasons kept
    drain(session_maker, registry)
    s.expire_all()
    assert jpki.find_certificate(s, old.user_auth_serial).reason == "superseded"
    assert jpki.find_certificate(s, result.user_auth_serial).status == "good"


def test_renewal_refused_for_a_card_not_active(
    world: list[str], s: Session, session_maker: sessionmaker[Session], ca: FileKeyStore, tmp_path: Path
) -> None:
    person = adults(s)[1]
    old, _ = active(s, person.resident_code, tmp_path, session_maker, ca)
    set_expiry(s, old.card.card_id, service.today_jst() + timedelta(days=30))
    service.suspend(s, CALL, old.card.card_id, reason="lost")
    s.commit()
    before = snap(s)
    with pytest.raises(CardsError) as err:
        service.apply_renewal(s, CLERK, old.card.card_id)
    assert err.value.rule == "not_active"
    s.rollback()
    for bad in ("", "x" * 13, 12):
        with pytest.raises(CardsError) as err:
            service.apply_renewal(s, CLERK, bad)  # type: ignore[arg-type]
        assert (err.value.field, err.value.rule) == ("card_id", "format")
        s.rollback()
    assert snap(s) == before


# --------------------------------------------------------------------------- certificate renewal


def test_certificate_renewal_at_the_counter(
    world: list[str], s: Session, session_maker: sessionmaker[Session], ca: FileKeyStore, tmp_path: Path
) -> None:
    person = adults(s)[2]
    result, soft = active(s, person.resident_code, tmp_path, session_maker, ca)
    card_id = result.card.card_id
    end = jpki.find_certificate(s, result.user_auth_serial).not_after
    later = end - timedelta(days=30)  # in the certificates' last 3 months
    pins = {"user_auth": PINS["user_auth"], "signature": PINS["signature"]}

    def renew(**change: Any) -> Card:
        args: dict[str, Any] = {
            "soft": soft,
            "identity": ID_OK,
            "pins": pins,
            "keystore": ca,
            "now": later,
        }
        args.update(change)
        actor = args.pop("actor", CLERK)
        return service.renew_certificates(s, actor, card_id, **args)

    before = snap(s)
    refusals: list[tuple[dict[str, Any], str]] = [
        ({"now": None}, "renewal_window"),  # today: years too early
        ({"identity": None}, "identity_check_required"),
        ({"actor": CALL}, "clerk_only"),
        ({"actor": Actor("clerk-b", "clerk", "011002")}, "own_municipality"),
        ({"pins": {"user_auth": "1234"}}, "required"),  # the signature certificate needs its PIN
        ({"pins": {**pins, "juki": "5678"}}, "not_allowed"),
        ({"pins": "1234"}, "type"),
        ({"soft": object()}, "wrong_card"),
    ]
    for change, rule in refusals:
        with pytest.raises(CardsError) as err:
            renew(**change)
        assert err.value.rule == rule, (change, err.value)
        s.rollback()
    assert snap(s) == before
    # a card ending with its certificates is renewed itself, not its certificates
    card_end = result.card.expires_on
    set_expiry(s, card_id, end.astimezone(service.JST).date())
    with pytest.raises(CardsError) as err:
        renew()
    assert err.value.rule == "card_renewal_needed"
    s.rollback()
    assert card_end is not None
    set_expiry(s, card_id, card_end)
    renewed = renew()
    s.commit()
    new_user = jpki.find_certificate(s, renewed.user_auth_serial or "")
    assert new_user.renewal_of == result.user_auth_serial
    assert new_user.not_after > end  # renewed in the window: to the 6th birthday (within the card)
    assert new_user.not_after.astimezone(service.JST).date() <= card_end
    old_user = jpki.find_certificate(s, result.user_auth_serial)
    assert (old_user.status, old_user.reason, old_user.replaced_by) == (
        "revoked",
        "superseded",
        new_user.serial,
    )
    assert jpki.find_certificate(s, renewed.signature_serial or "").renewal_of == result.signature_serial
    # the card holds the new certificates, made for keys generated on it
    assert soft.certificate("user_auth") == new_user.der
    [change] = service.changes(s, card_id)
    assert (change.change, change.old_value, change.new_value) == (
        "certificates_renewed",
        result.user_auth_serial,
        new_user.serial,
    )
    assert service.get_card(s, card_id).state == states.ACTIVE
    # renewed once: the new certificate is not in its window
    with pytest.raises(CardsError) as err:
        renew()
    assert err.value.rule == "renewal_window"


# --------------------------------------------------------------------------- 在留期間 extension


def correct_stay(s: Session, code: str, end: date) -> None:
    today = service.today_jst()
    register.ex_officio_correction(
        s,
        REG,
        ExOfficioCorrection(
            notified_on=today,
            effective_on=today,
            target=Target(resident_code=code),
            changes={"period_of_stay_end": end.isoformat()},
        ),
    )
    s.commit()


def test_stay_extension_moves_the_card_expiry(
    world: list[str], s: Session, session_maker: sessionmaker[Session], ca: FileKeyStore, tmp_path: Path
) -> None:
    person = adults(s)[3]
    today = service.today_jst()
    correct_stay(s, person.resident_code, today + timedelta(days=200))
    result, _ = active(s, person.resident_code, tmp_path, session_maker, ca)
    card_id = result.card.card_id
    assert result.card.expires_on == today + timedelta(days=200)  # the card ends with the stay
    # nothing extended yet
    before = snap(s)
    with pytest.raises(CardsError) as err:
        service.extend_stay(s, CLERK, card_id, identity=ID_OK)
    assert (err.value.rule, err.value.status) == ("stay_not_extended", 409)
    s.rollback()
    # 在留期間更新: the register learns the new end
    correct_stay(s, person.resident_code, today + timedelta(days=3 * 365))
    before = snap(s)
    for actor, identity, rule in (
        (CLERK, None, "identity_check_required"),
        (Actor("clerk-b", "clerk", "011002"), ID_OK, "own_municipality"),
        (CALL, ID_OK, "clerk_only"),
    ):
        with pytest.raises(CardsError) as err:
            service.extend_stay(s, actor, card_id, identity=identity)
        assert err.value.rule == rule
        s.rollback()
    assert snap(s) == before
    card = service.extend_stay(s, CLERK, card_id, identity=ID_OK)
    s.commit()
    assert card.expires_on == today + timedelta(days=3 * 365)
    [change] = service.changes(s, card_id)
    assert (change.change, change.old_value, change.new_value) == (
        "expiry_extended",
        (today + timedelta(days=200)).isoformat(),
        (today + timedelta(days=3 * 365)).isoformat(),
    )
    entry = s.scalars(
        select(AuditEntry).where(AuditEntry.subject == person.resident_code).order_by(AuditEntry.seq.desc())
    ).first()
    assert entry is not None and entry.detail["change"] == "expiry_extended"
    # a stay longer than the card may run: the card's own maximum (10th birthday after 発行日)
    correct_stay(s, person.resident_code, today + timedelta(days=30 * 365))
    card = service.extend_stay(s, CLERK, card_id, identity=ID_OK)
    s.commit()
    assert card.expires_on == service.card_validity(person.birth_date, today)
    assert len(service.changes(s, card_id)) == 2


def test_stay_extension_refused_without_a_period_of_stay(
    world: list[str], s: Session, session_maker: sessionmaker[Session], ca: FileKeyStore, tmp_path: Path
) -> None:
    person = adults(s)[4]
    result, _ = active(s, person.resident_code, tmp_path, session_maker, ca)
    before = snap(s)
    with pytest.raises(CardsError) as err:
        service.extend_stay(s, CLERK, result.card.card_id, identity=ID_OK)
    assert (err.value.field, err.value.rule) == ("card_id", "no_period_of_stay")
    s.rollback()
    with pytest.raises(CardsError) as err:
        service.extend_stay(s, CLERK, "NOSUCHCARD99", identity=ID_OK)
    assert err.value.status == 404
    s.rollback()
    assert snap(s) == before


# --------------------------------------------------------------------------- the CA's list


def _phone(s: Session, ks: FileKeyStore, person: Resident, card: Card, kind: str) -> jpki.IssuedCertificate:
    holder = HolderInfo(
        person.resident_code,
        f"{person.family_name}　{person.given_name}",
        person.birth_date,
        person.sex,
        "東京都千代田区",
        card.card_id,
    )
    issue = (
        jpki.issue_mobile_user_auth_certificate
        if kind == "mobile_user_auth"
        else jpki.issue_mobile_signature_certificate
    )
    return issue(
        s,
        ks,
        public_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
        holder=holder,
        card_expiry=card.expires_on or date(2030, 1, 1),
        now=datetime.now(UTC),
    )


def test_certificates_of_lists_a_persons_certificates(
    world: list[str], s: Session, session_maker: sessionmaker[Session], ca: FileKeyStore, tmp_path: Path
) -> None:
    person = adults(s)[5]
    result, _ = active(s, person.resident_code, tmp_path, session_maker, ca)
    phone_auth = _phone(s, ca, person, result.card, "mobile_user_auth")
    phone_sign = _phone(s, ca, person, result.card, "mobile_signature")
    s.commit()
    code = person.resident_code
    mobile = ("mobile_signature", "mobile_user_auth")
    assert [c.serial for c in jpki.certificates_of(s, code, kinds=mobile)] == [
        phone_auth.serial,
        phone_sign.serial,
    ]
    assert {c.serial for c in jpki.certificates_of(s, code)} == {
        result.user_auth_serial,
        result.signature_serial,
        phone_auth.serial,
        phone_sign.serial,
    }
    jpki.hold(s, phone_auth.serial, now=datetime.now(UTC))
    jpki.revoke(s, phone_sign.serial, reason="keyCompromise", now=datetime.now(UTC))
    s.commit()
    # held is live, revoked is not
    assert [c.serial for c in jpki.certificates_of(s, code, kinds=mobile)] == [phone_auth.serial]
    assert len(jpki.certificates_of(s, code, kinds=mobile, live_only=False)) == 2
    assert jpki.certificates_of(s, "00000000000") == []
    for kwargs, field, rule in (
        ({"resident_code": "123"}, "resident_code", "format"),
        ({"resident_code": "１２３４５６７８９０１"}, "resident_code", "format"),
        ({"resident_code": None}, "resident_code", "format"),
        ({"kinds": ["bogus"]}, "kinds", "personal_kind"),
        ({"kinds": ["organisation"]}, "kinds", "personal_kind"),
        ({"kinds": "mobile_user_auth"}, "kinds", "type"),
        ({"kinds": [1]}, "kinds", "type"),
    ):
        args: dict[str, Any] = {"resident_code": code, **kwargs}
        with pytest.raises(jpki.CaError) as err:
            jpki.certificates_of(s, args.pop("resident_code"), **args)
        assert (err.value.field, err.value.rule) == (field, rule)


# --------------------------------------------------------------------------- national call centre


def test_national_call_centre_identifies_a_holder_abroad(
    world: list[str],
    s: Session,
    session_maker: sessionmaker[Session],
    registry: Registry,
    ca: FileKeyStore,
    tmp_path: Path,
) -> None:
    network_handlers(registry)
    network.seed_copies(s, [A])
    s.commit()
    person = adults(s, non_head=True)[0]
    result, _ = active(s, person.resident_code, tmp_path, session_maker, ca)
    card_id = result.card.card_id
    phone = _phone(s, ca, person, result.card, "mobile_user_auth")
    s.commit()
    today = service.today_jst()
    register.emigration(
        s,
        REG,
        Emigration(
            notified_on=today,
            effective_on=today,
            destination_country="ドイツ",
            targets=[Target(resident_code=person.resident_code)],
        ),
    )
    s.commit()
    drain(session_maker, registry)  # register → national copy → cards (継続利用) and the CA
    s.expire_all()
    card = service.get_card(s, card_id)
    assert card.overseas and card.state == states.ACTIVE
    assert network.national_history(s, person.resident_code)[-1].status != "active"
    # the municipality has no current record: its read refuses, so the national copy answers
    with pytest.raises(CardsError):
        service.resident_record(s, CLERK, person.resident_code, A, today, "card_id")
    call = callcentre.receive_call(s)
    callcentre.answer_call(s, CALL, call.id)
    answers = KnowledgeAnswers(
        person.birth_date, f"{person.family_name_kana}　{person.given_name_kana}", person.town
    )
    # naming the prefecture and city of the address is not knowing it
    assert not callcentre.identify_caller(
        s, CALL, call.id, card_id, KnowledgeAnswers(answers.birth_date, answers.name_kana, "東京都千代田区")
    )
    assert not callcentre.identify_caller(
        s, CALL, call.id, card_id, KnowledgeAnswers(date(1950, 1, 1), answers.name_kana, answers.town)
    )
    assert callcentre.identify_caller(s, CALL, call.id, card_id, answers)
    entry = s.scalars(
        select(AuditEntry)
        .where(AuditEntry.purpose == "コールセンター本人確認")
        .order_by(AuditEntry.seq.desc())
    ).first()
    assert entry is not None and entry.detail["source"] == "national_copy" and entry.detail["matched"]
    held = callcentre.suspend_by_call(
        s, CALL, call.id, card_id, reason="stolen", request_id=str(uuid.uuid4())
    )
    s.commit()
    assert held == [phone.serial]
    assert service.get_card(s, card_id).state == states.SUSPENDED


def test_identification_answers_bad_input(world: list[str], s: Session) -> None:
    person = adults(s)[6]
    card = service.apply(
        s,
        CLERK,
        service.Application(service.issue_forms(s, CLERK, [person.resident_code], A)[person.resident_code]),
    )
    call = callcentre.receive_call(s)
    callcentre.answer_call(s, CALL, call.id)
    s.commit()
    good = KnowledgeAnswers(person.birth_date, person.family_name_kana + person.given_name_kana, person.town)
    for answers, field in (
        (KnowledgeAnswers(person.birth_date, "ア" * 101, person.town), "answers.name_kana"),
        (KnowledgeAnswers(person.birth_date, good.name_kana, "町\x00"), "answers.town"),
        (KnowledgeAnswers("1990-01-01", good.name_kana, person.town), "answers.birth_date"),  # type: ignore[arg-type]
        (KnowledgeAnswers(person.birth_date, good.name_kana, None), "answers.town"),  # type: ignore[arg-type]
        ({"birth_date": person.birth_date}, "answers"),
    ):
        with pytest.raises(CardsError) as err:
            callcentre.identify_caller(s, CALL, call.id, card.card_id, answers)  # type: ignore[arg-type]
        assert err.value.field == field
        s.rollback()
    # refused input spends no try: three wrong answers still allowed, then the right one
    assert callcentre.identify_caller(s, CALL, call.id, card.card_id, good)
    # an empty town never matches
    call2 = callcentre.receive_call(s)
    callcentre.answer_call(s, CALL, call2.id)
    assert not callcentre.identify_caller(
        s, CALL, call2.id, card.card_id, KnowledgeAnswers(good.birth_date, good.name_kana, " ")
    )
    assert profiles.RENEWAL_WINDOW_MONTHS == service.RENEWAL_WINDOW_MONTHS
