"""Call centre (SPEC K4): caller identification, suspension with smartphone certificates, OCSP on hold
end to end within a second, found again, queue and answer rate; expiry notices."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp as x509_ocsp
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient

from cards_support import (  # noqa: I001 - tests/ is on the path
    CALL,
    CLERK,
    ID_OK,
    OPERATOR,
    PINS,
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
from kiban.cards.models import ExpiryNotice
from kiban.cards.notices import generate_expiry_notices
from kiban.cards.service import CardsError
from kiban.core.events import DomainEvent, Registry, drain
from kiban.jpki import ocsp
from kiban.jpki import service as jpki
from kiban.jpki.keys import FileKeyStore
from kiban.jpki.profiles import HolderInfo
from kiban.register.models import Resident

__all__ = ["ca", "ks", "registry", "s", "world"]  # fixtures used by name


@pytest.fixture
def configured_ocsp(ca: FileKeyStore) -> Iterator[FileKeyStore]:
    ocsp.configure(ca)
    yield ca
    ocsp.configure(None)


def answers_for(r: Resident, **change: object) -> KnowledgeAnswers:
    base = {
        "birth_date": r.birth_date,
        "name_kana": f"{r.family_name_kana} {r.given_name_kana}",
        "town": r.town,
    }
    base.update(change)
    return KnowledgeAnswers(**base)  # type: ignore[arg-type]


def active_card(
    s: Session, person: Resident, tmp_path: Path, session_maker: sessionmaker[Session], ks: FileKeyStore
) -> tuple[service.HandOverResult, object]:
    card, soft = notified(s, person.resident_code, tmp_path, session_maker)
    result = service.hand_over(s, CLERK, card.card_id, soft=soft, identity=ID_OK, pins=PINS, keystore=ks)
    s.commit()
    return result, soft


def ocsp_status(client: TestClient, s: Session, serial: str) -> x509_ocsp.OCSPResponse:
    cert = x509.load_der_x509_certificate(jpki.find_certificate(s, serial).der)
    issuer = jpki.ca_certificate(jpki.get_ca(s, "jpki-auth"))
    body = (
        x509_ocsp.OCSPRequestBuilder()
        .add_certificate(cert, issuer, hashes.SHA1())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    answer = client.post("/ocsp", content=body, headers={"content-type": ocsp.MEDIA_REQUEST})
    assert answer.status_code == 200
    return x509_ocsp.load_der_ocsp_response(answer.content)


def test_call_suspends_card_and_smartphone_certificates_and_ocsp_holds_within_a_second(
    world: list[str],
    s: Session,
    session_maker: sessionmaker[Session],
    registry: Registry,
    configured_ocsp: FileKeyStore,
    tmp_path: Path,
) -> None:
    ks = configured_ocsp
    person = adults(s)[0]
    result, _soft = active_card(s, person, tmp_path, session_maker, ks)
    card_id = result.card.card_id
    phone_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    holder = HolderInfo(
        person.resident_code,
        f"{person.family_name}　{person.given_name}",
        person.birth_date,
        person.sex,
        "東京都千代田区",
        card_id,
    )
    phone = jpki.issue_mobile_user_auth_certificate(
        s,
        ks,
        public_key=phone_key,
        holder=holder,
        card_expiry=result.card.expires_on or date(2030, 1, 1),
        now=datetime.now(UTC),
    )
    now = datetime.now(UTC)
    ocsp.ensure_signers(s, ks, now)
    ocsp.refresh_responses(s, ks, now)
    s.commit()
    responder = ocsp.OcspResponder(session_maker, ks, anonymous_rate=1e9, identify=lambda _s, _t: None)
    client = TestClient(responder, base_url="http://testserver")
    try:
        assert (
            ocsp_status(client, s, result.user_auth_serial).certificate_status
            == x509_ocsp.OCSPCertStatus.GOOD
        )
        # the call: queue, answer, identify (wrong answers first), suspend
        call = callcentre.receive_call(s)
        s.commit()
        assert [c.id for c in callcentre.waiting(s)] == [call.id]
        callcentre.answer_call(s, CALL, call.id)
        with pytest.raises(CardsError) as err:
            callcentre.suspend_by_call(s, CALL, call.id, card_id)
        assert err.value.rule == "caller_not_identified" and err.value.status == 403
        assert not callcentre.identify_caller(
            s, CALL, call.id, card_id, answers_for(person, birth_date=date(1901, 1, 1))
        )
        assert not callcentre.identify_caller(s, CALL, call.id, card_id, answers_for(person, town="どこか"))
        assert callcentre.identify_caller(s, CALL, call.id, card_id, answers_for(person))
        s.commit()
        started = time.perf_counter()
        held = callcentre.suspend_by_call(s, CALL, call.id, card_id, reason="lost", request_id="call-42")
        s.commit()
        drain(session_maker, registry)
        resp = ocsp_status(client, s, result.user_auth_serial)
        elapsed = time.perf_counter() - started
        assert resp.certificate_status == x509_ocsp.OCSPCertStatus.REVOKED
        assert resp.revocation_reason == x509.ReasonFlags.certificate_hold
        assert elapsed < 1.0, elapsed
        assert held == [phone.serial]
        s.expire_all()
        assert jpki.find_certificate(s, phone.serial).status == "hold"
        assert jpki.find_certificate(s, result.signature_serial or "").status == "hold"
        # a replayed call changes nothing
        before = snapshot(s)
        with pytest.raises(CardsError) as err:
            callcentre.suspend_by_call(s, CALL, call.id, card_id, request_id="call-42")
        assert err.value.rule == "replayed_request"
        s.rollback()
        assert snapshot(s) == before
        # found again (another call)
        call2 = callcentre.receive_call(s)
        callcentre.answer_call(s, CALL, call2.id)
        assert callcentre.identify_caller(s, CALL, call2.id, card_id, answers_for(person))
        callcentre.found_by_call(s, CALL, call2.id, card_id)
        s.commit()
        assert service.get_card(s, card_id).state == states.ACTIVE
    finally:
        responder.stop()


def test_identification_locks_after_three_failures(world: list[str], s: Session) -> None:
    person = adults(s)[1]
    card = service.apply(
        s,
        CLERK,
        service.Application(
            service.issue_forms(s, CLERK, [person.resident_code], "131016")[person.resident_code]
        ),
    )
    call = callcentre.receive_call(s)
    with pytest.raises(CardsError) as err:
        callcentre.identify_caller(s, CALL, call.id, card.card_id, answers_for(person))
    assert err.value.rule == "not_answered"
    callcentre.answer_call(s, CALL, call.id)
    for _ in range(3):
        assert not callcentre.identify_caller(
            s, CALL, call.id, card.card_id, answers_for(person, name_kana="ダレカ")
        )
    with pytest.raises(CardsError) as err:
        callcentre.identify_caller(s, CALL, call.id, card.card_id, answers_for(person))
    assert err.value.rule == "identify_locked"


def test_answer_rate_report(session_maker: sessionmaker[Session]) -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    with session_maker.begin() as s:
        for i in range(21):
            call = callcentre.receive_call(s, now=start + timedelta(minutes=i))
            if i == 7:
                callcentre.abandon_call(s, call.id, now=start + timedelta(minutes=i, seconds=40))
            elif i < 20:
                callcentre.answer_call(s, CALL, call.id, now=start + timedelta(minutes=i, seconds=20))
        with pytest.raises(CardsError) as err:
            callcentre.answer_call(s, CALL, 1)
        assert err.value.rule == "call_closed"
    with session_maker() as s:
        report = callcentre.answer_rate(s, start, start + timedelta(days=1))
        assert (report.received, report.answered, report.abandoned, report.waiting) == (21, 19, 1, 1)
        assert report.rate == pytest.approx(0.95) and report.meets_target  # the boundary counts
        s.rollback()
    with session_maker.begin() as s:
        callcentre.abandon_call(s, 21, now=start + timedelta(hours=1))
    with session_maker() as s:
        report = callcentre.answer_rate(s, start, start + timedelta(days=1))
        assert report.rate == pytest.approx(19 / 21) and report.meets_target is False


def test_expiry_notices_in_batches_never_twice(
    world: list[str], s: Session, session_maker: sessionmaker[Session], ca: FileKeyStore, tmp_path: Path
) -> None:
    home, abroad = adults(s)[2:4]
    first, _ = active_card(s, home, tmp_path, session_maker, ca)
    second, _ = active_card(s, abroad, tmp_path / "b", session_maker, ca)
    service.handle_identity_changed(s, _emigrated(abroad))
    s.commit()
    card_end = first.card.expires_on
    assert card_end is not None
    ends = [jpki.find_certificate(s, r.user_auth_serial).not_after.date() for r in (first, second)]
    day, ahead = min(ends) - timedelta(days=10), timedelta(days=400)  # both certificates fall inside
    # nothing due long before
    assert generate_expiry_notices(s, OPERATOR, today=date.today()) == []
    letters = generate_expiry_notices(s, OPERATOR, today=day, ahead=ahead)
    s.commit()
    by_card = {(n.card_id, n.subject): n for n in letters}
    assert (first.card.card_id, "certificates") in by_card
    mail = by_card[(first.card.card_id, "certificates")]
    assert mail.channel == "mail" and mail.pdf is not None and mail.pdf.startswith(b"%PDF")
    email = by_card[(second.card.card_id, "certificates")]
    assert email.channel == "email" and email.pdf is None
    # a second run on the same or a later day makes nothing new
    assert generate_expiry_notices(s, OPERATOR, today=day, ahead=ahead) == []
    assert generate_expiry_notices(s, OPERATOR, today=day + timedelta(days=5), ahead=ahead) == []
    assert len(letters) == 2
    count = s.scalar(select(func.count()).select_from(ExpiryNotice))
    assert count == len(letters)


def _emigrated(r: Resident) -> DomainEvent:
    import uuid

    return DomainEvent(
        id=str(uuid.uuid4()),
        type="network.identity_changed",
        key=r.resident_code,
        schema_version=1,
        occurred_at=datetime.now(UTC),
        payload={"resident_code": r.resident_code, "reason": "emigration"},
        source="test",
    )
