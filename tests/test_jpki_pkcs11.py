"""CA keys in a PKCS#11 token (SoftHSM2): generated there, never extractable, signing in the token.

Needs the Debian package ``softhsm2`` and PyPI ``python-pkcs11``. When either is missing the tests
skip — except under CI (env ``CI`` set), where they fail so that a missing package is noticed.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy.orm import Session

from kiban.jpki import crl, service
from kiban.jpki.keys import DEFAULT_SOFTHSM_LIBRARY, KeyStore, KeyStoreError, Pkcs11KeyStore
from kiban.jpki.profiles import HolderInfo

PIN = "246810"


def _missing() -> str | None:
    if shutil.which("softhsm2-util") is None or not Path(DEFAULT_SOFTHSM_LIBRARY).exists():
        return "softhsm2 (Debian package) is not installed"
    if importlib.util.find_spec("pkcs11") is None:
        return "python-pkcs11 (PyPI) is not installed"
    return None


@pytest.fixture(scope="module")
def token(softhsm_conf: Path) -> Iterator[Pkcs11KeyStore]:
    missing = _missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI run: {missing}")
        pytest.skip(missing)
    store = Pkcs11KeyStore(DEFAULT_SOFTHSM_LIBRARY, "kiban-test", PIN)
    yield store
    store.close()


def test_token_key_is_not_extractable(token: Pkcs11KeyStore) -> None:
    import pkcs11

    token.generate("probe", "rsa2048")
    assert token.has_key("probe")
    key = token._find("probe", pkcs11.ObjectClass.PRIVATE_KEY)
    assert key is not None
    assert key[pkcs11.Attribute.SENSITIVE] is True
    assert key[pkcs11.Attribute.EXTRACTABLE] is False
    with pytest.raises(pkcs11.PKCS11Error):
        key[pkcs11.Attribute.PRIVATE_EXPONENT]  # noqa: B018 — the token must refuse
    with pytest.raises(KeyStoreError) as error:
        token.generate("probe", "rsa2048")
    assert error.value.rule == "no_overwrite"


@pytest.mark.parametrize("algorithm", ["rsa2048", "p256"])
def test_crl_signed_in_the_token_verifies(token: Pkcs11KeyStore, algorithm: str) -> None:
    label = f"crl-{algorithm}"
    public_key = token.generate(label, algorithm)
    now = datetime.now(UTC).replace(microsecond=0)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, f"token {algorithm}")])
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(name)
        .last_update(now)
        .next_update(now + timedelta(days=1))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(12345).revocation_date(now).build()
        )
    )
    signed = token.sign_crl(label, builder)
    assert signed.is_signature_valid(public_key)
    # a flipped bit in the signed data breaks the signature: the check is real
    der = bytearray(signed.public_bytes(Encoding.DER))
    tampered = x509.load_der_x509_crl(bytes(der).replace(b"token", b"tokem"))
    assert not tampered.is_signature_valid(public_key)
    self_signed = token.sign_certificate(
        label,
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(7)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1)),
    )
    self_signed.verify_directly_issued_by(self_signed)
    assert isinstance(self_signed.signature_hash_algorithm, hashes.SHA256)


def test_hierarchy_in_the_token_issues_and_publishes(
    token: Pkcs11KeyStore, session: Session, tmp_path: Path
) -> None:
    assert isinstance(token, KeyStore)
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    if not token.has_key("jpki-root"):
        service.init_hierarchies(session, token, "http://127.0.0.1:8000", now=now - timedelta(days=1))
    else:  # the module's token outlives one test's database: a second run would refuse (as it must)
        pytest.skip("hierarchy already in this token")
    holder = HolderInfo("12345678901", "山田　花子", date(1990, 1, 2), 2, "東京都千代田区", "card-1")
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    auth = service.issue_user_auth_certificate(
        session, token, public_key=key, holder=holder, card_expiry=date(2040, 1, 1), now=now
    )
    service.revoke(session, auth.serial, reason="keyCompromise", now=now)
    published = crl.publish_crl(session, token, "jpki-auth", now)[0]
    assert published.check is not None and published.check.ok  # includes the signature check
    issuing = service.ca_certificate(service.get_ca(session, "jpki-auth"))
    root = service.ca_certificate(service.get_ca(session, "jpki-root"))
    auth.certificate.verify_directly_issued_by(issuing)
    issuing.verify_directly_issued_by(root)
    files = {}
    for name, obj in {"root": root, "issuing": issuing, "leaf": auth.certificate}.items():
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_bytes(obj.public_bytes(Encoding.PEM))
    files["crl"] = tmp_path / "auth.crl.pem"
    files["crl"].write_bytes(x509.load_der_x509_crl(published.der).public_bytes(Encoding.PEM))
    if shutil.which("openssl"):
        result = subprocess.run(
            [
                "openssl",
                "verify",
                "-crl_check",
                "-CAfile",
                str(files["root"]),
                "-untrusted",
                str(files["issuing"]),
                "-CRLfile",
                str(files["crl"]),
                str(files["leaf"]),
            ],
            capture_output=True,
            text=True,
        )
        assert result.returncode != 0 and "certificate revoked" in result.stdout + result.stderr
