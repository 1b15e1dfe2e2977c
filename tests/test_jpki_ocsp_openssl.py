"""`openssl ocsp` as the client against a real `kiban serve` subprocess, and OpenSSL's own responder
(`openssl ocsp -index … -port …`) over the same certificates as the reference (SPEC K5, §7)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp as x509_ocsp
from sqlalchemy import select

from browser_support import free_port, kiban_serve  # noqa: I001 - tests/ is on the path
from kiban.core.database import make_engine, session_factory
from kiban.jpki import crl
from kiban.jpki.keys import FileKeyStore
from kiban.jpki.models import Certificate, OcspSigner
from test_jpki_ocsp import World, make_world

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
PEM = serialization.Encoding.PEM


def write_pem(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(PEM) for c in certs))
    return path


def openssl_ocsp(
    url: str, issuer: Path, cert: Path, root: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "openssl", "ocsp", *extra, "-issuer", str(issuer), "-cert", str(cert), "-url", url,
            "-CAfile", str(root), "-verify_other", str(issuer), "-timeout", "10",
        ],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def _openssl_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%y%m%d%H%M%SZ")


def write_index(path: Path, rows: list[Certificate]) -> Path:
    """OpenSSL's CA database (index.txt) for the same certificates: V/R, expiry, revocation, serial."""
    lines = []
    for row in rows:
        serial = f"{int(row.serial, 16):X}"
        serial = serial.rjust(len(serial) + len(serial) % 2, "0")
        expiry = _openssl_time(row.not_after)
        if row.status == "good":
            lines.append(f"V\t{expiry}\t\t{serial}\tunknown\t/CN={row.subject_id}")
        else:
            assert row.status_changed_at is not None
            reason = "certificateHold,holdInstructionReject" if row.status == "hold" else row.reason
            revoked = f"{_openssl_time(row.status_changed_at)},{reason}"
            lines.append(f"R\t{expiry}\t{revoked}\t{serial}\tunknown\t/CN={row.subject_id}")
    path.write_text("\n".join(lines) + "\n")
    return path


@contextmanager
def openssl_responder(
    directory: Path, index: Path, issuer: Path, signer_cert: Path, signer_key: Path
) -> Iterator[str]:
    """OpenSSL's reference responder on a free port, signing with the same delegated key."""
    port = free_port()
    log_path = directory / "openssl-responder.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [
            "openssl", "ocsp", "-index", str(index), "-port", str(port), "-rsigner", str(signer_cert),
            "-rkey", str(signer_key), "-CA", str(issuer), "-nmin", "60", "-ignore_err",
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            # No probe connection: the responder serves one connection at a time and would wait
            # on an idle one; it says when it listens.
            if b"waiting for OCSP client connections" in log_path.read_bytes():
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("openssl ocsp responder did not start")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture
def served(db_url: str, tmp_path: Path) -> Iterator[tuple[World, str, dict[str, Path]]]:
    factory = session_factory(make_engine(db_url))
    world = make_world(factory, tmp_path / "data" / "keys")
    pki = tmp_path / "pki"
    pki.mkdir()
    files = {
        "root": write_pem(pki / "root.pem", world.root),
        "issuer": write_pem(pki / "issuer.pem", world.issuer),
        "good": write_pem(pki / "good.pem", world.good),
        "revoked": write_pem(pki / "revoked.pem", world.revoked),
        "held": write_pem(pki / "held.pem", world.held),
    }
    with kiban_serve(db_url, tmp_path) as base:
        yield world, base, files


def test_openssl_client_reports_each_status_with_a_valid_signature(
    served: tuple[World, str, dict[str, Path]],
) -> None:
    world, base, files = served
    expected = {
        "good": ("good", None),
        "revoked": ("revoked", "keyCompromise"),
        "held": ("revoked", "certificateHold"),
    }
    for name, (status, reason) in expected.items():
        for extra in ((), ("-no_nonce",), ("-sha256",)):
            result = openssl_ocsp(f"{base}/ocsp", files["issuer"], files[name], files["root"], *extra)
            assert result.returncode == 0, result.stderr
            assert "Response verify OK" in result.stderr, result.stderr
            assert re.search(rf"^{re.escape(str(files[name]))}: {status}$", result.stdout, re.M), (
                result.stdout
            )
            if reason:
                assert f"Reason: {reason}" in result.stdout
            # a nonce is echoed (openssl would warn "WARNING: no nonce in response" otherwise)
            assert "nonce" not in result.stderr.lower() or "-no_nonce" in extra
    # the revocation time is the CA's
    result = openssl_ocsp(f"{base}/ocsp", files["issuer"], files["revoked"], files["root"], "-no_nonce")
    assert f"Revocation Time: {world.revoked_at:%b %e %H:%M:%S %Y} GMT" in result.stdout


def test_openssl_client_unknown_and_errors(
    served: tuple[World, str, dict[str, Path]], tmp_path: Path
) -> None:
    world, base, files = served
    result = subprocess.run(
        ["openssl", "ocsp", "-issuer", str(files["issuer"]), "-serial", "0x1234", "-url", f"{base}/ocsp",
         "-CAfile", str(files["root"]), "-verify_other", str(files["issuer"])],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "0x1234: unknown" in result.stdout and "Response verify OK" in result.stderr
    # asking the root about an issuing CA: not ours to answer
    result = openssl_ocsp(f"{base}/ocsp", files["root"], files["issuer"], files["root"])
    assert "Responder Error: unauthorized (6)" in result.stdout + result.stderr
    # many serials in one request (openssl sends several CertIDs)
    many = ["-serial", str(world.good.serial_number), "-serial", str(world.revoked.serial_number)]
    result = subprocess.run(
        ["openssl", "ocsp", "-issuer", str(files["issuer"]), *many, "-url", f"{base}/ocsp",
         "-CAfile", str(files["root"]), "-verify_other", str(files["issuer"])],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "Response verify OK" in result.stderr
    assert f"{world.good.serial_number}: good" in result.stdout
    assert f"{world.revoked.serial_number}: revoked" in result.stdout


def test_crl_and_ca_urls_from_the_certificates(
    served: tuple[World, str, dict[str, Path]], tmp_path: Path
) -> None:
    """The URLs written in the certificates, fetched from the server and checked by openssl verify."""
    world, base, files = served
    with world.factory.begin() as session:
        crl.publish_crl(session, world.ks, "jpki-auth", datetime.now(UTC).replace(microsecond=0))
    cdp = world.revoked.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    url = cdp[0].full_name[0].value  # the partition URL
    assert url.startswith("http://127.0.0.1:8000/crl/jpki-auth/")
    got = httpx.get(base + url.removeprefix("http://127.0.0.1:8000"))
    assert got.status_code == 200 and got.headers["content-type"] == "application/pkix-crl"
    (tmp_path / "auth.crl").write_bytes(got.content)
    ca = httpx.get(f"{base}/ca/jpki-auth.cer")
    assert ca.headers["content-type"] == "application/pkix-cert"
    assert x509.load_der_x509_certificate(ca.content) == world.issuer
    subprocess.run(
        ["openssl", "crl", "-inform", "DER", "-in", str(tmp_path / "auth.crl"),
         "-out", str(tmp_path / "auth.pem")],
        check=True, timeout=30,
    )  # fmt: skip
    verify = subprocess.run(
        ["openssl", "verify", "-crl_check", "-CAfile", str(files["root"]), "-untrusted", str(files["issuer"]),
         "-CRLfile", str(tmp_path / "auth.pem"), str(files["revoked"])],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "certificate revoked" in verify.stdout + verify.stderr


def test_openssl_reference_responder_agrees(db_url: str, tmp_path: Path) -> None:
    """The baseline of the benchmark answers the same statuses over the same certificates."""
    factory = session_factory(make_engine(db_url))
    world = make_world(factory, tmp_path / "keys")
    pki = tmp_path / "pki"
    pki.mkdir()
    with factory() as session:
        rows = list(session.scalars(select(Certificate).where(Certificate.ca_id == "jpki-auth")))
        signer = session.scalars(select(OcspSigner).where(OcspSigner.ca_id == "jpki-auth")).one()
    signer_cert = pki / "signer.pem"
    signer_cert.write_bytes(x509.load_der_x509_certificate(signer.certificate_der).public_bytes(PEM))
    signer_key = pki / "signer.key"
    key = FileKeyStore(tmp_path / "keys")._private(signer.key_label)
    signer_key.write_bytes(
        key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    index = write_index(pki / "index.txt", [r for r in rows if r.kind != "ocsp_signer"])
    issuer = write_pem(pki / "issuer.pem", world.issuer)
    root = write_pem(pki / "root.pem", world.root)
    with openssl_responder(pki, index, issuer, signer_cert, signer_key) as url:
        for cert, status in ((world.good, "good"), (world.revoked, "revoked"), (world.held, "revoked")):
            path = write_pem(pki / f"{cert.serial_number}.pem", cert)
            result = openssl_ocsp(url, issuer, path, root)
            assert f"{path}: {status}" in result.stdout, result.stdout + result.stderr
            assert "Response verify OK" in result.stderr


@contextmanager
def serve_workers(db_url: str, tmp_path: Path, workers: int, **env: str) -> Iterator[str]:
    """`kiban serve --workers N`."""

    with kiban_serve(db_url, tmp_path, "--workers", str(workers), env=env) as base:
        yield base


@pytest.mark.parametrize("workers", [1, 2])
def test_a_revocation_reaches_every_worker(db_url: str, tmp_path: Path, workers: int) -> None:
    """The CA revokes in its own process; the server's event delivery re-signs the stored response
    and every worker's cache follows within seconds."""
    from kiban.jpki import service

    factory = session_factory(make_engine(db_url))
    world = make_world(factory, tmp_path / "data" / "keys")
    pki = tmp_path / "pki"
    pki.mkdir()
    issuer = write_pem(pki / "issuer.pem", world.issuer)
    root = write_pem(pki / "root.pem", world.root)
    good = write_pem(pki / "good.pem", world.good)
    with serve_workers(db_url, tmp_path, workers) as base:
        for _ in range(2 * workers):  # warm every worker's cache with "good"
            result = openssl_ocsp(f"{base}/ocsp", issuer, good, root, "-no_nonce")
            assert f"{good}: good" in result.stdout
        with factory.begin() as session:
            service.revoke(session, world.good.serial_number, reason="keyCompromise", now=datetime.now(UTC))
        deadline = time.monotonic() + 20
        seen: list[str] = []
        while time.monotonic() < deadline:
            # several answers in a row, so each worker is asked
            results = [openssl_ocsp(f"{base}/ocsp", issuer, good, root, "-no_nonce") for _ in range(4)]
            seen = [r.stdout for r in results]
            if all(f"{good}: revoked" in s for s in seen):
                break
            time.sleep(0.5)
        assert all(f"{good}: revoked" in s and "Reason: keyCompromise" in s for s in seen), seen
        assert all("Response verify OK" in r.stderr for r in results)


def test_first_serve_creates_the_signers(db_url: str, tmp_path: Path) -> None:
    """A data directory with CAs but no responder key yet: `kiban serve` makes one per issuing CA
    (the CA key is there) and pre-signs, so openssl gets verified answers without any CLI step."""
    from datetime import date, timedelta

    from kiban.jpki import service
    from test_jpki_ocsp import USER_KEY, holder

    factory = session_factory(make_engine(db_url))
    ks = FileKeyStore(tmp_path / "data" / "keys")
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    with factory.begin() as session:
        service.init_hierarchies(session, ks, "http://127.0.0.1:8000", now=now - timedelta(days=1))
        cert = service.issue_user_auth_certificate(
            session, ks, public_key=USER_KEY, holder=holder(1), card_expiry=date(2040, 1, 1), now=now
        ).certificate
        issuer_cert = service.ca_certificate(service.get_ca(session, "jpki-auth"))
        root_cert = service.ca_certificate(service.get_ca(session, "jpki-root"))
        assert session.scalar(select(OcspSigner.id)) is None
    pki = tmp_path / "pki"
    pki.mkdir()
    issuer, root = write_pem(pki / "issuer.pem", issuer_cert), write_pem(pki / "root.pem", root_cert)
    path = write_pem(pki / "cert.pem", cert)
    with kiban_serve(db_url, tmp_path) as base:
        deadline = time.monotonic() + 30
        while True:
            result = openssl_ocsp(f"{base}/ocsp", issuer, path, root)
            if f"{path}: good" in result.stdout or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert f"{path}: good" in result.stdout, result.stdout + result.stderr
        assert "Response verify OK" in result.stderr
    with factory() as session:
        cas = set(session.scalars(select(OcspSigner.ca_id)))
    assert cas == {"jpki-auth", "jpki-sign", "jpki-mobile-auth", "jpki-mobile-sign", "lgpki-org"}


def test_served_shortcut_keeps_every_rule(db_url: str, tmp_path: Path) -> None:
    """Through `kiban serve` (whose HTTP protocol answers cached POSTs itself): the rate limit,
    tokens, GET, keep-alive and the metrics behave as through ASGI."""
    from kiban.jpki import ocsp
    from test_jpki_ocsp import request_der

    factory = session_factory(make_engine(db_url))
    world = make_world(factory, tmp_path / "data" / "keys")
    body = request_der(world.good, world.issuer)
    headers = {"content-type": ocsp.MEDIA_REQUEST}
    with serve_workers(db_url, tmp_path, 1, KIBAN_OCSP_ANONYMOUS_RATE="1") as base, httpx.Client() as client:
        statuses = []
        for _ in range(8):  # one keep-alive connection; burst 5, then tryLater
            answer = client.post(f"{base}/ocsp", content=body, headers=headers)
            assert answer.status_code == 200 and answer.headers["content-type"] == ocsp.MEDIA_RESPONSE
            statuses.append(x509_ocsp.load_der_ocsp_response(answer.content).response_status.name)
        assert statuses[:5] == ["SUCCESSFUL"] * 5 and statuses[-1] == "TRY_LATER", statuses
        assert "retry-after" in answer.headers
        refused = client.post(f"{base}/ocsp", content=body, headers={**headers, "authorization": "Bearer x"})
        assert x509_ocsp.load_der_ocsp_response(refused.content).response_status.name == "UNAUTHORIZED"
        metrics = client.get(f"{base}/metrics").text
        assert 'kiban_ocsp_requests_total{outcome="good",verifier="anonymous"} 5.0' in metrics
        assert 'kiban_ocsp_requests_total{outcome="rate_limited",verifier="anonymous"}' in metrics
        assert "kiban_ocsp_cache_total" in metrics
