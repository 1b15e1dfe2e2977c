"""The CA core on a database: issuance rules, revocation triggers, audit and events (SPEC K5, K8)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kiban.core.events import DomainEvent
from kiban.core.models.audit import AuditEntry
from kiban.core.models.events import OutboxEvent
from kiban.jpki import profiles, service
from kiban.jpki.keys import FileKeyStore
from kiban.jpki.models import Certificate, CertificateAuthority, IssuanceRecord
from kiban.jpki.profiles import HolderInfo, ProfileError
from kiban.jpki.service import CaError

NOW = datetime(2026, 4, 1, 3, 0, tzinfo=UTC)  # 12:00 JST
CARD_EXPIRY = date(2036, 1, 2)
KEY = ec.generate_private_key(ec.SECP256R1()).public_key()
BASE = "http://127.0.0.1:8000"


def holder(**changes: Any) -> HolderInfo:
    base = HolderInfo(
        resident_code="12345678901",
        name="山田　花子",
        birth_date=date(1990, 1, 2),
        sex=2,
        address="東京都千代田区永田町一丁目７番１号",
        card_id="card-1",
    )
    return replace(base, **changes)


@pytest.fixture
def ks(tmp_path: Path) -> FileKeyStore:
    return FileKeyStore(tmp_path / "keys")


@pytest.fixture
def ca_session(session: Session, ks: FileKeyStore) -> Session:
    service.init_hierarchies(session, ks, BASE, algorithm="p256", now=NOW - timedelta(days=1))
    session.commit()
    return session


def pair(
    session: Session,
    ks: FileKeyStore,
    h: HolderInfo | None = None,
    now: datetime = NOW,
    card_expiry: date = CARD_EXPIRY,
) -> tuple[service.IssuedCertificate, service.IssuedCertificate]:
    h = h or holder()
    auth = service.issue_user_auth_certificate(
        session, ks, public_key=KEY, holder=h, card_expiry=card_expiry, now=now
    )
    sign = service.issue_signature_certificate(
        session, ks, public_key=KEY, holder=h, card_expiry=card_expiry, now=now
    )
    return auth, sign


def status_events(session: Session) -> list[OutboxEvent]:
    return list(
        session.scalars(
            select(OutboxEvent).where(OutboxEvent.type == service.STATUS_EVENT).order_by(OutboxEvent.seq)
        )
    )


def cert_row(session: Session, serial: str) -> Certificate:
    return session.scalars(select(Certificate).where(Certificate.serial == serial)).one()


def event(type_: str, key: str, payload: dict[str, Any]) -> DomainEvent:
    return DomainEvent(
        id="e-" + key, type=type_, key=key, schema_version=1, occurred_at=NOW, payload=payload, source="test"
    )


# --- hierarchies -----------------------------------------------------------------------------------


def test_init_is_idempotent_and_builds_both_hierarchies(ca_session: Session, ks: FileKeyStore) -> None:
    first = {c.id: c.certificate_der for c in ca_session.scalars(select(CertificateAuthority))}
    assert set(first) == {d.id for d in service.CA_DEFINITIONS}
    service.init_hierarchies(ca_session, ks, BASE, algorithm="p256", now=NOW)
    again = {c.id: c.certificate_der for c in ca_session.scalars(select(CertificateAuthority))}
    assert again == first
    sign = x509.load_der_x509_certificate(first["jpki-sign"])
    root = x509.load_der_x509_certificate(first["jpki-root"])
    assert sign.issuer == root.subject
    sign.verify_directly_issued_by(root)
    org = x509.load_der_x509_certificate(first["lgpki-org"])
    org.verify_directly_issued_by(x509.load_der_x509_certificate(first["lgpki-root"]))


def test_init_refuses_a_stray_key(session: Session, ks: FileKeyStore) -> None:
    ks.generate("jpki-root", "p256")
    with pytest.raises(CaError) as error:
        service.init_hierarchies(session, ks, BASE, algorithm="p256", now=NOW)
    assert error.value.rule == "no_overwrite"
    assert session.scalar(select(func.count()).select_from(CertificateAuthority)) == 0


def test_file_keys_are_never_overwritten(ks: FileKeyStore) -> None:
    ks.generate("x", "p256")
    before = (ks.directory / "x.key.pem").read_bytes()
    with pytest.raises(ValueError, match="no_overwrite"):
        ks.generate("x", "p256")
    assert (ks.directory / "x.key.pem").read_bytes() == before
    assert (ks.directory / "x.key.pem").stat().st_mode & 0o777 == 0o600


# --- issuance rules ---------------------------------------------------------------------------------


def test_signature_certificate_profile(ca_session: Session, ks: FileKeyStore) -> None:
    auth, sign = pair(
        ca_session, ks, holder(name="髙橋　﨑子", name_kana="タカハシ　サキコ", former_name="山田")
    )
    cert = sign.certificate
    data = profiles.read_personal_data(cert)
    assert data["name"] == "〓橋　〓子" and data["name_flags"] == "10010"
    assert data["birth_date"] == "419900102" and data["sex"] == "2"
    assert data["address"].startswith("東京都千代田区") and set(data["address_flags"]) == {"0"}
    assert data["former_name"] == "山田" and data["name_kana"] == "タカハシ　サキコ"
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.content_commitment
    # subject is opaque: no personal data outside the SAN
    assert "山田" not in cert.subject.rfc4514_string() and "髙橋" not in cert.subject.rfc4514_string()
    auth_cert = auth.certificate
    assert profiles.read_personal_data(auth_cert) == {}
    auth_ku = auth_cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert auth_ku.digital_signature and not auth_ku.content_commitment
    for c in (cert, auth_cert):
        cdp = c.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        assert cdp[0].full_name[0].value.startswith(f"{BASE}/crl/")
        aia = {
            d.access_method.dotted_string: d.access_location.value
            for d in c.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        }
        assert aia["1.3.6.1.5.5.7.48.1"] == f"{BASE}/ocsp"
        assert aia["1.3.6.1.5.5.7.48.2"].endswith(".cer")
        assert c.serial_number >= 1 << 64


def test_rsa_and_p256_keys_accepted_others_refused(ca_session: Session, ks: FileKeyStore) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    issued = service.issue_user_auth_certificate(
        ca_session, ks, public_key=rsa_key, holder=holder(), card_expiry=CARD_EXPIRY, now=NOW
    )
    assert isinstance(issued.certificate.public_key(), rsa.RSAPublicKey)
    small = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(ProfileError) as error:
        service.issue_user_auth_certificate(
            ca_session,
            ks,
            public_key=small,
            holder=holder(),
            card_expiry=CARD_EXPIRY,
            now=NOW,
        )
    assert error.value.field == "public_key"


def test_signature_only_from_the_15th_birthday(ca_session: Session, ks: FileKeyStore) -> None:
    young = holder(birth_date=date(2011, 4, 2), resident_code="22222222222", card_id="card-y")
    service.issue_user_auth_certificate(
        ca_session, ks, public_key=KEY, holder=young, card_expiry=CARD_EXPIRY, now=NOW
    )  # any age
    before = ca_session.scalar(select(func.count()).select_from(Certificate))
    with pytest.raises(ProfileError) as error:  # 2026-04-01: still 14
        service.issue_signature_certificate(
            ca_session, ks, public_key=KEY, holder=young, card_expiry=CARD_EXPIRY, now=NOW
        )
    assert (error.value.field, error.value.rule) == ("holder.birth_date", "min_age_15")
    assert ca_session.scalar(select(func.count()).select_from(Certificate)) == before
    on_birthday = NOW + timedelta(days=1)  # 2026-04-02 JST: 15
    sign = service.issue_signature_certificate(
        ca_session, ks, public_key=KEY, holder=young, card_expiry=CARD_EXPIRY, now=on_birthday
    )
    assert sign.kind == "signature"


def test_adult_ward_refused_by_default(ca_session: Session, ks: FileKeyStore) -> None:
    ward = holder(adult_ward=True)
    service.issue_user_auth_certificate(
        ca_session, ks, public_key=KEY, holder=ward, card_expiry=CARD_EXPIRY, now=NOW
    )
    with pytest.raises(ProfileError) as error:
        service.issue_signature_certificate(
            ca_session, ks, public_key=KEY, holder=ward, card_expiry=CARD_EXPIRY, now=NOW
        )
    assert error.value.rule == "adult_ward"
    allowed = service.issue_signature_certificate(
        ca_session, ks, public_key=KEY, holder=ward, card_expiry=CARD_EXPIRY, now=NOW, allow_adult_ward=True
    )
    assert allowed.kind == "signature"


def test_signature_needs_the_user_auth_certificate_first(ca_session: Session, ks: FileKeyStore) -> None:
    with pytest.raises(CaError) as error:
        service.issue_signature_certificate(
            ca_session, ks, public_key=KEY, holder=holder(), card_expiry=CARD_EXPIRY, now=NOW
        )
    assert (error.value.field, error.value.rule) == ("holder.card_id", "user_auth_first")


def test_validity_rules(ca_session: Session, ks: FileKeyStore) -> None:
    auth, sign = pair(ca_session, ks)
    # born 01-02, issued 2026-04-01: 5th birthday after is 2031-01-02, end of day JST
    assert auth.not_after == datetime(2031, 1, 2, 14, 59, 59, tzinfo=UTC)
    assert sign.not_after <= auth.not_after
    assert auth.certificate.not_valid_after_utc == auth.not_after
    # the card expires first: both capped
    other = holder(resident_code="33333333333", card_id="card-2")
    auth2, sign2 = pair(ca_session, ks, other, card_expiry=date(2028, 6, 30))
    assert auth2.not_after == sign2.not_after == datetime(2028, 6, 30, 14, 59, 59, tzinfo=UTC)


def test_signature_never_outlives_user_auth(ca_session: Session, ks: FileKeyStore) -> None:
    h = holder()
    auth = service.issue_user_auth_certificate(
        ca_session, ks, public_key=KEY, holder=h, card_expiry=date(2029, 3, 31), now=NOW
    )
    # the signature request names a later card expiry, but the user-auth cert ends first
    sign = service.issue_signature_certificate(
        ca_session, ks, public_key=KEY, holder=h, card_expiry=CARD_EXPIRY, now=NOW
    )
    assert sign.not_after == auth.not_after


def test_leap_day_holder_expires_on_feb_28(ca_session: Session, ks: FileKeyStore) -> None:
    auth, _ = pair(ca_session, ks, holder(birth_date=date(2000, 2, 29)))
    assert auth.not_after == datetime(2031, 2, 28, 14, 59, 59, tzinfo=UTC)


def test_renewal_in_window_to_sixth_birthday_and_supersedes(ca_session: Session, ks: FileKeyStore) -> None:
    h = holder(birth_date=date(1990, 6, 15))
    auth, sign = pair(ca_session, ks, h, card_expiry=date(2040, 1, 1))
    assert auth.not_after.date() == date(2030, 6, 15)
    renew_at = datetime(2030, 4, 20, 3, tzinfo=UTC)  # within 3 months of 2030-06-15
    new_auth = service.issue_user_auth_certificate(
        ca_session,
        ks,
        public_key=KEY,
        holder=h,
        card_expiry=date(2040, 1, 1),
        now=renew_at,
        renewal_of=auth.serial,
    )
    assert new_auth.not_after.date() == date(2035, 6, 15)  # 6th birthday after 2030-04-20 (5th: 2034)
    old = cert_row(ca_session, auth.serial)
    assert (old.status, old.reason, old.replaced_by) == ("revoked", "superseded", new_auth.serial)
    assert service.replacement_of(ca_session, auth.serial) == new_auth.serial
    events = [e for e in status_events(ca_session) if e.key == auth.serial]
    assert events[-1].payload["reason"] == "superseded"
    assert events[-1].payload["replacement_serial"] == new_auth.serial
    record = ca_session.scalars(select(IssuanceRecord).where(IssuanceRecord.serial == new_auth.serial)).one()
    assert (record.action, record.renewal_of) == ("renew", auth.serial)
    # outside the window: only the 5th birthday
    early = datetime(2030, 1, 10, 3, tzinfo=UTC)
    new_sign = service.issue_signature_certificate(
        ca_session,
        ks,
        public_key=KEY,
        holder=h,
        card_expiry=date(2040, 1, 1),
        now=early,
        renewal_of=sign.serial,
    )
    assert new_sign.not_after.date() == date(2034, 6, 15)  # 5th birthday after 2030-01-10
    with pytest.raises(CaError) as error:  # a superseded certificate is not renewed twice
        service.issue_signature_certificate(
            ca_session,
            ks,
            public_key=KEY,
            holder=h,
            card_expiry=date(2040, 1, 1),
            now=early,
            renewal_of=sign.serial,
        )
    assert error.value.rule == "good"


def test_serials_unique_per_ca_even_when_the_generator_repeats(
    ca_session: Session, ks: FileKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth, _ = pair(ca_session, ks)
    values = iter([int(auth.serial, 16), int(auth.serial, 16), (1 << 100) + 7])
    monkeypatch.setattr(profiles, "new_serial", lambda: next(values))
    again = service.issue_user_auth_certificate(
        ca_session, ks, public_key=KEY, holder=holder(card_id="card-9"), card_expiry=CARD_EXPIRY, now=NOW
    )
    assert again.serial == profiles.serial_hex((1 << 100) + 7)
    serials = list(ca_session.scalars(select(Certificate.serial).where(Certificate.ca_id == "jpki-auth")))
    assert len(serials) == len(set(serials)) == 2


def test_issuance_is_audited_and_recorded(ca_session: Session, ks: FileKeyStore) -> None:
    _, sign = pair(ca_session, ks)
    entries = list(ca_session.scalars(select(AuditEntry).where(AuditEntry.action == "issue")))
    assert {e.detail["serial"] for e in entries} >= {sign.serial}
    assert all(e.subject == "12345678901" for e in entries)
    assert ca_session.scalar(select(func.count()).select_from(IssuanceRecord)) == 2


def test_organisation_and_tls_certificates(ca_session: Session, ks: FileKeyStore) -> None:
    org = service.issue_organisation_certificate(
        ca_session,
        ks,
        public_key=KEY,
        municipality_code="131016",
        organisation="千代田区",
        title="区長",
        now=NOW,
    )
    assert org.ca_id == "lgpki-org"
    assert org.certificate.extensions.get_extension_for_class(x509.KeyUsage).value.content_commitment
    tls = service.issue_tls_certificate(
        ca_session,
        ks,
        public_key=KEY,
        node_name="node-1",
        dns_names=["node1.kiban.test"],
        server=True,
        now=NOW,
    )
    eku = tls.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    with pytest.raises(CaError) as error:
        service.issue_organisation_certificate(
            ca_session,
            ks,
            public_key=KEY,
            municipality_code="131017",
            organisation="千代田区",
            title="区長",
            now=NOW,
        )
    assert error.value.field == "municipality_code"
    with pytest.raises(CaError) as error:
        service.issue_tls_certificate(
            ca_session, ks, public_key=KEY, node_name="n", dns_names=[], server=True, now=NOW
        )
    assert error.value.field == "dns_names"


# --- revocation triggers ------------------------------------------------------------------------------


def identity_event(old: dict[str, Any], new: dict[str, Any], reason: str) -> DomainEvent:
    return event(
        "network.identity_changed",
        "12345678901",
        {"old": old, "new": new, "reason": reason, "date": "2026-04-01"},
    )


BASIC = {
    "name": "山田　花子",
    "birth_date": "1990-01-02",
    "sex": 2,
    "address": "東京都千代田区永田町一丁目７番１号",
}


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("address", "東京都港区芝公園四丁目２番８号", "relocation"),
        ("name", "佐藤　花子", "name_change"),
        ("birth_date", "1990-01-03", "ex_officio_correction"),
        ("sex", 1, "ex_officio_correction"),
    ],
)
def test_identity_change_revokes_signature_only(
    ca_session: Session, ks: FileKeyStore, field: str, value: Any, reason: str
) -> None:
    auth, sign = pair(ca_session, ks)
    mobile_auth = service.issue_mobile_user_auth_certificate(
        ca_session, ks, public_key=KEY, holder=holder(), card_expiry=CARD_EXPIRY, now=NOW
    )
    mobile_sign = service.issue_mobile_signature_certificate(
        ca_session, ks, public_key=KEY, holder=holder(), card_expiry=CARD_EXPIRY, now=NOW
    )
    revoked = service.handle_identity_changed(
        ca_session, identity_event(BASIC, {**BASIC, field: value}, reason), now=NOW + timedelta(seconds=5)
    )
    assert sorted(revoked) == sorted([sign.serial, mobile_sign.serial])
    for serial in revoked:
        row = cert_row(ca_session, serial)
        assert (row.status, row.reason) == ("revoked", "affiliationChanged")
        assert row.invalidity_date == datetime(2026, 3, 31, 15, tzinfo=UTC)  # 2026-04-01 00:00 JST
    assert cert_row(ca_session, auth.serial).status == "good"
    assert cert_row(ca_session, mobile_auth.serial).status == "good"
    payloads = {e.key: e.payload for e in status_events(ca_session)}
    assert payloads[sign.serial]["status"] == "revoked"
    assert payloads[sign.serial]["reason"] == "affiliationChanged"


def test_identity_event_in_the_register_format(ca_session: Session, ks: FileKeyStore) -> None:
    _, sign = pair(ca_session, ks)
    old = {
        "family_name": "山田",
        "given_name": "花子",
        "birth_date": "1990-01-02",
        "sex": 2,
        "address_text": "東京都千代田区永田町一丁目７番１号",
    }
    new = {**old, "address_text": "東京都港区芝公園四丁目２番８号"}
    assert service.handle_identity_changed(ca_session, identity_event(old, new, "relocation"), now=NOW) == [
        sign.serial
    ]


def test_household_change_revokes_nothing(ca_session: Session, ks: FileKeyStore) -> None:
    pair(ca_session, ks)
    assert (
        service.handle_identity_changed(ca_session, identity_event(BASIC, BASIC, "head_change"), now=NOW)
        == []
    )
    assert status_events(ca_session) == []


def test_death_revokes_everything(ca_session: Session, ks: FileKeyStore) -> None:
    auth, sign = pair(ca_session, ks)
    revoked = service.handle_identity_changed(ca_session, identity_event(BASIC, BASIC, "death"), now=NOW)
    assert sorted(revoked) == sorted([auth.serial, sign.serial])
    assert {cert_row(ca_session, s).reason for s in revoked} == {"cessationOfOperation"}


def test_card_suspension_holds_both_and_hold_is_never_released(ca_session: Session, ks: FileKeyStore) -> None:
    auth, sign = pair(ca_session, ks)
    held = service.handle_card_state_changed(
        ca_session, event("cards.state_changed", "card-1", {"state": "suspended"}), now=NOW
    )
    assert sorted(held) == sorted([auth.serial, sign.serial])
    assert {(cert_row(ca_session, s).status, cert_row(ca_session, s).reason) for s in held} == {
        ("hold", "certificateHold")
    }
    with pytest.raises(CaError) as error:
        service.release_hold(ca_session, auth.serial, now=NOW, actor="holder")
    assert error.value.rule == "hold_never_released"
    # found again: the held card certificates are revoked, not released
    revoked = service.handle_card_state_changed(
        ca_session, event("cards.state_changed", "card-1", {"state": "resumed"}), now=NOW
    )
    assert sorted(revoked) == sorted(held)
    assert {cert_row(ca_session, s).status for s in revoked} == {"revoked"}


def test_card_end_revokes_both(ca_session: Session, ks: FileKeyStore) -> None:
    auth, sign = pair(ca_session, ks)
    revoked = service.handle_card_state_changed(
        ca_session,
        event("cards.state_changed", "card-1", {"state": "revoked", "reason": "key_compromise"}),
        now=NOW,
    )
    assert sorted(revoked) == sorted([auth.serial, sign.serial])
    assert {cert_row(ca_session, s).reason for s in revoked} == {"keyCompromise"}


def test_smartphone_user_auth_hold_may_be_lifted(ca_session: Session, ks: FileKeyStore) -> None:
    mobile = service.issue_mobile_user_auth_certificate(
        ca_session, ks, public_key=KEY, holder=holder(), card_expiry=CARD_EXPIRY, now=NOW
    )
    service.hold(ca_session, mobile.serial, now=NOW, actor="call-centre")
    service.release_hold(ca_session, mobile.serial, now=NOW + timedelta(hours=1), actor="holder")
    row = cert_row(ca_session, mobile.serial)
    assert (row.status, row.reason) == ("good", None)
    assert [e.payload["status"] for e in status_events(ca_session)] == ["hold", "good"]


@pytest.mark.parametrize(
    ("compromised", "reason"), [(True, "keyCompromise"), (False, "cessationOfOperation")]
)
def test_holder_request_revokes(
    ca_session: Session, ks: FileKeyStore, compromised: bool, reason: str
) -> None:
    auth, _ = pair(ca_session, ks)
    service.revoke_on_request(ca_session, auth.serial, key_compromise=compromised, now=NOW, actor="holder")
    assert cert_row(ca_session, auth.serial).reason == reason
    audit_actions = list(ca_session.scalars(select(AuditEntry.action).where(AuditEntry.action == "revoke")))
    assert audit_actions == ["revoke"]


def test_bad_revocations_change_nothing(ca_session: Session, ks: FileKeyStore) -> None:
    auth, _ = pair(ca_session, ks)
    with pytest.raises(CaError) as error:
        service.revoke(ca_session, auth.serial, reason="certificateHold", now=NOW)
    assert error.value.field == "reason"
    with pytest.raises(CaError) as error:
        service.revoke(ca_session, "zz", reason="keyCompromise", now=NOW)
    assert (error.value.field, error.value.rule) == ("serial", "hex")
    with pytest.raises(CaError) as error:
        service.revoke(ca_session, "0" * 39 + "1", reason="keyCompromise", now=NOW)
    assert error.value.rule == "known_certificate"
    assert cert_row(ca_session, auth.serial).status == "good"
    assert status_events(ca_session) == []
    service.revoke(ca_session, auth.serial.upper(), reason="keyCompromise", now=NOW)
    with pytest.raises(CaError) as error:
        service.revoke(ca_session, auth.serial, reason="keyCompromise", now=NOW)
    assert error.value.rule == "not_revoked"


def test_register_handlers_subscribes_both() -> None:
    from kiban.core.dispatch import build_registry
    from kiban.core.events import Registry
    from kiban.jpki import handlers

    registry = Registry()
    handlers.register_handlers(registry)
    assert registry.event_types == [
        "cards.state_changed",
        "jpki.certificate_status_changed",
        "network.identity_changed",
    ]
    # discovered by every process that delivers events
    assert "network.identity_changed" in build_registry().event_types


def test_ocsp_signer_certificate(ca_session: Session, ks: FileKeyStore) -> None:
    signer = service.issue_ocsp_signer_certificate(ca_session, ks, ca_id="jpki-auth", public_key=KEY, now=NOW)
    cert = signer.certificate
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.OCSP_SIGNING]
    assert cert.extensions.get_extension_for_class(x509.OCSPNoCheck)
    assert signer.not_after == NOW + timedelta(days=service.OCSP_SIGNER_DAYS)
    cert.verify_directly_issued_by(service.ca_certificate(service.get_ca(ca_session, "jpki-auth")))
    assert cert_row(ca_session, signer.serial).kind == "ocsp_signer"
    with pytest.raises(CaError) as error:
        service.issue_ocsp_signer_certificate(ca_session, ks, ca_id="jpki-root", public_key=KEY, now=NOW)
    assert error.value.rule == "issuing_ca"


def test_resident_code_change_moves_records_without_revoking(ca_session: Session, ks: FileKeyStore) -> None:
    auth, sign = pair(ca_session, ks)
    payload = {
        "old": BASIC,
        "new": BASIC,
        "reason": "resident_code_change",
        "previous_resident_code": "12345678901",
    }
    moved = event("network.identity_changed", "98765432109", payload)
    assert service.handle_identity_changed(ca_session, moved, now=NOW) == []
    assert {cert_row(ca_session, s).resident_code for s in (auth.serial, sign.serial)} == {"98765432109"}
    assert {cert_row(ca_session, s).status for s in (auth.serial, sign.serial)} == {"good"}
    # a later death under the new code reaches the certificates
    death = event("network.identity_changed", "98765432109", {"old": BASIC, "new": BASIC, "reason": "death"})
    assert sorted(service.handle_identity_changed(ca_session, death, now=NOW)) == sorted(
        [auth.serial, sign.serial]
    )
