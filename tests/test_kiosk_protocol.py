"""Kiosk session protocol (SPEC K6): the happy path, every refusal and bad input; each refusal is
logged and issues nothing."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pypdf import PdfReader
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from kiban.cards import service as cards
from kiban.cards.softcard import CardError
from kiban.core import pdfsign
from kiban.core.events import Registry, drain
from kiban.core.models.documents import IssuedDocument
from kiban.jpki import service as jpki
from kiban.kiosk import service as kiosk
from kiban.kiosk.issuing import MunicipalRequest, MunicipalResponse, RegisterIssuer
from kiban.kiosk.models import KioskIssuance, KioskRefusal, KioskSession
from kiban.kiosk.service import Centre, KioskCredential, KioskError
from kiban.kiosk.signing import pades_finisher
from kiban.network.handlers import register_handlers as network_handlers
from kiban.register import service as register
from kiban.register.handlers import register_handlers as register_handlers_
from kiban.register.models import Resident
from kiban.register.schemas import Actor as RegisterActor
from kiban.register.schemas import SetRestriction
from kiosk_support import A, B, C, World, build_world, sign_in


@pytest.fixture
def world(engine: Engine, session_maker: sessionmaker[Session], tmp_path: Path) -> Iterator[World]:
    yield build_world(engine, session_maker, tmp_path, people=40, holders=8)


def text_of(pdf: bytes) -> str:
    text = "".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages)
    return text.replace(" ", "").replace("\u3000", "")


def counts(world: World) -> tuple[int, int, int]:
    with world.session_maker() as s:
        return (
            s.scalar(select(func.count()).select_from(KioskIssuance)) or 0,
            s.scalar(select(func.count()).select_from(IssuedDocument)) or 0,
            s.scalar(select(func.count()).select_from(KioskRefusal)) or 0,
        )


def refused(world: World, rule: str, call: object, *args: object, **kwargs: object) -> KioskError:
    """``call`` is refused with ``rule``; the refusal is logged and nothing is issued."""
    issued, documents, logged = counts(world)
    with pytest.raises(KioskError) as err:
        call(*args, **kwargs)  # type: ignore[operator]
    assert err.value.rule == rule, str(err.value)
    assert err.value.message  # a clear on-screen message
    after = counts(world)
    assert after[:2] == (issued, documents)
    assert after[2] == logged + 1
    with world.session_maker() as s:
        last = s.scalars(select(KioskRefusal).order_by(KioskRefusal.id.desc())).first()
        assert last is not None and last.rule == rule
    return err.value


def holder_in(world: World, municipality: str) -> str:
    return next(c for c, m in world.municipality.items() if m == municipality)


def name_of(world: World, code: str) -> str:
    with world.session_maker() as s:
        r = s.scalars(select(Resident).where(Resident.resident_code == code)).first()
        assert r is not None
        return f"{r.family_name}{r.given_name}".replace("　", "")


# --------------------------------------------------------------------------- happy path


def test_a_holder_gets_their_own_documents_and_the_fee_is_recorded(world: World) -> None:
    code = holder_in(world, A)
    sid = sign_in(world, code)
    printed = world.centre.request_document(world.kiosk, sid, "resident_copy")
    assert printed.pdf.startswith(b"%PDF") and printed.fee == 200
    assert name_of(world, code) in text_of(printed.pdf)
    with world.session_maker() as s:  # PAdES by the municipality's organisation key, checked online too
        checked = pdfsign.verify_pdf(
            printed.pdf, trust_roots=pdfsign.trust_roots_from_db(s), online_session=s
        )
    assert checked.ok, checked.as_dict()
    whole = world.centre.request_document(world.kiosk, sid, "resident_copy", household=True)
    assert name_of(world, code) in text_of(whole.pdf)
    entry = world.centre.request_document(world.kiosk, sid, "entry_certificate")
    assert "記載事項証明書" in text_of(entry.pdf)
    with world.session_maker() as s:
        rows = list(s.scalars(select(KioskIssuance).order_by(KioskIssuance.id)))
        assert [r.holder_resident_code for r in rows] == [code] * 3
        assert {r.operator_id for r in rows} == {"seven"}
        now = datetime.now(UTC).astimezone(kiosk.JST)
        lines = kiosk.settlement(s, now.year, now.month)
    assert [(x.municipality_code, x.document_type, x.operator_id, x.count, x.fees) for x in lines] == [
        (A, "entry_certificate", "seven", 1, 200),
        (A, "resident_copy", "seven", 2, 400),
    ]
    assert "合計 | | | 3 | 600円" in kiosk.settlement_markdown(lines, now.year, now.month)
    world.centre.close(world.kiosk, sid)
    refused(world, "session_closed", world.centre.request_document, world.kiosk, sid, "resident_copy")


def test_koseki_fuhyo_for_a_national(world: World) -> None:
    code = holder_in(world, B)
    sid = sign_in(world, code)
    with world.session_maker() as s:
        r = s.scalars(select(Resident).where(Resident.resident_code == code)).one()
        national = r.honseki is not None
    if national:
        printed = world.centre.request_document(world.kiosk, sid, "koseki_fuhyo")
        assert "戸籍の附票の写し" in text_of(printed.pdf)
        assert name_of(world, code) in text_of(printed.pdf)
    else:
        refused(
            world, "municipality_refused", world.centre.request_document, world.kiosk, sid, "koseki_fuhyo"
        )


# --------------------------------------------------------------------------- card refusals


def test_suspended_card_is_refused(world: World) -> None:
    code = holder_in(world, A)
    with world.session_maker.begin() as s:
        card = cards.cards_of(s, code)[-1]
        cards.suspend(s, cards.Actor("agent-1", "call_centre"), card.card_id, reason="lost")
    refused(world, "card_suspended", sign_in, world, code)


def test_expired_card_is_refused(world: World) -> None:
    code = holder_in(world, B)
    with world.session_maker.begin() as s:
        card = cards.cards_of(s, code)[-1]
        assert card.expires_on is not None
        cards.expire_due(
            s, cards.Actor("jlis-1", "national_operator"), today=card.expires_on + timedelta(days=1)
        )
    refused(world, "card_expired", sign_in, world, code)


def test_expired_certificate_is_refused(world: World) -> None:
    code = holder_in(world, A)
    later = world.centre.clock() + timedelta(days=365 * 11)
    world.centre.clock = lambda: later
    refused(world, "certificate_expired", sign_in, world, code)


def test_revoked_certificate_is_refused(world: World) -> None:
    code = holder_in(world, C)
    with world.session_maker.begin() as s:
        serial = cards.cards_of(s, code)[-1].user_auth_serial
        assert serial is not None
        jpki.revoke(s, serial, reason="keyCompromise", now=datetime.now(UTC))
    refused(world, "certificate_revoked", sign_in, world, code)


def test_wrong_pin_then_lock_never_reaches_the_centre(world: World) -> None:
    code = holder_in(world, A)
    soft = world.cards[code]
    challenge = world.centre.open_session(world.kiosk)
    rules = []
    for _ in range(3):
        with pytest.raises(CardError) as err:
            soft.sign_challenge("0000", challenge.challenge)
        rules.append(err.value.rule)
    assert rules == ["pin_wrong", "pin_wrong", "pin_locked"]
    assert kiosk.MESSAGES["pin_wrong"] and kiosk.MESSAGES["pin_locked"]
    with pytest.raises(CardError) as err:  # even the right PIN is refused by a locked card
        soft.sign_challenge("1234", challenge.challenge)
    assert err.value.rule == "pin_locked"
    with world.session_maker() as s:
        assert s.get(KioskSession, challenge.session_id).state == "challenged"  # type: ignore[union-attr]


# --------------------------------------------------------------------------- holder refusals


def test_dv_restriction_blocks_kiosk_issuance(world: World) -> None:
    code = holder_in(world, A)
    today = date.today()
    with world.session_maker.begin() as s:
        register.set_restriction(
            s,
            RegisterActor(username="clerk-a", municipality_code=A),
            SetRestriction(
                resident_code=code, reason="DV", starts_on=today, ends_on=today + timedelta(days=365)
            ),
        )
    registry = Registry()
    register_handlers_(registry)
    network_handlers(registry)
    drain(world.session_maker, registry)
    sid = sign_in(world, code)
    refused(world, "dv_restricted", world.centre.request_document, world.kiosk, sid, "resident_copy")


def test_municipality_not_participating(world: World) -> None:
    code = holder_in(world, C)
    with world.session_maker.begin() as s:
        for p in kiosk.participation_of(s, C):
            kiosk.set_participation(s, C, p.document_type, fee=p.fee, enabled=False)
    refused(world, "municipality_not_participating", sign_in, world, code)


def test_document_type_not_offered_and_unknown(world: World) -> None:
    code = holder_in(world, A)
    with world.session_maker.begin() as s:
        kiosk.set_participation(s, A, "entry_certificate", fee=200, enabled=False)
    sid = sign_in(world, code)
    refused(
        world, "document_not_offered", world.centre.request_document, world.kiosk, sid, "entry_certificate"
    )
    refused(world, "document_not_offered", world.centre.request_document, world.kiosk, sid, "tax_certificate")
    refused(world, "document_type", world.centre.request_document, world.kiosk, sid, "koseki")
    refused(
        world,
        "household_not_offered",
        world.centre.request_document,
        world.kiosk,
        sid,
        "seal_certificate",
        household=True,
    )


def test_age_limit(world: World) -> None:
    code = holder_in(world, B)
    with world.session_maker.begin() as s:
        kiosk.set_participation(s, B, "resident_copy", fee=200, min_age=20)
        kiosk.set_participation(s, B, "entry_certificate", fee=200, min_age=20)
    sid = sign_in(world, code)
    world.centre.request_document(world.kiosk, sid, "resident_copy")  # the holders are adults
    with world.session_maker.begin() as s:
        # an impossible limit shows the rule refuses
        row = kiosk.set_participation(s, B, "resident_copy", fee=200, min_age=20)
        row.min_age = 200
    refused(world, "age_limit", world.centre.request_document, world.kiosk, sid, "resident_copy")


def test_resident_moved_out(world: World) -> None:
    code = holder_in(world, A)
    sid = sign_in(world, code)

    def removed(request: MunicipalRequest) -> MunicipalResponse:
        # the municipality finds only a 除票 (the person moved away after the card was read)
        return MunicipalResponse(
            request.request_id,
            request.session_id,
            request.request_hash,
            refusal=("resident_code", "dead_or_removed", "the record is removed"),
        )

    centre = Centre(world.session_maker, removed)
    refused(world, "moved_out", centre.request_document, world.kiosk, sid, "resident_copy")


# --------------------------------------------------------------------------- bad input


def test_forged_challenge_and_signature(world: World) -> None:
    code = holder_in(world, A)
    soft = world.cards[code]
    cert = soft.certificate("user_auth")
    assert cert is not None
    ch = world.centre.open_session(world.kiosk)
    forged = bytes(32)
    sig = soft.sign_challenge("1234", forged)
    refused(
        world, "challenge_mismatch", world.centre.authenticate, world.kiosk, ch.session_id, forged, cert, sig
    )
    # the right challenge with a signature over something else
    refused(
        world,
        "signature_invalid",
        world.centre.authenticate,
        world.kiosk,
        ch.session_id,
        ch.challenge,
        cert,
        sig,
    )
    # another holder's certificate with this holder's signature
    other = world.cards[holder_in(world, B)].certificate("user_auth")
    good = soft.sign_challenge("1234", ch.challenge)
    refused(
        world,
        "signature_invalid",
        world.centre.authenticate,
        world.kiosk,
        ch.session_id,
        ch.challenge,
        other,
        good,
    )


def test_replayed_challenge_is_refused(world: World) -> None:
    code = holder_in(world, A)
    soft = world.cards[code]
    cert = soft.certificate("user_auth")
    assert cert is not None
    ch = world.centre.open_session(world.kiosk)
    sig = soft.sign_challenge("1234", ch.challenge)
    world.centre.authenticate(world.kiosk, ch.session_id, ch.challenge, cert, sig)
    refused(
        world,
        "challenge_used",
        world.centre.authenticate,
        world.kiosk,
        ch.session_id,
        ch.challenge,
        cert,
        sig,
    )
    # the old signature replayed on a fresh session
    fresh = world.centre.open_session(world.kiosk)
    refused(
        world,
        "challenge_mismatch",
        world.centre.authenticate,
        world.kiosk,
        fresh.session_id,
        ch.challenge,
        cert,
        sig,
    )


def test_expired_challenge(world: World) -> None:
    code = holder_in(world, A)
    soft = world.cards[code]
    ch = world.centre.open_session(world.kiosk)
    sig = soft.sign_challenge("1234", ch.challenge)
    later = world.centre.clock() + timedelta(minutes=2)
    world.centre.clock = lambda: later
    refused(
        world,
        "session_expired",
        world.centre.authenticate,
        world.kiosk,
        ch.session_id,
        ch.challenge,
        soft.certificate("user_auth"),
        sig,
    )


def test_certificate_from_another_ca(world: World) -> None:
    code = holder_in(world, A)
    soft = world.cards[code]
    real = x509.load_der_x509_certificate(soft.certificate("user_auth") or b"")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Kiban JPKI User Authentication CA")])
    now = datetime.now(UTC)
    fake_ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=9))
        .sign(key, hashes.SHA256())
    )
    # same subject, serial and public key as the real certificate, signed by an impostor CA
    forged = (
        x509.CertificateBuilder()
        .subject_name(real.subject)
        .issuer_name(fake_ca.subject)
        .public_key(real.public_key())
        .serial_number(real.serial_number)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=9))
        .sign(key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    ch = world.centre.open_session(world.kiosk)
    sig = soft.sign_challenge("1234", ch.challenge)
    refused(
        world,
        "issuer",
        world.centre.authenticate,
        world.kiosk,
        ch.session_id,
        ch.challenge,
        forged.public_bytes(Encoding.DER),
        sig,
    )
    refused(
        world,
        "der",
        world.centre.authenticate,
        world.kiosk,
        ch.session_id,
        ch.challenge,
        b"\x30\x03junk",
        sig,
    )


def test_swapped_session_ids(world: World) -> None:
    code = holder_in(world, A)
    sid = sign_in(world, code)
    refused(world, "other_kiosk", world.centre.request_document, world.other_kiosk, sid, "resident_copy")
    refused(world, "session_unknown", world.centre.request_document, world.kiosk, "0" * 32, "resident_copy")
    refused(
        world, "session_unknown", world.centre.request_document, world.kiosk, "../../etc", "resident_copy"
    )
    refused(
        world,
        "not_authenticated",
        world.centre.request_document,
        world.kiosk,
        world.centre.open_session(world.kiosk).session_id,
        "resident_copy",
    )


def test_oversized_and_mistyped_requests(world: World) -> None:
    ch = world.centre.open_session(world.kiosk)
    refused(
        world,
        "oversized",
        world.centre.authenticate,
        world.kiosk,
        ch.session_id,
        ch.challenge,
        b"0" * 100_000,
        b"x",
    )
    refused(world, "type", world.centre.authenticate, world.kiosk, ch.session_id, "text", b"x", b"x")
    sid = sign_in(world, holder_in(world, A))
    refused(world, "document_type", world.centre.request_document, world.kiosk, sid, "x" * 10_000)
    refused(world, "type", world.centre.request_document, world.kiosk, sid, "resident_copy", household="yes")


def test_kiosk_credentials_and_the_version_break_drill(world: World) -> None:
    bad = replace(world.kiosk, credential="guess")
    refused(world, "credential", world.centre.open_session, bad)
    refused(world, "kiosk_unknown", world.centre.open_session, KioskCredential("nobody", "x", "2"))
    refused(
        world, "version_unsupported", world.centre.open_session, replace(world.kiosk, interface_version="9")
    )
    with world.session_maker.begin() as s:
        kiosk.withdraw_version(s, "2", "v2.3 update sends a malformed document type")
    broken = world.kiosk
    working = replace(world.other_kiosk, interface_version="1")
    err = refused(world, "version_withdrawn", world.centre.open_session, broken)
    assert err.status == 409
    sid = sign_in(world, holder_in(world, B), working)  # version 1 kiosks keep working
    assert world.centre.request_document(working, sid, "resident_copy").pdf.startswith(b"%PDF")
    with world.session_maker.begin() as s:
        kiosk.restore_version(s, "2")
    world.centre.open_session(broken)


# --------------------------------------------------------------------------- binding


def test_an_answer_about_someone_else_is_never_printed(world: World) -> None:
    a, b = holder_in(world, A), [c for c, m in world.municipality.items() if m == A][1]
    honest = RegisterIssuer(
        world.session_maker, signers=world.signers, finish=pades_finisher(world.session_maker, world.keystore)
    )

    def swapped(request: MunicipalRequest) -> MunicipalResponse:
        # a broken municipal node answers with the document of another resident
        other = honest(replace(request, resident_code=b if request.resident_code == a else a))
        return replace(other, request_hash=request.request_hash)

    def misbound(request: MunicipalRequest) -> MunicipalResponse:
        return replace(honest(request), session_id="f" * 32)

    def tampered(request: MunicipalRequest) -> MunicipalResponse:
        answer = honest(request)
        return replace(answer, data={**answer.data, "住所": "偽"})

    def broken(request: MunicipalRequest) -> MunicipalResponse:
        raise TimeoutError

    unsigned = RegisterIssuer(world.session_maker, signers=world.signers)  # no PAdES

    sid = sign_in(world, a)
    for function, rule in (
        (swapped, "binding"),
        (misbound, "binding"),
        (tampered, "binding"),
        (broken, "municipality_unavailable"),
        (unsigned, "binding"),
    ):
        centre = Centre(world.session_maker, function, require_signed=True)
        before = counts(world)[0]
        refused_ = pytest.raises(KioskError)
        with refused_ as err:
            centre.request_document(world.kiosk, sid, "resident_copy")
        assert err.value.rule == rule
        assert counts(world)[0] == before  # nothing printed or charged


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    challenge=st.binary(max_size=80),
    certificate=st.one_of(st.binary(max_size=200), st.just(b"\x30\x82\x01\x00" + bytes(256))),
    signature=st.binary(max_size=600),
)
def test_hostile_authentication_bytes_are_refused(
    world: World, challenge: bytes, certificate: bytes, signature: bytes
) -> None:
    """Whatever a kiosk sends as challenge, certificate and signature: a named refusal, no session
    authenticated, nothing issued."""
    ch = world.centre.open_session(world.kiosk)
    err = refused_any(
        world, world.centre.authenticate, world.kiosk, ch.session_id, challenge, certificate, signature
    )
    assert err.rule in {"challenge_mismatch", "der", "issuer", "oversized", "signature_invalid"}
    with world.session_maker() as s:
        assert s.get(KioskSession, ch.session_id).state == "challenged"  # type: ignore[union-attr]


def refused_any(world: World, call: object, *args: object) -> KioskError:
    issued, documents, logged = counts(world)
    with pytest.raises(KioskError) as err:
        call(*args)  # type: ignore[operator]
    assert counts(world) == (issued, documents, logged + 1)
    return err.value


def test_seal_and_tax_certificates_at_the_kiosk(world: World) -> None:
    """印鑑登録証明書 with the card alone (no 印鑑登録証), 所得・課税証明書 of a chosen year; without a
    registered seal or an assessment the municipality refuses and nothing is charged."""
    from kiban.register.seals.service import register_seal, synthetic_seal_image
    from kiban.register.taxes.service import record_tax_assessment

    code = holder_in(world, A)
    with world.session_maker.begin() as s:
        kiosk.set_participation(s, A, "tax_certificate", fee=300)
    sid = sign_in(world, code)
    refused(
        world, "municipality_refused", world.centre.request_document, world.kiosk, sid, "seal_certificate"
    )
    refused(
        world,
        "municipality_refused",
        world.centre.request_document,
        world.kiosk,
        sid,
        "tax_certificate",
        fiscal_year=2025,
    )
    clerk = RegisterActor(username="clerk-a", municipality_code=A)
    with world.session_maker.begin() as s:
        family = s.scalars(select(Resident).where(Resident.resident_code == code)).one().family_name
        register_seal(s, clerk, code, synthetic_seal_image(family), "image/png", date.today())
        record_tax_assessment(s, clerk, code, 2025, 2_000_000, 2_600_000, 205_000)
    seal = world.centre.request_document(world.kiosk, sid, "seal_certificate")
    assert "印鑑登録証明書" in text_of(seal.pdf) and name_of(world, code) in text_of(seal.pdf)
    tax = world.centre.request_document(world.kiosk, sid, "tax_certificate", fiscal_year=2025)
    assert "令和7年度" in text_of(tax.pdf) and "205,000円" in text_of(tax.pdf) and tax.fee == 300
    refused(
        world, "type", world.centre.request_document, world.kiosk, sid, "tax_certificate", fiscal_year=1900
    )


def test_a_restricted_household_member_stops_the_household_copy(world: World) -> None:
    with world.session_maker() as s:
        holder, other = next(
            (code, member.resident_code)
            for code in world.cards
            for member in s.scalars(
                select(Resident).where(
                    Resident.household_id
                    == select(Resident.household_id).where(Resident.resident_code == code).scalar_subquery(),
                    Resident.resident_code != code,
                    Resident.status == "active",
                )
            )
        )
        town = world.municipality[holder]
    today = date.today()
    with world.session_maker.begin() as s:
        register.set_restriction(
            s,
            RegisterActor(username="clerk", municipality_code=town),
            SetRestriction(
                resident_code=other, reason="DV", starts_on=today, ends_on=today + timedelta(days=365)
            ),
        )
    sid = sign_in(world, holder)
    assert world.centre.request_document(world.kiosk, sid, "resident_copy").pdf  # the holder's own copy
    refused(
        world,
        "dv_restricted",
        world.centre.request_document,
        world.kiosk,
        sid,
        "resident_copy",
        household=True,
    )
