"""The OCSP responder (RFC 6960; SPEC K5): statuses, nonce, GET/POST, pre-signed responses kept
fresh by the status-change handler, the CA key missing, bad requests, rate limits, pkilint."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp as x509_ocsp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient

from kiban.core.database import make_engine, session_factory
from kiban.core.dispatch import build_registry
from kiban.core.events import drain
from kiban.jpki import ocsp, service
from kiban.jpki.keys import FileKeyStore
from kiban.jpki.models import OcspResponse, OcspSigner
from kiban.jpki.profiles import HolderInfo

BASE = "http://127.0.0.1:8000"
USER_KEY = ec.generate_private_key(ec.SECP256R1()).public_key()


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def holder(i: int) -> HolderInfo:
    return HolderInfo(
        resident_code=f"{20_000_000_000 + i:011d}",
        name="山田　花子",
        birth_date=date(1980, 1, 1 + i % 28),
        sex=2,
        address="岐阜県岐阜市今沢町１８番地",
        card_id=f"card-{i}",
    )


@dataclass
class World:
    factory: sessionmaker[Session]
    ks: FileKeyStore
    issuer: x509.Certificate  # jpki-auth
    root: x509.Certificate
    good: x509.Certificate
    revoked: x509.Certificate
    held: x509.Certificate
    revoked_at: datetime
    held_at: datetime


def _issue(session: Session, ks: FileKeyStore, i: int, now: datetime) -> x509.Certificate:
    issued = service.issue_user_auth_certificate(
        session, ks, public_key=USER_KEY, holder=holder(i), card_expiry=date(2040, 1, 1), now=now
    )
    return issued.certificate


def make_world(factory: sessionmaker[Session], keys: Path) -> World:
    ks = FileKeyStore(keys)
    now = now_utc() - timedelta(minutes=10)
    with factory.begin() as session:
        service.init_hierarchies(session, ks, BASE, now=now - timedelta(days=1))
        good = _issue(session, ks, 1, now)
        revoked = _issue(session, ks, 2, now)
        held = _issue(session, ks, 3, now)
        revoked_at = now + timedelta(minutes=1)
        held_at = now + timedelta(minutes=2)
        service.revoke(session, revoked.serial_number, reason="keyCompromise", now=revoked_at)
        service.hold(session, held.serial_number, now=held_at)
        stats = ocsp.refresh_responses(session, ks, now + timedelta(minutes=3))
        assert stats.failed == 0 and stats.signed >= 3
        issuer = service.ca_certificate(service.get_ca(session, "jpki-auth"))
        root = service.ca_certificate(service.get_ca(session, "jpki-root"))
    return World(factory, ks, issuer, root, good, revoked, held, revoked_at, held_at)


@pytest.fixture
def world(session_maker: sessionmaker[Session], tmp_path: Path) -> World:
    return make_world(session_maker, tmp_path / "keys")


@pytest.fixture
def responder(world: World) -> Iterator[ocsp.OcspResponder]:
    r = ocsp.OcspResponder(world.factory, world.ks, anonymous_rate=1e9, identify=lambda s, t: None)
    yield r
    r.stop()


@pytest.fixture
def client(responder: ocsp.OcspResponder) -> TestClient:
    return TestClient(responder, base_url="http://testserver")


def request_der(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    algorithm: hashes.HashAlgorithm | None = None,
    nonce: bytes | None = None,
) -> bytes:
    builder = x509_ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm or hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def multi_request(cert_ids: list[bytes], extensions: bytes = b"") -> bytes:
    t = ocsp._tlv
    requests = t(0x30, b"".join(t(0x30, c) for c in cert_ids))
    return t(0x30, t(0x30, requests + extensions))


def cert_id_for(serial: int, issuer: x509.Certificate, hash_name: str = "sha1") -> bytes:
    name = issuer.subject.public_bytes()
    key = ocsp._spki_key_bits(issuer.public_key())
    h = hashlib.new(hash_name)
    h2 = hashlib.new(hash_name)
    h.update(name)
    h2.update(key)
    return ocsp.cert_id_der(hash_name, h.digest(), h2.digest(), serial)


def post(client: TestClient, body: bytes, **headers: str) -> x509_ocsp.OCSPResponse:
    answer = client.post("/ocsp", content=body, headers={"content-type": ocsp.MEDIA_REQUEST, **headers})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == ocsp.MEDIA_RESPONSE
    return x509_ocsp.load_der_ocsp_response(answer.content)


def check_signed(resp: x509_ocsp.OCSPResponse, world: World) -> x509.Certificate:
    """The response is signed by a delegated signer certified by the issuing CA."""
    assert resp.response_status == x509_ocsp.OCSPResponseStatus.SUCCESSFUL
    (signer,) = resp.certificates
    signer.verify_directly_issued_by(world.issuer)
    eku = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.OCSP_SIGNING in eku
    key = signer.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))
    assert resp.responder_key_hash == hashlib.sha1(ocsp._spki_key_bits(key)).digest()
    return signer


# --- statuses --------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", [hashes.SHA1(), hashes.SHA256()], ids=["sha1", "sha256"])
def test_good_revoked_hold_unknown(world: World, client: TestClient, algorithm: hashes.HashAlgorithm) -> None:
    resp = post(client, request_der(world.good, world.issuer, algorithm))
    check_signed(resp, world)
    assert resp.certificate_status == x509_ocsp.OCSPCertStatus.GOOD
    assert resp.serial_number == world.good.serial_number
    assert resp.hash_algorithm.name == algorithm.name
    assert resp.next_update_utc is not None and resp.next_update_utc > now_utc() + timedelta(hours=12)

    resp = post(client, request_der(world.revoked, world.issuer, algorithm))
    check_signed(resp, world)
    assert resp.certificate_status == x509_ocsp.OCSPCertStatus.REVOKED
    assert resp.revocation_reason == x509.ReasonFlags.key_compromise
    assert resp.revocation_time_utc == world.revoked_at

    resp = post(client, request_der(world.held, world.issuer, algorithm))
    check_signed(resp, world)
    assert resp.certificate_status == x509_ocsp.OCSPCertStatus.REVOKED
    assert resp.revocation_reason == x509.ReasonFlags.certificate_hold
    assert resp.revocation_time_utc == world.held_at

    # a serial this CA never issued: "unknown", signed on demand by the same delegated signer
    body = multi_request([cert_id_for(12345, world.issuer, algorithm.name)])
    resp = post(client, body)
    check_signed(resp, world)
    assert resp.certificate_status == x509_ocsp.OCSPCertStatus.UNKNOWN
    assert resp.serial_number == 12345


def test_get_matches_post_and_is_cacheable(world: World, client: TestClient) -> None:
    der = request_der(world.revoked, world.issuer)
    posted = client.post("/ocsp", content=der)
    for encoded in (quote(base64.b64encode(der).decode(), safe=""), base64.urlsafe_b64encode(der).decode()):
        got = client.get(f"/ocsp/{encoded}")
        assert got.status_code == 200
        assert got.content == posted.content  # the same pre-signed bytes
        assert "max-age=" in got.headers["cache-control"] and "public" in got.headers["cache-control"]
    assert posted.headers["cache-control"] == "no-store"


def test_nonce_is_echoed_in_a_fresh_response(world: World, client: TestClient) -> None:
    nonce = bytes(range(16))
    resp = post(client, request_der(world.good, world.issuer, nonce=nonce))
    check_signed(resp, world)
    assert resp.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    assert resp.certificate_status == x509_ocsp.OCSPCertStatus.GOOD
    # without a nonce: the pre-signed response, which carries none
    plain = post(client, request_der(world.good, world.issuer))
    with pytest.raises(x509.ExtensionNotFound):
        plain.extensions.get_extension_for_class(x509.OCSPNonce)
    # RFC 8954: 1–32 octets
    too_long = post(client, request_der(world.good, world.issuer, nonce=b"x" * 33))
    assert too_long.response_status == x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_several_serials_in_one_request(world: World, client: TestClient) -> None:
    serials = [world.good.serial_number, world.revoked.serial_number, world.held.serial_number, 777]
    resp = post(client, multi_request([cert_id_for(s, world.issuer) for s in serials]))
    check_signed(resp, world)
    got = {r.serial_number: r.certificate_status for r in resp.responses}
    assert got == {
        serials[0]: x509_ocsp.OCSPCertStatus.GOOD,
        serials[1]: x509_ocsp.OCSPCertStatus.REVOKED,
        serials[2]: x509_ocsp.OCSPCertStatus.REVOKED,
        777: x509_ocsp.OCSPCertStatus.UNKNOWN,
    }
    eleven = multi_request([cert_id_for(s, world.issuer) for s in range(1, ocsp.MAX_CERT_IDS + 2)])
    assert post(client, eleven).response_status == x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST


# --- pre-signed responses, the handler, the keys ----------------------------------------------------


def stored(world: World, cert: x509.Certificate) -> OcspResponse:
    with world.factory() as session:
        row = session.scalar(select(OcspResponse).where(OcspResponse.serial == f"{cert.serial_number:040x}"))
        assert row is not None
        return row


def test_status_change_refreshes_the_stored_response_through_the_handler(
    world: World, client: TestClient
) -> None:
    assert (
        post(client, request_der(world.good, world.issuer)).certificate_status
        == x509_ocsp.OCSPCertStatus.GOOD
    )
    before = stored(world, world.good)
    ocsp.configure(world.ks)
    try:
        with world.factory.begin() as session:
            service.revoke(session, world.good.serial_number, reason="affiliationChanged", now=now_utc())
        # the event is in the outbox; the stored response changes only when it is delivered
        assert stored(world, world.good).status == "good"
        drain(world.factory, build_registry())
        after = stored(world, world.good)
        assert after.status == "revoked" and after.der_sha1 != before.der_sha1
        # the responder's cache was told (same process): the next answer is the new one
        resp = post(client, request_der(world.good, world.issuer))
        assert resp.certificate_status == x509_ocsp.OCSPCertStatus.REVOKED
        assert resp.revocation_reason == x509.ReasonFlags.affiliation_changed
        # idempotent: delivering the handler again signs the same status
        with world.factory.begin() as session:
            assert ocsp.on_status_changed(session, "jpki-auth", f"{world.good.serial_number:x}")
        assert stored(world, world.good).status == "revoked"
    finally:
        ocsp.configure(None)


def test_other_processes_caches_follow_by_polling(world: World, responder: ocsp.OcspResponder) -> None:
    client = TestClient(responder)
    assert (
        post(client, request_der(world.good, world.issuer)).certificate_status
        == x509_ocsp.OCSPCertStatus.GOOD
    )
    since = now_utc() - timedelta(seconds=1)
    # another process re-signs: this responder is not notified in-process
    ocsp._RESPONDERS.discard(responder)
    with world.factory.begin() as session:
        service.revoke(session, world.good.serial_number, reason="superseded", now=now_utc())
        ocsp.refresh_certificate(
            session, world.ks, "jpki-auth", f"{world.good.serial_number:040x}", now_utc()
        )
    assert (
        post(client, request_der(world.good, world.issuer)).certificate_status
        == x509_ocsp.OCSPCertStatus.GOOD
    )
    assert responder.poll_once(since) >= 1
    resp = post(client, request_der(world.good, world.issuer))
    assert resp.certificate_status == x509_ocsp.OCSPCertStatus.REVOKED


def test_answers_without_the_ca_key(world: World, client: TestClient) -> None:
    """SPEC K10 drill: the CA's key is unavailable — the responder keeps answering, and a status
    change is still signed (the delegated key suffices)."""
    for label in service.CA_DEFINITIONS:
        path = world.ks.directory / f"{label.id}.key.pem"
        path.unlink()
    world.ks._cache.clear()
    assert not world.ks.has_key("jpki-auth")
    resp = post(client, request_der(world.revoked, world.issuer))
    check_signed(resp, world)
    assert resp.certificate_status == x509_ocsp.OCSPCertStatus.REVOKED
    with world.factory.begin() as session:
        service.revoke(session, world.good.serial_number, reason="cessationOfOperation", now=now_utc())
        assert ocsp.refresh_certificate(
            session, world.ks, "jpki-auth", f"{world.good.serial_number:040x}", now_utc()
        )
        # the signer cannot be renewed, and saying so changes nothing
        (outcome,) = ocsp.ensure_signers(session, world.ks, now_utc(), force=True, ca_ids=["jpki-auth"])
        assert outcome.action == "failed" and "ca_key_available" in outcome.detail
    resp = post(client, request_der(world.good, world.issuer, nonce=b"n" * 16))
    check_signed(resp, world)
    assert resp.certificate_status == x509_ocsp.OCSPCertStatus.REVOKED


def test_without_the_delegated_key_presigned_answers_remain(world: World) -> None:
    responder = ocsp.OcspResponder(world.factory, None, anonymous_rate=1e9, identify=lambda s, t: None)
    client = TestClient(responder)
    # nonce requested, no key: the pre-signed response (no nonce), documented
    resp = post(client, request_der(world.good, world.issuer, nonce=b"n" * 16))
    check_signed(resp, world)
    with pytest.raises(x509.ExtensionNotFound):
        resp.extensions.get_extension_for_class(x509.OCSPNonce)
    # what needs a new signature waits
    unknown = post(client, multi_request([cert_id_for(4242, world.issuer)]))
    assert unknown.response_status == x509_ocsp.OCSPResponseStatus.TRY_LATER
    # a failed re-signing leaves a tombstone, never the old status
    with world.factory.begin() as session:
        service.revoke(session, world.good.serial_number, reason="keyCompromise", now=now_utc())
        assert not ocsp.refresh_certificate(
            session, None, "jpki-auth", f"{world.good.serial_number:040x}", now_utc()
        )
    assert stored(world, world.good).der_sha1 is None
    responder.clear()
    resp = post(client, request_der(world.good, world.issuer))
    assert resp.response_status == x509_ocsp.OCSPResponseStatus.TRY_LATER


def test_refresh_resigns_before_next_update_and_after_rotation(world: World) -> None:
    later = now_utc() + ocsp.RESPONSE_VALIDITY - ocsp.REFRESH_AHEAD + timedelta(minutes=5)
    with world.factory.begin() as session:
        nothing = ocsp.refresh_responses(session, world.ks, now_utc() + timedelta(minutes=5))
        assert nothing.signed == 0
        due = ocsp.refresh_responses(session, world.ks, later)
        assert due.signed == 3 and due.failed == 0
        old = ocsp.current_signer(session, "jpki-auth", later)
        assert old is not None
        (rotated,) = ocsp.ensure_signers(session, world.ks, later, force=True, ca_ids=["jpki-auth"])
        assert rotated.action == "rotated" and rotated.serial != old.serial
        again = ocsp.refresh_responses(session, world.ks, later, rotate=False)
        assert again.signed == 3
        signers = session.scalars(select(OcspSigner.serial).where(OcspSigner.ca_id == "jpki-auth")).all()
        assert len(signers) == 2
    row = stored(world, world.good)
    assert row.signer_serial == rotated.serial


def test_new_certificate_is_signed_on_first_request(world: World, client: TestClient) -> None:
    with world.factory.begin() as session:
        cert = _issue(session, world.ks, 9, now_utc())
    resp = post(client, request_der(cert, world.issuer))
    check_signed(resp, world)
    assert resp.certificate_status == x509_ocsp.OCSPCertStatus.GOOD
    assert stored(world, cert).status == "good"


# --- bad requests ----------------------------------------------------------------------------------


def status_of(answer: Any) -> x509_ocsp.OCSPResponseStatus:
    assert answer.status_code == 200
    return x509_ocsp.load_der_ocsp_response(answer.content).response_status


MALFORMED = x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST
UNAUTHORIZED = x509_ocsp.OCSPResponseStatus.UNAUTHORIZED


def test_bad_requests_get_rfc6960_errors(world: World, client: TestClient) -> None:
    good = request_der(world.good, world.issuer)
    cases = {
        b"": MALFORMED,
        b"garbage": MALFORMED,
        good[:-1]: MALFORMED,  # truncated
        good + b"\x00": MALFORMED,  # trailing bytes
        b"\x30\x84\xff\xff\xff\xff": MALFORMED,  # absurd length
        ocsp._tlv(0x30, ocsp._tlv(0x30, ocsp._tlv(0x30, b""))): MALFORMED,  # no CertID
        b"\x30" + bytes([0x82, 0x20, 0x01]) + b"\x00" * 0x2001: MALFORMED,  # oversized
        world.good.public_bytes(serialization.Encoding.DER): MALFORMED,  # a certificate, not a request
    }
    for body, expected in cases.items():
        assert status_of(client.post("/ocsp", content=body)) == expected, body[:20]
    # a critical extension we do not know
    critical = ocsp._tlv(
        0xA2,
        ocsp._tlv(
            0x30, ocsp._tlv(0x30, ocsp._tlv(0x06, b"\x2a\x03") + b"\x01\x01\xff" + ocsp._tlv(0x04, b""))
        ),
    )
    assert (
        status_of(client.post("/ocsp", content=multi_request([cert_id_for(5, world.issuer)], critical)))
        == MALFORMED
    )
    # unsupported CertID hash (SHA-384, MD5): we cannot match the issuer -> unauthorized
    resp = client.post("/ocsp", content=request_der(world.good, world.issuer, hashes.SHA384()))
    assert status_of(resp) == UNAUTHORIZED
    md5 = ocsp._tlv(
        0x30,
        bytes.fromhex("300c06082a864886f70d02050500")
        + ocsp._tlv(0x04, b"\x00" * 16)
        + ocsp._tlv(0x04, b"\x00" * 16)
        + ocsp._integer(5),
    )
    assert status_of(client.post("/ocsp", content=multi_request([md5]))) == UNAUTHORIZED
    # an issuer we do not serve: the root (its certificates are CAs) and a stranger
    assert status_of(client.post("/ocsp", content=request_der(world.issuer, world.root))) == UNAUTHORIZED
    stranger = ocsp.cert_id_der("sha1", b"\x01" * 20, b"\x02" * 20, world.good.serial_number)
    assert status_of(client.post("/ocsp", content=multi_request([stranger]))) == UNAUTHORIZED
    # issuers mixed in one request: one delegated signer cannot answer for both
    with world.factory() as session:
        sign_ca = service.ca_certificate(service.get_ca(session, "jpki-sign"))
    mixed = multi_request([cert_id_for(5, world.issuer), cert_id_for(5, sign_ca)])
    assert status_of(client.post("/ocsp", content=mixed)) == UNAUTHORIZED
    # GET: nothing, not base64, too long
    assert status_of(client.get("/ocsp")) == MALFORMED
    assert status_of(client.get("/ocsp/%%%%")) == MALFORMED
    assert status_of(client.get("/ocsp/" + "A" * 20_000)) == MALFORMED
    assert client.put("/ocsp", content=good).status_code == 405
    # a serial that is not DER (a leading zero octet before one < 0x80): echoing it would not be DER
    padded = ocsp._tlv(0x30, cert_id_for(5, world.issuer)[2:-3] + b"\x02\x02\x00\x05")
    assert status_of(client.post("/ocsp", content=multi_request([padded]))) == MALFORMED
    # nothing broke: a good request still works
    assert post(client, good).certificate_status == x509_ocsp.OCSPCertStatus.GOOD


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_random_bytes_never_crash(world: World, client: TestClient, data: bytes) -> None:
    answer = client.post("/ocsp", content=data)
    resp = x509_ocsp.load_der_ocsp_response(answer.content)
    assert resp.response_status in (MALFORMED, UNAUTHORIZED, x509_ocsp.OCSPResponseStatus.SUCCESSFUL)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(min_value=0, max_value=200), value=st.integers(min_value=0, max_value=255))
def test_mutated_requests_never_crash(world: World, client: TestClient, position: int, value: int) -> None:
    der = bytearray(request_der(world.good, world.issuer, nonce=b"m" * 16))
    der[position % len(der)] = value
    resp = x509_ocsp.load_der_ocsp_response(client.post("/ocsp", content=bytes(der)).content)
    assert resp.response_status != x509_ocsp.OCSPResponseStatus.INTERNAL_ERROR


# --- verifiers and rate limits ----------------------------------------------------------------------


def test_rate_limits_per_verifier(world: World) -> None:
    tokens = {"bank-token": SimpleNamespace(code="V0001", ocsp_rate_per_second=0.001)}
    seen: list[str] = []

    def identify(session: Session, token: str) -> Any:
        seen.append(token)
        return tokens.get(token)

    responder = ocsp.OcspResponder(world.factory, world.ks, anonymous_rate=0.001, identify=identify)
    client = TestClient(responder)
    body = request_der(world.good, world.issuer)
    burst = 5  # at least 5, or 2 s worth
    for _ in range(burst):
        assert post(client, body).response_status == x509_ocsp.OCSPResponseStatus.SUCCESSFUL
    limited = client.post("/ocsp", content=body)
    assert status_of(limited) == x509_ocsp.OCSPResponseStatus.TRY_LATER
    assert int(limited.headers["retry-after"]) >= 1
    # the verifier has its own bucket
    for _ in range(burst):
        ok = post(client, body, authorization="Bearer bank-token")
        assert ok.response_status == x509_ocsp.OCSPResponseStatus.SUCCESSFUL
    assert status_of(client.post("/ocsp", content=body, headers={"authorization": "Bearer bank-token"})) == (
        x509_ocsp.OCSPResponseStatus.TRY_LATER
    )
    assert seen == ["bank-token"]  # resolved once, then cached
    # an unknown token is refused, not treated as anonymous
    assert (
        status_of(client.post("/ocsp", content=body, headers={"authorization": "Bearer nope"}))
        == UNAUTHORIZED
    )
    counts = responder.counts
    assert counts[("V0001", "good")] == burst and counts[("V0001", "rate_limited")] == 1
    assert counts[("anonymous", "good")] == burst and counts[("anonymous", "unauthorized")] == 1
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(responder)
    text = generate_latest(registry).decode()
    assert 'kiban_ocsp_requests_total{outcome="rate_limited",verifier="V0001"} 1.0' in text


def test_production_requires_a_verifier(world: World) -> None:
    responder = ocsp.OcspResponder(world.factory, world.ks, allow_anonymous=False, identify=lambda s, t: None)
    client = TestClient(responder)
    assert status_of(client.post("/ocsp", content=request_der(world.good, world.issuer))) == UNAUTHORIZED


def test_default_identify_falls_back_when_the_module_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "kiban.jpki.verifiers", None)
    assert ocsp.default_identify() is None


# --- pkilint ---------------------------------------------------------------------------------------


def pkilint_findings(der: bytes) -> list[str]:
    from pkilint import loader, pkix, report
    from pkilint.pkix import extension, name
    from pkilint.pkix import ocsp as pk_ocsp
    from pkilint.validation import ValidationFindingSeverity

    container = pk_ocsp.create_pkix_ocsp_response_validator_container(
        [
            pk_ocsp.create_response_decoder(),
            pkix.create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
            pkix.create_extension_decoder(extension.EXTENSION_MAPPINGS),
        ],
        [],
    )
    doc = loader.RFC6960OCSPResponseDocumentLoader().load_der_document(der, "response")
    results = container.validate(doc.root)
    findings = [
        f"{r.node.path}: {f.finding.code} ({f.finding.severity})"
        for r in results
        for f in r.finding_descriptions
        if f.finding.severity >= ValidationFindingSeverity.WARNING
    ]
    assert report.get_findings_count(results, ValidationFindingSeverity.WARNING) == len(findings)
    return findings


def test_pkilint_finds_nothing(world: World, client: TestClient) -> None:
    bodies = [
        request_der(world.good, world.issuer),
        request_der(world.revoked, world.issuer, hashes.SHA256()),
        request_der(world.held, world.issuer),
        request_der(world.good, world.issuer, nonce=b"k" * 32),
        multi_request([cert_id_for(99, world.issuer)]),
        multi_request([cert_id_for(world.good.serial_number, world.issuer), cert_id_for(98, world.issuer)]),
    ]
    for body in bodies:
        der = client.post("/ocsp", content=body).content
        assert pkilint_findings(der) == []
    assert pkilint_findings(ocsp.error_response(ocsp.MALFORMED_REQUEST)) == []


# --- HTTP: the app's routes -------------------------------------------------------------------------


def test_app_serves_ocsp_crl_and_ca_certificates(
    world: World, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kiban.core.config import load_settings
    from kiban.jpki import crl
    from kiban.web.app import WebOptions, create_app

    monkeypatch.setenv("KIBAN_DATABASE_URL", db_url)
    settings = load_settings(tmp_path)  # keys in tmp_path/keys, as the world's
    with world.factory.begin() as session:
        published = crl.publish_crl(session, world.ks, "jpki-auth", now_utc())
    app = create_app(settings, options=WebOptions(deliver_events=False))
    client = TestClient(app)
    resp = post(client, request_der(world.revoked, world.issuer))
    assert resp.certificate_status == x509_ocsp.OCSPCertStatus.REVOKED
    got = client.get("/crl/jpki-auth.crl")
    assert got.status_code == 200 and got.headers["content-type"] == "application/pkix-crl"
    assert got.content == published[0].der
    assert "max-age" in got.headers["cache-control"]
    crl_obj = x509.load_der_x509_crl(got.content)
    assert crl_obj.get_revoked_certificate_by_serial_number(world.revoked.serial_number) is not None
    part = client.get("/crl/jpki-auth/1.crl")  # no partitions yet: the full CRL
    assert part.status_code == 200 and part.content == published[0].der
    assert client.get("/crl/jpki-sign.crl").status_code == 404  # none published
    assert client.get("/crl/nope.crl").status_code == 404
    cer = client.get("/ca/jpki-auth.cer")
    assert cer.status_code == 200 and cer.headers["content-type"] == "application/pkix-cert"
    assert x509.load_der_x509_certificate(cer.content) == world.issuer
    # the URLs are the ones in the certificates
    aia = world.good.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert {d.access_location.value for d in aia} == {f"{BASE}/ocsp", f"{BASE}/ca/jpki-auth.cer"}
    metrics = client.get("/metrics").text
    assert 'kiban_ocsp_requests_total{outcome="revoked",verifier="anonymous"} 1.0' in metrics


def test_rsa_responder_keys_work_too(world: World) -> None:
    """A token may hold only RSA keys: the response is the same shape with sha256WithRSA."""
    with world.factory.begin() as session:
        label = "ocsp-rsa-test"
        public = world.ks.generate(label, "rsa2048")
        assert isinstance(public, rsa.RSAPublicKey)
        issued = service.issue_ocsp_signer_certificate(
            session, world.ks, ca_id="jpki-auth", public_key=public, now=now_utc()
        )
        signer = ocsp.Signer.from_row(
            OcspSigner(
                ca_id="jpki-auth",
                serial=issued.serial,
                key_label=label,
                key_algorithm="rsa2048",
                certificate_der=issued.der,
                not_before=issued.not_before,
                not_after=issued.not_after,
                created_at=now_utc(),
            )
        )
    single = ocsp.single_response(
        cert_id_for(world.good.serial_number, world.issuer), ocsp.CertState("good"), now_utc(), now_utc()
    )
    der = signer.sign_response(world.ks, [single], now_utc(), b"\x04\x02ab")
    resp = x509_ocsp.load_der_ocsp_response(der)
    from cryptography.hazmat.primitives.asymmetric import padding

    public.verify(resp.signature, resp.tbs_response_bytes, padding.PKCS1v15(), hashes.SHA256())
    assert pkilint_findings(der) == []


# --- CLI -------------------------------------------------------------------------------------------


def test_cli_ocsp_signer_and_refresh(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from kiban.cli.ca import app

    monkeypatch.setenv("KIBAN_DATABASE_URL", db_url)
    runner = CliRunner()
    data = str(tmp_path / "d")
    assert runner.invoke(app, ["init", "--data", data, "--algorithm", "p256"]).exit_code == 0
    first = runner.invoke(app, ["ocsp-signer", "--data", data])
    assert first.exit_code == 0, first.output
    issuing = ["jpki-auth", "jpki-mobile-auth", "jpki-mobile-sign", "jpki-sign", "lgpki-org"]
    assert [line.split()[:2] for line in first.output.splitlines()] == [[c, "created"] for c in issuing]
    again = runner.invoke(app, ["ocsp-signer", "--data", data, "--ca", "jpki-auth"])
    assert again.exit_code == 0 and again.output.split()[:2] == ["jpki-auth", "kept"]
    rotated = runner.invoke(app, ["ocsp-signer", "--data", data, "--ca", "jpki-auth", "--rotate"])
    assert rotated.exit_code == 0 and rotated.output.split()[:2] == ["jpki-auth", "rotated"]
    factory = session_factory(make_engine(db_url))
    ks = FileKeyStore(tmp_path / "d" / "keys")
    with factory.begin() as session:
        _issue(session, ks, 1, now_utc())
    refreshed = runner.invoke(app, ["ocsp-refresh", "--data", data])
    assert refreshed.exit_code == 0, refreshed.output
    assert "signed 1 failed 0" in refreshed.output
    assert "signed 0 failed 0" in runner.invoke(app, ["ocsp-refresh", "--data", data]).output
    assert "signed 1 failed 0" in runner.invoke(app, ["ocsp-refresh", "--data", data, "--all"]).output
    # CA keys gone: no new signer (exit 1), but responses are still re-signed
    for path in (tmp_path / "d" / "keys").glob("*.key.pem"):
        if not path.name.startswith("ocsp-"):
            path.unlink()
    failed = runner.invoke(app, ["ocsp-signer", "--data", data, "--ca", "jpki-auth", "--rotate"])
    assert failed.exit_code == 1 and "ca_key_available" in failed.output
    still = runner.invoke(app, ["ocsp-refresh", "--data", data, "--all"])
    assert "signed 1 failed 0" in still.output


def test_registered_verifier_token_rate_and_usage(world: World) -> None:
    """With the verifier registry (kiban.jpki.verifiers): a token resolves to its verifier and
    rate; a verifier without the revocation service is refused; answers become usage counts."""
    verifiers = pytest.importorskip("kiban.jpki.verifiers.service")
    with world.factory.begin() as session:
        verifiers.create_verifier(
            session, code="bank-1", name="架空銀行", category="certified_business",
            services=["revocation"], actor="test", ocsp_rate_per_second=0.001,
        )  # fmt: skip
        verifiers.create_verifier(
            session, code="links-only", name="架空事業者", category="certified_business",
            services=["links"], actor="test",
        )  # fmt: skip
        token = verifiers.issue_token(session, "bank-1", actor="test").token
        other = verifiers.issue_token(session, "links-only", actor="test").token
    responder = ocsp.OcspResponder(world.factory, world.ks)  # default identify: the registry
    client = TestClient(responder)
    body = request_der(world.good, world.issuer)
    answers = [
        status_of(client.post("/ocsp", content=body, headers={"authorization": f"Bearer {token}"}))
        for _ in range(6)
    ]
    assert answers == [x509_ocsp.OCSPResponseStatus.SUCCESSFUL] * 5 + [x509_ocsp.OCSPResponseStatus.TRY_LATER]
    refused = client.post("/ocsp", content=body, headers={"authorization": f"Bearer {other}"})
    assert status_of(refused) == UNAUTHORIZED
    assert responder.flush_usage() == 5
    assert responder.flush_usage() == 0  # only what is new
    with world.factory() as session:
        rows = verifiers.usage(session, "bank-1")
    assert [(r.service, r.requests) for r in rows] == [("ocsp", 5)]
