"""Signed documents (SPEC K6/K8): PAdES by the municipality's organisation key, signed QR codes,
`kiban document verify`, and the public verification page.

A 住民票の写し made by the register's own generator is signed with :func:`pdfsign.issue_signed`,
then checked with pyHanko's validator directly, with :func:`pdfsign.verify_pdf`, the CLI and the
page; modified PDFs and forged QR codes must fail with the named problem.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from pypdf import PdfReader
from reportlab.pdfgen.canvas import Canvas
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from kiban.cli.document import app as document_cli
from kiban.core import pdfsign
from kiban.core.config import Settings
from kiban.core.database import utcnow
from kiban.core.documents import KeyDirectorySigners
from kiban.core.models.documents import IssuedDocument
from kiban.core.wareki import to_wareki
from kiban.jpki import service
from kiban.jpki.keys import DEFAULT_SOFTHSM_LIBRARY, FileKeyStore
from kiban.jpki.models import Certificate
from kiban.kiosk import verification
from kiban.register import documents as docs
from kiban.web.app import WebOptions, create_app

CODE = "212016"  # 岐阜市
BASE = "http://127.0.0.1:8000"


def entry(resident_code: str = "12345678901", given: str = "花子") -> docs.ResidentEntry:
    return docs.ResidentEntry(
        CODE,
        resident_code,
        "山田",
        given,
        "ヤマダ",
        "ハナコ",
        date(1990, 1, 2),
        2,
        "世帯主",
        f"山田　{given}",
        "岐阜県岐阜市今沢町18番地",
        date(2010, 4, 1),
        date(2010, 4, 1),
    )


@dataclass
class World:
    factory: sessionmaker[Session]
    keystore: Any
    hmac: KeyDirectorySigners
    roots: list[x509.Certificate]
    issued: docs.IssuedPdf
    pdf: bytes

    def issue(self, given: str = "花子", resident_code: str = "12345678901") -> tuple[docs.IssuedPdf, bytes]:
        request = docs.ResidentCopyRequest(CODE, [entry(resident_code, given)], "kiosk:test")
        with self.factory.begin() as s:
            issued, pdf = pdfsign.issue_signed(
                s, self.keystore, docs.issue_resident_copy, request, signers=self.hmac
            )
        return issued, pdf

    def verify(self, pdf: bytes, online: bool = True) -> pdfsign.VerificationResult:
        with self.factory() as s:
            return pdfsign.verify_pdf(pdf, trust_roots=self.roots, online_session=s if online else None)

    def identity(self) -> pdfsign.SigningIdentity:
        with self.factory.begin() as s:
            return pdfsign.signing_identity(s, self.keystore, CODE)


def make_world(factory: sessionmaker[Session], keystore: Any, tmp_path: Path) -> World:
    with factory.begin() as s:
        service.init_hierarchies(s, keystore, BASE, algorithm="p256", now=utcnow() - timedelta(days=1))
    with factory() as s:
        roots = pdfsign.trust_roots_from_db(s)
    world = World(factory, keystore, KeyDirectorySigners(tmp_path / "hmac"), roots, None, b"")  # type: ignore[arg-type]
    world.issued, world.pdf = world.issue()
    return world


@pytest.fixture
def world(session_maker: sessionmaker[Session], tmp_path: Path) -> World:
    return make_world(session_maker, FileKeyStore(tmp_path / "keys"), tmp_path)


def codes(result: pdfsign.VerificationResult) -> set[str]:
    return {p.code for p in result.problems}


def pyhanko_status(pdf: bytes, roots: list[x509.Certificate]) -> Any:
    from asn1crypto import x509 as asn1_x509
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.sign.validation import validate_pdf_signature
    from pyhanko_certvalidator import ValidationContext

    reader = PdfFileReader(io.BytesIO(pdf))
    (signature,) = reader.embedded_signatures
    anchors = [asn1_x509.Certificate.load(c.public_bytes(serialization.Encoding.DER)) for c in roots]
    return reader, signature, validate_pdf_signature(signature, ValidationContext(trust_roots=anchors))


def resign(
    world: World, issued: docs.IssuedPdf, payload: str, drawn: str | None = None, **info: str
) -> bytes:
    """A PDF signed by the municipality's genuine key but carrying ``payload`` (a signing-path bug
    or an insider): only the QR checks can catch it."""
    row = issued.issuance
    values = {
        pdfsign.INFO_SERIAL: row.serial,
        pdfsign.INFO_MUNICIPALITY: row.municipality_code,
        pdfsign.INFO_TYPE: row.document_type,
        pdfsign.INFO_HASH: row.content_hash,
        pdfsign.INFO_QR: payload,
        **{f"/Kiban{k}": v for k, v in info.items()},
    }
    prepared, _ = pdfsign._prepare(issued.pdf, values, drawn or payload)
    return pdfsign._pades(world.keystore, world.identity(), prepared)


def genuine_payload(pdf: bytes) -> str:
    return pdfsign._info(pdf)[pdfsign.INFO_QR]


def other_identity(
    tmp_path: Path, *, same_key_id_as: pdfsign.SigningIdentity | None = None
) -> tuple[FileKeyStore, pdfsign.SigningIdentity]:
    """Another P-256 key with a self-signed 'organisation' certificate for 岐阜市 (a forger's)."""
    store = FileKeyStore(tmp_path / "forger")
    label = pdfsign.key_label(CODE)
    public = store.generate(label, "p256")
    private = store._private(label)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "岐阜市"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, CODE),
            x509.NameAttribute(NameOID.COMMON_NAME, pdfsign.ORG_TITLE),
        ]
    )
    now = utcnow()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    identity = pdfsign.SigningIdentity(CODE, label, cert, format(cert.serial_number, "040x"), (cert,))
    return store, identity


# --------------------------------------------------------------------------- good documents


def test_signed_copy_verifies_with_pyhanko_and_kiban(world: World) -> None:
    reader, signature, status = pyhanko_status(world.pdf, world.roots)
    from pyhanko.sign.validation.status import SignatureCoverageLevel

    assert status.bottom_line and status.intact and status.valid and status.trusted
    assert status.coverage == SignatureCoverageLevel.ENTIRE_FILE and status.docmdp_ok
    assert "/DocMDP" in reader.root["/Perms"]  # a certification signature: no change allowed
    assert status.signing_cert.subject.native["organizational_unit_name"] == CODE
    assert len(signature.signed_data["certificates"]) == 3  # signer, lgpki-org, lgpki-root
    assert status.pkcs7_signature_mechanism == "sha256_ecdsa"

    offline = world.verify(world.pdf, online=False)
    assert offline.ok and not offline.online, offline.problems
    online = world.verify(world.pdf)
    assert online.ok and online.online, online.problems
    assert (online.municipality, online.serial) == (CODE, world.issued.serial)
    assert online.signer == f"岐阜市 {pdfsign.ORG_TITLE}"
    assert online.document_type == docs.DocumentType.RESIDENT_COPY.value

    # The register's layout is intact; its (HMAC) QR was replaced by the signed one.
    text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(world.pdf)).pages)
    assert world.issued.serial in text and "山田　花子" in text
    assert world.issued.issuance.verification_code in text
    drawn = pdfsign._drawn_qr(world.pdf)
    payload = genuine_payload(world.pdf)
    assert len(drawn) == 1 and payload.startswith("KQ1:")
    assert drawn[0][0] == pdfsign._qr_block(payload, *drawn[0][1])
    assert drawn[0][0] != pdfsign._qr_block(world.issued.issuance.qr_payload, *drawn[0][1])
    assert len(payload) < 262  # alphanumeric mode: a version-9 QR code at level M

    with world.factory() as s:
        assert pdfsign.verify_qr(payload, session=s).ok


def test_one_certificate_per_municipality_reused_then_renewed(world: World, tmp_path: Path) -> None:
    world.issue(given="太郎", resident_code="12345678902")
    with world.factory() as s:
        rows = s.scalars(select(Certificate).where(Certificate.kind == "organisation")).all()
    assert len(rows) == 1 and rows[0].subject_id == f"{CODE}:{pdfsign.ORG_TITLE}"
    first = world.identity()
    assert first.serial == rows[0].serial
    # Inside the renewal window a new certificate for the same key; the old one stays good.
    later = rows[0].not_after - pdfsign.RENEW_BEFORE + timedelta(days=1)
    with world.factory.begin() as s:
        renewed = pdfsign.signing_identity(s, world.keystore, CODE, now=later)
    assert renewed.serial != first.serial
    assert renewed.certificate.public_key() == first.certificate.public_key()
    with world.factory() as s:
        assert service.find_certificate(s, first.serial).status == "good"
    assert world.verify(world.pdf).ok
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()).count(f"org-{CODE}.key.pem") == 1


def test_signing_refuses_unknown_serial_and_other_municipality(world: World) -> None:
    with world.factory() as s:
        with pytest.raises(pdfsign.PdfSignError) as caught:
            pdfsign.sign_pdf(
                s, world.keystore, world.issued.pdf, municipality_code=CODE, serial="212016-2026-X"
            )
        assert (caught.value.field, caught.value.rule) == ("serial", "known_serial")
        with pytest.raises(pdfsign.PdfSignError) as caught:
            pdfsign.sign_pdf(
                s, world.keystore, world.issued.pdf, municipality_code="131016", serial=world.issued.serial
            )
        assert caught.value.rule == "issuer"
        with pytest.raises(pdfsign.PdfSignError) as caught:
            pdfsign.sign_pdf(s, world.keystore, b"hello", municipality_code=CODE, serial=world.issued.serial)
        assert (caught.value.field, caught.value.rule) == ("pdf", "pdf")
        # A PDF without the layout's QR code: signed by sign_pdf, refused by qr_then_sign.
        bare = io.BytesIO()
        canvas = Canvas(bare)
        canvas.drawString(100, 700, "no QR here")
        canvas.save()
        no_qr = dataclasses.replace(world.issued, pdf=bare.getvalue())
        with pytest.raises(pdfsign.PdfSignError) as caught:
            pdfsign.qr_then_sign(s, world.keystore, no_qr)
        assert (caught.value.field, caught.value.rule) == ("pdf", "qr_placeholder")
        signed = pdfsign.sign_pdf(
            s, world.keystore, bare.getvalue(), municipality_code=CODE, serial=world.issued.serial
        )
        s.commit()
    assert codes(world.verify(signed)) == {"qr_not_drawn"}


def test_signing_finisher_for_a_committed_document(world: World) -> None:
    """The kiosk's finisher shape (pdf, municipality code): the serial is read off the page."""
    with world.factory.begin() as s:
        request = docs.ResidentCopyRequest(CODE, [entry("12345678903", "次郎")], "kiosk:test")
        plain = docs.issue_resident_copy(s, request, signers=world.hmac)
    finish = pdfsign.signing_finisher(world.factory, world.keystore)
    signed = finish(plain.pdf, CODE)
    result = world.verify(signed)
    assert result.ok and result.serial == plain.serial, result.problems
    with pytest.raises(pdfsign.PdfSignError) as caught:
        finish(plain.pdf, "131016")
    assert (caught.value.field, caught.value.rule) == ("municipality_code", "issuer")


# --------------------------------------------------------------------------- modified PDFs


def test_incremental_update_changing_content_fails(world: World) -> None:
    from pyhanko.pdf_utils import generic
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
    from pyhanko.sign.validation.status import SignatureCoverageLevel

    writer = IncrementalPdfFileWriter(io.BytesIO(world.pdf))
    page_ref = writer.root["/Pages"]["/Kids"][0]
    page = page_ref.get_object()
    overlay = writer.add_object(generic.StreamObject(stream_data=b"q 1 1 1 rg 200 700 200 40 re f Q"))
    page["/Contents"] = generic.ArrayObject([page.raw_get("/Contents"), overlay])
    writer.update_container(page)
    out = io.BytesIO()
    writer.write(out)
    modified = out.getvalue()

    _, _, status = pyhanko_status(modified, world.roots)
    assert status.intact and status.valid  # the signed revision itself is untouched
    assert status.coverage == SignatureCoverageLevel.ENTIRE_REVISION and not status.docmdp_ok
    assert not status.bottom_line
    result = world.verify(modified)
    assert not result.ok and codes(result) == {"modified_after_signing"}


def test_flipped_byte_in_the_page_fails(world: World) -> None:
    pdf = bytearray(world.pdf)
    # A byte inside the first compressed page stream: within the signed byte range.
    start = pdf.index(b"stream", pdf.index(b"/FlateDecode")) + 20
    pdf[start] ^= 0x01
    result = world.verify(bytes(pdf))
    assert not result.ok and "signature_broken" in codes(result)
    _, _, status = pyhanko_status(bytes(pdf), world.roots)
    assert not status.intact


def test_flipped_byte_in_the_signature_value_fails(world: World) -> None:
    pdf = bytearray(world.pdf)
    byte_range = re.search(rb"/ByteRange \[(\d+) (\d+) (\d+) (\d+)\]", bytes(pdf))
    assert byte_range is not None
    start, end = int(byte_range[2]) + 1, int(byte_range[3]) - 1  # the hex between < and >
    # The ECDSA signature value sits just before the zero padding at the end of the CMS blob.
    body = pdf[start:end].rstrip(b"0")
    at = start + len(body) - 10
    pdf[at] = ord("0") if pdf[at] != ord("0") else ord("1")
    result = world.verify(bytes(pdf))
    assert not result.ok and "signature_invalid" in codes(result)


def test_not_a_pdf_and_unsigned_pdf(world: World) -> None:
    assert codes(world.verify(b"GIF89a not a pdf")) == {"not_a_pdf"}
    assert codes(world.verify(world.issued.pdf)) == {"no_signature"}
    noise = world.verify(b"%PDF-1.7\n" + os.urandom(2000))
    assert not noise.ok and codes(noise) <= {"not_a_pdf", "no_signature"}


@pytest.fixture(scope="module")
def signed_sample(
    tmp_path_factory: pytest.TempPathFactory, migrated_template: str
) -> tuple[bytes, list[Any]]:
    """One signed document for property tests (hypothesis cannot take function-scoped fixtures)."""
    from kiban.core.database import make_engine, session_factory

    directory = tmp_path_factory.mktemp("sample")
    if migrated_template.startswith("sqlite"):
        from sqlalchemy.engine import make_url

        target = directory / "kiban.sqlite"
        shutil.copyfile(make_url(migrated_template).database or "", target)
        url = f"sqlite:///{target}"
    else:
        pytest.skip("property test runs on SQLite")
    engine = make_engine(url)
    world = make_world(session_factory(engine), FileKeyStore(directory / "keys"), directory)
    engine.dispose()
    return world.pdf, world.roots


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_any_flipped_byte_in_the_signed_range_fails(
    signed_sample: tuple[bytes, list[Any]], data: Any
) -> None:
    pdf, roots = signed_sample
    byte_range = re.search(rb"/ByteRange \[(\d+) (\d+) (\d+) (\d+)\]", pdf)
    assert byte_range is not None
    hole = range(int(byte_range[2]), int(byte_range[3]))  # the signature value itself
    offset = data.draw(st.integers(0, len(pdf) - 1).filter(lambda i: i not in hole))
    mask = data.draw(st.integers(1, 255))
    mutated = bytearray(pdf)
    mutated[offset] ^= mask
    result = pdfsign.verify_pdf(bytes(mutated), trust_roots=roots)
    assert not result.ok and result.problems


def test_pdf_signed_by_another_ca_is_untrusted(world: World, tmp_path: Path) -> None:
    store, forger = other_identity(tmp_path)
    payload = genuine_payload(world.pdf)
    row = world.issued.issuance
    info = {
        pdfsign.INFO_SERIAL: row.serial,
        pdfsign.INFO_MUNICIPALITY: CODE,
        pdfsign.INFO_TYPE: row.document_type,
        pdfsign.INFO_HASH: row.content_hash,
        pdfsign.INFO_QR: payload,
    }
    prepared, _ = pdfsign._prepare(world.issued.pdf, info, payload)
    forged = pdfsign._pades(store, forger, prepared)
    result = world.verify(forged)
    assert "signer_untrusted" in codes(result)
    assert "qr_signer_mismatch" in codes(result)  # the genuine QR names the genuine certificate
    assert "signer_certificate_unknown" in codes(result)


def test_a_node_tls_key_cannot_pass_for_the_municipality(world: World) -> None:
    """lgpki-org also certifies the nodes' TLS keys: such a certificate chains to the same root
    but is not a 職責証明書, so its signature is refused (by the policy OID, and by pyHanko's
    key-usage rule)."""
    public = world.keystore.generate("node-tls", "p256")
    with world.factory.begin() as s:
        tls = service.issue_tls_certificate(
            s,
            world.keystore,
            public_key=public,
            node_name="node-1",
            dns_names=["node-1"],
            server=True,
            now=utcnow(),
        )
        chain = pdfsign.signing_identity(s, world.keystore, CODE).chain
    identity = pdfsign.SigningIdentity(CODE, "node-tls", tls.certificate, tls.serial, chain)
    payload = genuine_payload(world.pdf)
    row = world.issued.issuance
    info = {
        pdfsign.INFO_SERIAL: row.serial,
        pdfsign.INFO_MUNICIPALITY: CODE,
        pdfsign.INFO_TYPE: row.document_type,
        pdfsign.INFO_HASH: row.content_hash,
        pdfsign.INFO_QR: payload,
    }
    prepared, _ = pdfsign._prepare(world.issued.pdf, info, payload)
    result = world.verify(pdfsign._pades(world.keystore, identity, prepared), online=False)
    # pyHanko refuses it too (its key usage lacks nonRepudiation); ours names the profile.
    assert {"signer_not_organisation", "signer_untrusted"} <= codes(result)


# --------------------------------------------------------------------------- forged QR codes


def altered(payload: str, index: int) -> str:
    """The payload with one byte of its signed body changed, the signature kept."""
    raw = bytearray(pdfsign.b45decode(payload[len(pdfsign.QR_PREFIX) :]))
    raw[index] ^= 0x01
    return pdfsign.QR_PREFIX + pdfsign.b45encode(bytes(raw))


def test_altered_qr_payload_fails(world: World) -> None:
    payload = altered(genuine_payload(world.pdf), 10)  # the issue date
    result = world.verify(resign(world, world.issued, payload))
    assert "qr_signature_invalid" in codes(result)
    with world.factory() as s:
        scanned = pdfsign.verify_qr(payload, session=s)
    assert "qr_signature_invalid" in codes(scanned) and "ledger_mismatch" in codes(scanned)
    with world.factory() as s:
        assert codes(pdfsign.verify_qr(payload[:-7], session=s)) == {"qr_malformed"}
        assert codes(pdfsign.verify_qr("KIBAN1/" + world.issued.serial, session=s)) == {"qr_malformed"}


def test_qr_signed_by_another_key_fails(world: World, tmp_path: Path) -> None:
    store, forger = other_identity(tmp_path)
    row = world.issued.issuance
    claims = pdfsign.QrClaims(row.serial, row.document_type, row.content_hash, date.today(), forger.key_id)
    forged = pdfsign.make_qr_payload(store, forger, claims)
    result = world.verify(resign(world, world.issued, forged))
    assert "qr_signer_mismatch" in codes(result)
    with world.factory() as s:
        assert "qr_signer_mismatch" in codes(pdfsign.verify_qr(forged, session=s))
    # Claiming the genuine certificate's key id does not help: the signature does not verify.
    genuine = world.identity()
    body = dataclasses.replace(
        claims, key_id=genuine.key_id, issued_on=pdfsign.parse_qr(genuine_payload(world.pdf))[0].issued_on
    ).body()
    r, s_ = _raw(pdfsign.sign_bytes(store, forger.key_label, pdfsign._qr_message(body)))
    impostor = pdfsign.QR_PREFIX + pdfsign.b45encode(body + r + s_)
    assert "qr_signature_invalid" in codes(world.verify(resign(world, world.issued, impostor)))
    with world.factory() as s:
        assert codes(pdfsign.verify_qr(impostor, session=s)) == {"qr_signature_invalid"}


def _raw(der: bytes) -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big"), s.to_bytes(32, "big")


def test_qr_from_another_document_fails(world: World) -> None:
    other, other_pdf = world.issue(given="太郎", resident_code="12345678902")
    stolen = genuine_payload(other_pdf)  # genuine, but about the other document
    result = world.verify(resign(world, world.issued, stolen))
    assert {"qr_serial_mismatch", "qr_document_mismatch"} <= codes(result)
    # The printed QR must be the signed one recorded in the file.
    result = world.verify(resign(world, world.issued, genuine_payload(world.pdf), drawn=stolen))
    assert codes(result) == {"qr_not_drawn"}


def test_online_checks_ledger_and_certificate_status(world: World) -> None:
    with world.factory.begin() as s:
        identity = pdfsign.signing_identity(s, world.keystore, CODE)
        service.revoke(s, identity.serial, reason="keyCompromise", now=utcnow(), ca_id=pdfsign.ORG_CA)
    assert world.verify(world.pdf, online=False).ok  # offline cannot know (no CRL fetched)
    assert codes(world.verify(world.pdf)) == {"signer_certificate_revoked"}
    with world.factory.begin() as s:
        s.execute(delete(IssuedDocument).where(IssuedDocument.serial == world.issued.serial))
    assert "unknown_serial" in codes(world.verify(world.pdf))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_base45_round_trip(data: bytes) -> None:
    assert pdfsign.b45decode(pdfsign.b45encode(data)) == data


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_parse_qr_refuses_garbage_with_the_rule(text: str) -> None:
    try:
        pdfsign.parse_qr(pdfsign.QR_PREFIX + text)
    except pdfsign.PdfSignError as exc:
        assert (exc.field, exc.rule) == ("qr_payload", "format")


# --------------------------------------------------------------------------- CLI


def test_cli_verify(world: World, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIBAN_DATABASE_URL", db_url)
    good = tmp_path / "good.pdf"
    good.write_bytes(world.pdf)
    bad = tmp_path / "bad.pdf"
    flipped = bytearray(world.pdf)
    flipped[flipped.index(b"stream", flipped.index(b"/FlateDecode")) + 20] ^= 1
    bad.write_bytes(bytes(flipped))
    data = tmp_path / "data"
    runner = CliRunner()

    ok = runner.invoke(document_cli, ["verify", str(good), "--data", str(data)])
    assert ok.exit_code == 0, ok.output
    assert ok.output.startswith("valid\n") and world.issued.serial in ok.output and CODE in ok.output
    assert "online" in ok.output

    failed = runner.invoke(document_cli, ["verify", str(bad), "--data", str(data)])
    assert failed.exit_code == 1 and "failed: signature_broken" in failed.output

    monkeypatch.delenv("KIBAN_DATABASE_URL")
    root = tmp_path / "root.pem"
    root.write_bytes(world.roots[0].public_bytes(serialization.Encoding.PEM))
    offline = runner.invoke(document_cli, ["verify", str(good), "--offline", "--trust-root", str(root)])
    assert offline.exit_code == 0 and "checks: offline" in offline.output, offline.output
    # The demo's layout: DIR/pki/ca/lgpki-root.pem is the default anchor.
    (data / "pki" / "ca").mkdir(parents=True)
    shutil.copy(root, data / "pki" / "ca" / "lgpki-root.pem")
    assert runner.invoke(document_cli, ["verify", str(good), "--offline", "--data", str(data)]).exit_code == 0

    garbage = tmp_path / "garbage.pdf"
    garbage.write_bytes(b"not a pdf")
    out = runner.invoke(document_cli, ["verify", str(garbage), "--offline", "--trust-root", str(root)])
    assert out.exit_code == 1 and "failed: not_a_pdf" in out.output
    missing = runner.invoke(document_cli, ["verify", str(tmp_path / "nope.pdf"), "--offline"])
    assert missing.exit_code == 1 and "rule: readable" in missing.output


def test_cli_qr(world: World, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIBAN_DATABASE_URL", db_url)
    runner = CliRunner()
    payload = genuine_payload(world.pdf)
    ok = runner.invoke(document_cli, ["qr", payload, "--data", str(tmp_path / "data")])
    assert ok.exit_code == 0 and ok.output.startswith("valid\n") and world.issued.serial in ok.output
    forged = runner.invoke(document_cli, ["qr", altered(payload, 12), "--data", str(tmp_path / "data")])
    assert forged.exit_code == 1 and "failed: qr_signature_invalid" in forged.output
    as_json = runner.invoke(document_cli, ["qr", "KQ1:nonsense", "--json", "--data", str(tmp_path / "data")])
    assert as_json.exit_code == 1 and '"code": "qr_malformed"' in as_json.output


# --------------------------------------------------------------------------- the public page


@pytest.fixture
def client(world: World, db_url: str, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(
        Settings(data_dir=tmp_path / "web", database_url_override=db_url),
        options=WebOptions(deliver_events=False),
        capabilities=[verification.install],
    )
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


JSON = {"accept": "application/json"}
HTML = {"accept": "text/html"}


def test_page_form_and_good_upload(world: World, client: TestClient) -> None:
    form = client.get("/verify", headers=HTML)
    assert form.status_code == 200 and "証明書の真正性確認" in form.text and 'name="file"' in form.text
    answer = client.post("/verify", files={"file": ("doc.pdf", world.pdf, "application/pdf")}, headers=JSON)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["ok"] and body["serial"] == world.issued.serial and body["municipality"] == CODE
    assert body["online"] and body["problems"] == []
    page = client.post("/verify", files={"file": ("doc.pdf", world.pdf, "application/pdf")}, headers=HTML)
    assert page.status_code == 200 and "有効です" in page.text and "住民票の写し" in page.text


def test_page_bad_uploads(world: World, client: TestClient) -> None:
    flipped = bytearray(world.pdf)
    flipped[flipped.index(b"stream", flipped.index(b"/FlateDecode")) + 20] ^= 1
    answer = client.post(
        "/verify", files={"file": ("doc.pdf", bytes(flipped), "application/pdf")}, headers=JSON
    )
    assert answer.status_code == 200 and not answer.json()["ok"]
    assert "signature_broken" in {p["code"] for p in answer.json()["problems"]}
    page = client.post(
        "/verify", files={"file": ("doc.pdf", bytes(flipped), "application/pdf")}, headers=HTML
    )
    assert "確認できませんでした" in page.text and 'data-code="signature_broken"' in page.text

    big = b"%PDF-1.7\n" + b"0" * verification.MAX_UPLOAD_BYTES
    too_big = client.post("/verify", files={"file": ("big.pdf", big, "application/pdf")}, headers=JSON)
    assert too_big.status_code == 413
    assert (
        too_big.json()["errors"][0]["field"] == "file" and too_big.json()["errors"][0]["rule"] == "max_size"
    )

    garbage = client.post(
        "/verify", files={"file": ("x.pdf", os.urandom(4096), "application/pdf")}, headers=JSON
    )
    assert garbage.status_code == 422 and garbage.json()["errors"][0]["rule"] == "pdf"
    html = client.post("/verify", files={"file": ("x.pdf", b"hello", "text/plain")}, headers=HTML)
    assert html.status_code == 422 and "PDFファイルではありません" in html.text
    missing = client.post("/verify", headers=JSON)
    assert missing.status_code == 422 and missing.json()["errors"][0]["rule"] == "required"
    broken = client.post(
        "/verify",
        files={"file": ("x.pdf", b"%PDF-1.7\n" + os.urandom(3000), "application/pdf")},
        headers=JSON,
    )
    assert broken.status_code == 200 and not broken.json()["ok"]


def test_page_qr(world: World, client: TestClient) -> None:
    payload = genuine_payload(world.pdf)
    good = client.get("/verify/qr", params={"data": payload}, headers=JSON)
    assert good.status_code == 200 and good.json()["ok"] and good.json()["serial"] == world.issued.serial
    forged = client.get("/verify/qr", params={"data": altered(payload, 12)}, headers=JSON)
    assert not forged.json()["ok"] and "qr_signature_invalid" in {
        p["code"] for p in forged.json()["problems"]
    }
    page = client.get("/verify/qr", params={"data": payload}, headers=HTML)
    assert "有効です" in page.text and "二次元コード" in page.text
    assert to_wareki(pdfsign.parse_qr(payload)[0].issued_on) in page.text  # 和暦 on the page
    assert client.get("/verify/qr", params={"data": "x" * 1001}, headers=JSON).status_code == 422
    assert client.get("/verify/qr", headers=JSON).status_code == 422


def test_page_is_rate_limited(world: World, client: TestClient) -> None:
    from kiban.web.auth import TokenBucketLimiter

    client.app.state.document_verify_limiter = TokenBucketLimiter(2, 0.001)  # type: ignore[attr-defined]
    payload = genuine_payload(world.pdf)
    statuses = [
        client.get("/verify/qr", params={"data": payload}, headers=JSON).status_code for _ in range(3)
    ]
    assert statuses == [200, 200, 429]


# --------------------------------------------------------------------------- PKCS#11


PIN = "246810"


@pytest.fixture
def token(softhsm_conf: Path) -> Iterator[Any]:
    from kiban.jpki.keys import Pkcs11KeyStore

    store = Pkcs11KeyStore(DEFAULT_SOFTHSM_LIBRARY, "kiban-doc", PIN)
    yield store
    store.close()


def test_pkcs11_signing_keeps_the_key_in_the_token(
    session_maker: sessionmaker[Session], token: Any, tmp_path: Path
) -> None:
    import pkcs11

    world = make_world(session_maker, token, tmp_path)
    key = token._find(pdfsign.key_label(CODE), pkcs11.ObjectClass.PRIVATE_KEY)
    assert key is not None and key[pkcs11.Attribute.SENSITIVE] and not key[pkcs11.Attribute.EXTRACTABLE]
    assert not (tmp_path / "keys").exists()  # nothing on disk
    _, _, status = pyhanko_status(world.pdf, world.roots)
    assert status.bottom_line
    assert world.verify(world.pdf).ok
    with session_maker() as s:
        assert (
            s.scalar(select(func.count()).select_from(Certificate).where(Certificate.kind == "organisation"))
            == 1
        )
    assert isinstance(world.identity().certificate.public_key(), ec.EllipticCurvePublicKey)


# --------------------------------------------------------------------------- independent tools


def test_poppler_pdfsig_agrees(world: World, tmp_path: Path) -> None:
    """Poppler's pdfsig (NSS, another implementation) finds the signature valid, and not when modified."""
    if shutil.which("pdfsig") is None:
        pytest.skip("pdfsig (Debian poppler-utils) is not installed")
    good = tmp_path / "good.pdf"
    good.write_bytes(world.pdf)
    report = subprocess.run(["pdfsig", str(good)], capture_output=True, text=True, timeout=60).stdout
    assert "Signature is Valid." in report and "Total document signed" in report
    assert "OU=212016" in report
    flipped = bytearray(world.pdf)
    flipped[flipped.index(b"stream", flipped.index(b"/FlateDecode")) + 20] ^= 1
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(bytes(flipped))
    report = subprocess.run(["pdfsig", str(bad)], capture_output=True, text=True, timeout=60).stdout
    assert "Signature is Valid." not in report


def test_printed_qr_scans_to_the_signed_payload(world: World, tmp_path: Path) -> None:
    """The page as printed (pdftoppm) carries the signed payload in its QR code (zbarimg)."""
    if shutil.which("pdftoppm") is None or shutil.which("zbarimg") is None:
        pytest.skip("pdftoppm (poppler-utils) or zbarimg (zbar-tools) is not installed")
    path = tmp_path / "doc.pdf"
    path.write_bytes(world.pdf)
    render = ["pdftoppm", "-r", "150", "-png", str(path), str(tmp_path / "page")]
    subprocess.run(render, check=True, timeout=60)
    (image,) = sorted(tmp_path.glob("page*.png"))
    scan = subprocess.run(["zbarimg", "-q", "--raw", str(image)], capture_output=True, text=True, timeout=60)
    payload = scan.stdout.strip()
    assert payload == genuine_payload(world.pdf)
    with world.factory() as s:
        assert pdfsign.verify_qr(payload, session=s).ok
