"""CRLs and interoperability: our certificates and CRLs through openssl and pkilint (SPEC K5, §7)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from kiban.core.models.audit import AuditEntry
from kiban.core.models.events import OutboxEvent
from kiban.jpki import crl, service
from kiban.jpki.keys import FileKeyStore
from kiban.jpki.models import Certificate, CrlPublication
from kiban.jpki.profiles import HolderInfo

BASE = "http://127.0.0.1:8000"
EC_KEY = ec.generate_private_key(ec.SECP256R1()).public_key()
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
HOLDER = HolderInfo(
    resident_code="12345678901",
    name="髙橋　﨑子",
    birth_date=date(1990, 1, 2),
    sex=2,
    address="東京都千代田区永田町一丁目７番１号",
    card_id="card-1",
    name_kana="タカハシ　サキコ",
)
BIN = Path(__file__).resolve().parents[1] / ".venv" / "bin"


def now_utc() -> datetime:
    # Real time: openssl checks the CRL's nextUpdate against the clock.
    return datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)


@pytest.fixture
def ks(tmp_path: Path) -> FileKeyStore:
    return FileKeyStore(tmp_path / "keys")


def init(
    session: Session,
    ks: FileKeyStore,
    *,
    algorithm: str = "rsa2048",
    partition_size: int = service.DEFAULT_PARTITION_SIZE,
    partition_threshold: int = service.DEFAULT_PARTITION_THRESHOLD,
) -> None:
    service.init_hierarchies(
        session,
        ks,
        BASE,
        now=now_utc() - timedelta(days=1),
        algorithm=algorithm,
        partition_size=partition_size,
        partition_threshold=partition_threshold,
    )


def issue_pair(
    session: Session,
    ks: FileKeyStore,
    h: HolderInfo,
    now: datetime,
) -> tuple[service.IssuedCertificate, service.IssuedCertificate]:
    auth = service.issue_user_auth_certificate(
        session, ks, public_key=RSA_KEY, holder=h, card_expiry=date(2040, 1, 1), now=now
    )
    sign = service.issue_signature_certificate(
        session, ks, public_key=RSA_KEY, holder=h, card_expiry=date(2040, 1, 1), now=now
    )
    return auth, sign


def reasons_of(der: bytes) -> dict[int, str]:
    out = {}
    for revoked in x509.load_der_x509_crl(der):
        out[revoked.serial_number] = revoked.extensions.get_extension_for_class(
            x509.CRLReason
        ).value.reason.value
    return out


# --- content and numbering -----------------------------------------------------------------------------


def test_full_crl_lists_revoked_and_held_with_reasons(session: Session, ks: FileKeyStore) -> None:
    init(session, ks, algorithm="p256")
    now = now_utc()
    auth, sign = issue_pair(session, ks, HOLDER, now)
    service.revoke(
        session, sign.serial, reason="affiliationChanged", now=now, invalidity_date=now - timedelta(days=1)
    )
    service.hold(session, auth.serial, now=now)
    first = crl.publish_crl(session, ks, "jpki-sign", now)
    second = crl.publish_crl(session, ks, "jpki-sign", now + timedelta(hours=1))
    assert [p.crl_number for p in first + second] == [1, 2]  # monotonic
    parsed = x509.load_der_x509_crl(second[0].der)
    assert parsed.next_update_utc is not None
    assert parsed.next_update_utc - parsed.last_update_utc == timedelta(days=1)
    assert reasons_of(second[0].der) == {int(sign.serial, 16): "affiliationChanged"}
    entry = next(iter(parsed))
    assert entry.extensions.get_extension_for_class(x509.InvalidityDate).value.invalidity_date_utc == (
        now - timedelta(days=1)
    )
    auth_crl = crl.publish_crl(session, ks, "jpki-auth", now)[0]
    assert reasons_of(auth_crl.der) == {int(auth.serial, 16): "certificateHold"}
    assert first[0].check is not None and first[0].check.ok
    published = session.scalars(select(AuditEntry).where(AuditEntry.action == "publish")).all()
    assert [(e.detail["ca"], e.detail["crl_number"], e.detail["complete"]) for e in published] == [
        ("jpki-sign", 1, True),
        ("jpki-sign", 2, True),
        ("jpki-auth", 1, True),
    ]
    assert crl.latest_crl(session, "jpki-sign") is not None
    latest = crl.latest_crl(session, "jpki-sign")
    assert latest is not None and latest.crl_number == 2


def test_released_hold_leaves_and_expired_entries_age_out(session: Session, ks: FileKeyStore) -> None:
    init(session, ks, algorithm="p256")
    now = now_utc()
    mobile = service.issue_mobile_user_auth_certificate(
        session, ks, public_key=EC_KEY, holder=HOLDER, card_expiry=date(2040, 1, 1), now=now
    )
    other = service.issue_mobile_user_auth_certificate(
        session,
        ks,
        public_key=EC_KEY,
        holder=replace(HOLDER, card_id="card-2"),
        card_expiry=date(2040, 1, 1),
        now=now,
    )
    service.hold(session, mobile.serial, now=now)
    service.revoke(session, other.serial, reason="keyCompromise", now=now)
    assert len(reasons_of(crl.publish_crl(session, ks, "jpki-mobile-auth", now)[0].der)) == 2
    service.release_hold(session, mobile.serial, now=now + timedelta(minutes=1), actor="holder")
    later = now + timedelta(minutes=2)
    assert reasons_of(crl.publish_crl(session, ks, "jpki-mobile-auth", later)[0].der) == {
        int(other.serial, 16): "keyCompromise"
    }
    # after expiry plus the retention period the entry leaves the CRL
    session.execute(
        update(Certificate)
        .where(Certificate.serial == other.serial)
        .values(not_after=later - crl.RETENTION - timedelta(seconds=1))
    )
    assert reasons_of(crl.publish_crl(session, ks, "jpki-mobile-auth", later)[0].der) == {}


def test_partitions_by_issuance_batch(session: Session, ks: FileKeyStore) -> None:
    init(session, ks, algorithm="p256", partition_size=2, partition_threshold=1)
    now = now_utc()
    issued = [
        service.issue_user_auth_certificate(
            session,
            ks,
            public_key=EC_KEY,
            holder=replace(HOLDER, card_id=f"card-{i}"),
            card_expiry=date(2040, 1, 1),
            now=now,
        )
        for i in range(5)
    ]
    assert [c.partition for c in issued] == [1, 1, 2, 2, 3]
    cdp = issued[2].certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert cdp[0].full_name[0].value == f"{BASE}/crl/jpki-auth/2.crl"
    service.revoke(session, issued[2].serial, reason="keyCompromise", now=now)
    only_full = crl.publish_crl(session, ks, "jpki-auth", now)
    assert [p.partition for p in only_full] == [0]  # 1 revoked: not past the threshold yet
    service.revoke(session, issued[4].serial, reason="cessationOfOperation", now=now)
    published = crl.publish_crl(session, ks, "jpki-auth", now)
    assert [p.partition for p in published] == [0, 1, 2, 3]
    assert len({p.crl_number for p in published}) == 4
    by_partition = {p.partition: p for p in published}
    assert set(reasons_of(by_partition[0].der)) == {int(issued[2].serial, 16), int(issued[4].serial, 16)}
    assert set(reasons_of(by_partition[1].der)) == set()
    assert set(reasons_of(by_partition[2].der)) == {int(issued[2].serial, 16)}
    assert set(reasons_of(by_partition[3].der)) == {int(issued[4].serial, 16)}
    idp = x509.load_der_x509_crl(by_partition[2].der).extensions.get_extension_for_class(
        x509.IssuingDistributionPoint
    )
    assert idp.critical and idp.value.full_name[0].value == f"{BASE}/crl/jpki-auth/2.crl"  # type: ignore[index]
    assert all(p.check is not None and p.check.ok for p in published)
    # a partition URL without its own CRL falls back to the full CRL
    fallback = crl.latest_crl(session, "jpki-auth", 9)
    assert fallback is not None and fallback.partition == 0


def test_incomplete_crl_is_detected_and_alerted(session: Session, ks: FileKeyStore) -> None:
    init(session, ks, algorithm="p256")
    now = now_utc()
    auth, sign = issue_pair(session, ks, HOLDER, now)
    service.revoke(session, sign.serial, reason="affiliationChanged", now=now)
    ca = service.get_ca(session, "jpki-sign")
    ca_cert = service.ca_certificate(ca)
    # a CRL signed by the right key that forgets the revoked certificate
    empty = ks.sign_crl(ca.key_label, crl._builder(ca_cert, 99, now, now + timedelta(days=1), [], None))
    result = crl.check_crl_complete(session, empty.public_bytes(Encoding.DER))
    assert not result.ok and result.signature_valid
    assert result.missing == [sign.serial] and result.expected == 1 and result.listed == 0
    alerts = list(session.scalars(select(OutboxEvent).where(OutboxEvent.type == crl.ALERT_EVENT)))
    assert len(alerts) == 1 and alerts[0].payload["missing"] == [sign.serial]
    # the wrong reason, and a good certificate listed, are also caught
    entries = crl.revoked_entries(
        [
            (sign.serial, "keyCompromise", now.replace(tzinfo=None), None, 1),
        ]
    )
    wrong = ks.sign_crl(
        ca.key_label, crl._builder(ca_cert, 100, now, now + timedelta(days=1), [e for _, e in entries], None)
    )
    assert crl.check_crl_complete(session, wrong.public_bytes(Encoding.DER)).wrong_reason == [sign.serial]
    # signed by another CA's key: the signature check fails
    forged = ks.sign_crl("jpki-auth", crl._builder(ca_cert, 101, now, now + timedelta(days=1), [], None))
    forged_result = crl.check_crl_complete(session, forged.public_bytes(Encoding.DER))
    assert not forged_result.signature_valid and not forged_result.ok
    assert crl.check_crl_complete(session, b"garbage").problem is not None


def test_bad_scope_refused(session: Session, ks: FileKeyStore) -> None:
    init(session, ks, algorithm="p256")
    with pytest.raises(service.CaError) as error:
        crl.publish_crl(session, ks, "jpki-sign", now_utc(), scope="half")
    assert error.value.field == "scope"
    assert session.scalars(select(CrlPublication)).all() == []


# --- real tools ------------------------------------------------------------------------------------


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60)


@pytest.fixture
def pki(session: Session, ks: FileKeyStore, tmp_path: Path) -> dict[str, object]:
    """Every profile issued under RSA CAs, a few revoked, CRLs published, all written as PEM files."""
    init(session, ks)
    now = now_utc()
    auth, sign = issue_pair(session, ks, HOLDER, now)
    other = replace(HOLDER, resident_code="22222222222", card_id="card-2", name="佐藤　一郎", sex=1)
    auth2, sign2 = issue_pair(session, ks, other, now)
    m_auth = service.issue_mobile_user_auth_certificate(
        session, ks, public_key=EC_KEY, holder=HOLDER, card_expiry=date(2040, 1, 1), now=now
    )
    m_sign = service.issue_mobile_signature_certificate(
        session, ks, public_key=EC_KEY, holder=HOLDER, card_expiry=date(2040, 1, 1), now=now
    )
    org = service.issue_organisation_certificate(
        session,
        ks,
        public_key=RSA_KEY,
        municipality_code="131016",
        organisation="千代田区",
        title="区長",
        now=now,
    )
    tls = service.issue_tls_certificate(
        session,
        ks,
        public_key=EC_KEY,
        node_name="node-1",
        dns_names=["node1.kiban.test"],
        server=True,
        now=now,
    )
    renewed = service.issue_user_auth_certificate(
        session,
        ks,
        public_key=RSA_KEY,
        holder=other,
        card_expiry=date(2040, 1, 1),
        now=now,
        renewal_of=auth2.serial,
    )
    ocsp = service.issue_ocsp_signer_certificate(session, ks, ca_id="jpki-sign", public_key=EC_KEY, now=now)
    service.revoke(session, sign.serial, reason="affiliationChanged", now=now)
    service.hold(session, auth.serial, now=now)
    service.revoke_on_request(session, sign2.serial, key_compromise=True, now=now, actor="holder")
    files: dict[str, Path] = {}
    for ca in service.CA_DEFINITIONS:
        path = tmp_path / f"{ca.id}.pem"
        path.write_bytes(service.ca_certificate(service.get_ca(session, ca.id)).public_bytes(Encoding.PEM))
        files[ca.id] = path
        for item in crl.publish_crl(session, ks, ca.id, now):
            crl_path = tmp_path / f"{ca.id}.crl.pem"
            crl_path.write_bytes(x509.load_der_x509_crl(item.der).public_bytes(Encoding.PEM))
            files[f"{ca.id}.crl"] = crl_path
    certs = {
        "sign": sign,
        "auth": auth,
        "sign2": sign2,
        "auth2": auth2,
        "renewed": renewed,
        "m_auth": m_auth,
        "m_sign": m_sign,
        "org": org,
        "tls": tls,
        "ocsp": ocsp,
    }
    for name, issued in certs.items():
        path = tmp_path / f"{name}.pem"
        path.write_bytes(issued.certificate.public_bytes(Encoding.PEM))
        files[name] = path
    return {"files": files, "certs": certs}


CHAINS = {
    "sign": "jpki-sign",
    "auth": "jpki-auth",
    "sign2": "jpki-sign",
    "auth2": "jpki-auth",
    "renewed": "jpki-auth",
    "m_auth": "jpki-mobile-auth",
    "m_sign": "jpki-mobile-sign",
    "org": "lgpki-org",
    "tls": "lgpki-org",
    "ocsp": "jpki-sign",
}
EXPECTED = {
    "sign": "revoked",
    "auth": "revoked",
    "sign2": "revoked",
    "auth2": "revoked",
    "renewed": "good",
    "m_auth": "good",
    "m_sign": "good",
    "org": "good",
    "tls": "good",
    "ocsp": "good",
}


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_openssl_verifies_every_profile_and_crl_status(pki: dict[str, object]) -> None:
    files: dict[str, Path] = pki["files"]  # type: ignore[assignment]
    for name, issuing in CHAINS.items():
        root = "jpki-root" if issuing.startswith("jpki") else "lgpki-root"
        plain = _run(
            "openssl",
            "verify",
            "-CAfile",
            str(files[root]),
            "-untrusted",
            str(files[issuing]),
            str(files[name]),
        )
        assert plain.returncode == 0, (name, plain.stdout, plain.stderr)
        checked = _run(
            "openssl",
            "verify",
            "-crl_check",
            "-CAfile",
            str(files[root]),
            "-untrusted",
            str(files[issuing]),
            "-CRLfile",
            str(files[f"{issuing}.crl"]),
            str(files[name]),
        )
        if EXPECTED[name] == "good":
            assert checked.returncode == 0, (name, checked.stdout, checked.stderr)
        else:
            assert checked.returncode != 0 and "certificate revoked" in checked.stdout + checked.stderr, name
    # the whole chain, root CRL included
    chain = _run(
        "openssl",
        "verify",
        "-crl_check_all",
        "-CAfile",
        str(files["jpki-root"]),
        "-untrusted",
        str(files["jpki-mobile-auth"]),
        "-CRLfile",
        str(files["jpki-root.crl"]),
        "-CRLfile",
        str(files["jpki-mobile-auth.crl"]),
        str(files["m_auth"]),
    )
    assert chain.returncode == 0, chain.stdout + chain.stderr


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_openssl_crl_text_lists_serials_and_reasons(pki: dict[str, object]) -> None:
    files: dict[str, Path] = pki["files"]  # type: ignore[assignment]
    certs: dict[str, service.IssuedCertificate] = pki["certs"]  # type: ignore[assignment]
    sign_text = _run("openssl", "crl", "-in", str(files["jpki-sign.crl"]), "-noout", "-text").stdout
    auth_text = _run("openssl", "crl", "-in", str(files["jpki-auth.crl"]), "-noout", "-text").stdout
    assert "X509v3 CRL Number" in sign_text and "Next Update" in sign_text
    for text, name, reason in [
        (sign_text, "sign", "Affiliation Changed"),
        (sign_text, "sign2", "Key Compromise"),
        (auth_text, "auth", "Certificate Hold"),
        (auth_text, "auth2", "Superseded"),
    ]:
        serial = format(int(certs[name].serial, 16), "X")
        serial = serial.zfill(len(serial) + len(serial) % 2)  # openssl prints whole octets
        block = text.split(f"Serial Number: {serial}")[1].split("Serial Number:")[0]
        assert reason in block, (name, reason)


def _pkilint(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    path = BIN / tool
    if not path.exists():
        found = shutil.which(tool)
        if found is None:
            pytest.skip(f"{tool} (PyPI pkilint) not installed")
        path = Path(found)
    return _run(str(path), "lint", *args)


def test_pkilint_finds_no_error_or_warning(pki: dict[str, object]) -> None:
    files: dict[str, Path] = pki["files"]  # type: ignore[assignment]
    for name in [*CHAINS, *(d.id for d in service.CA_DEFINITIONS)]:
        # exit code = number of findings at or above the threshold
        result = _pkilint("lint_pkix_cert", "-s", "WARNING", str(files[name]))
        assert result.returncode == 0, (name, result.stdout)
    for ca in service.CA_DEFINITIONS:
        result = _pkilint("lint_crl", "-t", "CRL", "-p", "PKIX", "-s", "WARNING", str(files[f"{ca.id}.crl"]))
        assert result.returncode == 0, (ca.id, result.stdout)


def test_pkilint_partitioned_crl(session: Session, ks: FileKeyStore, tmp_path: Path) -> None:
    init(session, ks, algorithm="p256", partition_size=1, partition_threshold=0)
    now = now_utc()
    auth, _ = issue_pair(session, ks, HOLDER, now)
    service.revoke(session, auth.serial, reason="keyCompromise", now=now)
    published = crl.publish_crl(session, ks, "jpki-auth", now)
    assert [p.partition for p in published] == [0, 1]
    path = tmp_path / "p1.crl"
    path.write_bytes(published[1].der)
    result = _pkilint("lint_crl", "-t", "CRL", "-p", "PKIX", "-s", "WARNING", str(path))
    assert result.returncode == 0, result.stdout
