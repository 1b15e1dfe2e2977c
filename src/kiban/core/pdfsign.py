"""Signed documents: PAdES signatures and signed QR codes by the municipality's organisation key.

SPEC K6 (anti-forgery) and K8 (organisation certificates). Every issued PDF carries

- a **PAdES signature** (baseline B-B, a certification signature that allows no change) made with
  pyHanko by the municipality's document-signing key, with its 職責証明書 from the LGPKI analogue
  (``lgpki-org``) and the chain up to ``lgpki-root`` embedded;
- a **signed QR code** (``KQ1:`` + base45 of a small fixed binary structure, ES256) over the
  document's serial, content hash (SHA-256 of the canonical data, as in the ledger), type and
  issue date, verifiable offline by anyone holding the municipality's certificate.

The key lives in the key store under ``org-<code>`` (:class:`~kiban.jpki.keys.FileKeyStore` in the
demo, a PKCS#11 token in production) and never leaves it; its certificate is issued through
:func:`kiban.jpki.service.issue_organisation_certificate` on first use and again when less than
:data:`RENEW_BEFORE` of it is left. See docs/document-signing.md for the decisions.

Entry points: :func:`issue_signed` (one call: generate, put the signed QR, sign),
:func:`qr_then_sign` (an already generated register document), :func:`sign_pdf`,
:func:`verify_pdf`, :func:`verify_qr`.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
import threading
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.x509.oid import NameOID
from sqlalchemy import select
from sqlalchemy.orm import Session

from kiban.core.database import utcnow

JST = ZoneInfo("Asia/Tokyo")
ORG_TITLE = "証明書交付"  # the office named in the 職責証明書 (CN)
KEY_ALGORITHM = "p256"  # ES256: a 64-byte signature keeps the QR code small
RENEW_BEFORE = timedelta(days=365)
ORG_CA = "lgpki-org"
ROOT_CA = "lgpki-root"
QR_PREFIX = "KQ1:"
QR_VERSION = 1
_QR_DOMAIN = b"kiban-document-qr-v1\n"
_EPOCH = date(2000, 1, 1)
ACTOR = "kiban-documents"
MAX_PDF_BYTES = 10 * 1024 * 1024
FIELD_NAME = "KibanSignature"
# Entries of the PDF's document information dictionary (covered by the signature).
INFO_SERIAL = "/KibanSerial"
INFO_MUNICIPALITY = "/KibanMunicipality"
INFO_TYPE = "/KibanDocumentType"
INFO_HASH = "/KibanContentHash"
INFO_QR = "/KibanQR"

T = TypeVar("T")


class PdfSignError(ValueError):
    """Signing refused: names the field and the rule; nothing was signed."""

    def __init__(self, field: str, rule: str, message: str) -> None:
        super().__init__(f"{field}: {message} (rule: {rule})")
        self.field = field
        self.rule = rule


def _run(coro_factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run pyHanko's coroutines from sync code, also when the caller is inside an event loop."""
    try:
        asyncio.get_running_loop()
        running = True
    except RuntimeError:
        running = False
    if not running:  # outside the except block: no chained RuntimeError in pyHanko's logs
        return asyncio.run(coro_factory())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro_factory())
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


# --------------------------------------------------------------------------- identity


def key_label(municipality_code: str) -> str:
    """Label of the municipality's document-signing key in the key store."""
    _check_code(municipality_code)
    return f"org-{municipality_code}"


def _check_code(code: object) -> str:
    if not isinstance(code, str) or len(code) != 6 or not code.isascii() or not code.isdigit():
        raise PdfSignError("municipality_code", "six_digits", f"{code!r} is not a 6-digit code")
    return code


def key_id(certificate: x509.Certificate) -> bytes:
    """8 bytes naming the signing certificate in a QR code: SHA-256 of its DER, cut."""
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).digest()[:8]


@dataclass(frozen=True)
class SigningIdentity:
    """A municipality's document-signing key (its label in the store) and certificate chain."""

    municipality_code: str
    key_label: str
    certificate: x509.Certificate
    serial: str  # the certificate's serial, 40 hex digits
    chain: tuple[x509.Certificate, ...]  # organisation CA, then root

    @property
    def key_id(self) -> bytes:
        return key_id(self.certificate)

    @property
    def signer_name(self) -> str:
        return _signer_name(self.certificate)


def _signer_name(certificate: x509.Certificate) -> str:
    def first(oid: x509.ObjectIdentifier) -> str:
        values = certificate.subject.get_attributes_for_oid(oid)
        return str(values[0].value) if values else ""

    return f"{first(NameOID.ORGANIZATION_NAME)} {first(NameOID.COMMON_NAME)}".strip()


def _municipality_of(certificate: x509.Certificate) -> str | None:
    values = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return str(values[0].value) if values else None


def _spki(key: Any) -> bytes:
    der: bytes = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return der


def _organisation_name(code: str) -> str:
    from kiban.core import master

    try:
        return master.municipality(code).name
    except master.MasterError:
        return code


def signing_identity(
    session: Session, keystore: Any, municipality_code: str, *, now: datetime | None = None
) -> SigningIdentity:
    """The municipality's key and a current certificate: made on first use, renewed before expiry.

    The key (P-256) is generated in the store under ``org-<code>`` the first time. A certificate
    is reused while more than :data:`RENEW_BEFORE` of it is left; after that a new one is issued
    for the same key. The old one is not revoked: documents signed with it stay verifiable until
    it expires. Writes (key, certificate, audit) happen in the caller's transaction.
    """
    from kiban.jpki import service
    from kiban.jpki.models import Certificate

    code = _check_code(municipality_code)
    when = now or utcnow()
    label = key_label(code)
    from kiban.jpki.keys import KeyStoreError

    try:
        public = (
            keystore.public_key(label) if keystore.has_key(label) else keystore.generate(label, KEY_ALGORITHM)
        )
    except KeyStoreError as exc:
        if exc.rule != "no_overwrite":
            raise
        public = keystore.public_key(label)  # another process made it first: use that one
    rows = session.scalars(
        select(Certificate)
        .where(
            Certificate.ca_id == ORG_CA,
            Certificate.kind == "organisation",
            Certificate.subject_id == f"{code}:{ORG_TITLE}"[:64],
            Certificate.status == "good",
        )
        .order_by(Certificate.not_after.desc())
    )
    chosen: tuple[x509.Certificate, str] | None = None
    for row in rows:
        certificate = x509.load_der_x509_certificate(row.der)
        if (
            _spki(certificate.public_key()) == _spki(public)
            and row.not_before <= when
            and row.not_after - when > RENEW_BEFORE
        ):
            chosen = (certificate, row.serial)
            break
    if chosen is None:
        issued = service.issue_organisation_certificate(
            session,
            keystore,
            public_key=public,
            municipality_code=code,
            organisation=_organisation_name(code),
            title=ORG_TITLE,
            now=when,
            actor=ACTOR,
        )
        chosen = (issued.certificate, issued.serial)
    chain = tuple(service.ca_certificate(service.get_ca(session, ca_id)) for ca_id in (ORG_CA, ROOT_CA))
    return SigningIdentity(code, label, chosen[0], chosen[1], chain)


def sign_bytes(keystore: Any, label: str, data: bytes) -> bytes:
    """A DER ECDSA (or PKCS#1) SHA-256 signature over ``data`` by the key ``label``, made in the store.

    A PKCS#11 store signs in the token (``sign_bytes``); the file store has no byte-signing
    method, so its key object is used in this process (the same as the OCSP responder does).
    """
    from kiban.jpki.keys import FileKeyStore, KeyStoreError

    token_sign = getattr(keystore, "sign_bytes", None)
    if callable(token_sign):
        signature: bytes = token_sign(label, data)
        return signature
    if isinstance(keystore, FileKeyStore):
        key = keystore._private(label)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(data, ec.ECDSA(hashes.SHA256()))
    raise KeyStoreError("keystore", "sign_bytes", f"{type(keystore).__name__} cannot sign documents")


# --------------------------------------------------------------------------- QR payload

_B45 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
_B45_INDEX = {ch: i for i, ch in enumerate(_B45)}


def b45encode(data: bytes) -> str:
    """RFC 9285 base45: every character is in the QR alphanumeric set (5.5 bits each)."""
    out: list[str] = []
    for i in range(0, len(data) - 1, 2):
        n = data[i] * 256 + data[i + 1]
        n, c = divmod(n, 45)
        e, d = divmod(n, 45)
        out += [_B45[c], _B45[d], _B45[e]]
    if len(data) % 2:
        e, c = divmod(data[-1], 45)
        out += [_B45[c], _B45[e]]
    return "".join(out)


def b45decode(text: str) -> bytes:
    """Inverse of :func:`b45encode`; ValueError for characters or groups that base45 cannot hold."""
    try:
        values = [_B45_INDEX[ch] for ch in text]
    except KeyError as exc:
        raise ValueError(f"not a base45 character: {exc}") from None
    if len(values) % 3 == 1:
        raise ValueError("base45 length")
    out = bytearray()
    for i in range(0, len(values), 3):
        group = values[i : i + 3]
        n = sum(v * 45**k for k, v in enumerate(group))
        if len(group) == 3:
            if n > 0xFFFF:
                raise ValueError("base45 group out of range")
            out += n.to_bytes(2, "big")
        else:
            if n > 0xFF:
                raise ValueError("base45 group out of range")
            out.append(n)
    return bytes(out)


@dataclass(frozen=True)
class QrClaims:
    """What a document's QR code asserts, signed by the municipality's organisation key."""

    serial: str
    document_type: str
    content_hash: str  # hex SHA-256 of the canonical document data
    issued_on: date  # JST date of issue
    key_id: bytes  # 8 bytes: SHA-256 of the signing certificate, cut

    @property
    def municipality_code(self) -> str:
        return self.serial[:6]

    def body(self) -> bytes:
        serial = self.serial.encode("ascii")
        kind = self.document_type.encode("ascii")
        days = (self.issued_on - _EPOCH).days
        if not 0 <= days <= 0xFFFF or len(serial) > 255 or len(kind) > 255 or len(self.key_id) != 8:
            raise PdfSignError("qr_payload", "encodable", "claims do not fit the QR structure")
        return (
            bytes([QR_VERSION])
            + self.key_id
            + days.to_bytes(2, "big")
            + bytes.fromhex(self.content_hash)
            + bytes([len(serial)])
            + serial
            + bytes([len(kind)])
            + kind
        )


def _parse_body(body: bytes) -> QrClaims:
    if len(body) < 1 + 8 + 2 + 32 + 2 or body[0] != QR_VERSION:
        raise ValueError("unknown version or too short")
    kid = body[1:9]
    days = int.from_bytes(body[9:11], "big")
    digest = body[11:43].hex()
    rest = body[43:]
    n = rest[0]
    serial = rest[1 : 1 + n].decode("ascii")
    rest = rest[1 + n :]
    if not rest:
        raise ValueError("truncated")
    m = rest[0]
    kind = rest[1 : 1 + m].decode("ascii")
    if len(rest) != 1 + m or len(serial) != n:
        raise ValueError("trailing or truncated bytes")
    if not re.fullmatch(r"\d{6}-\d{4}-[0-9A-Z]{16}", serial):
        raise ValueError("not a document serial")
    return QrClaims(serial, kind, digest, _EPOCH + timedelta(days=days), kid)


def _qr_message(body: bytes) -> bytes:
    return _QR_DOMAIN + body


def make_qr_payload(keystore: Any, identity: SigningIdentity, claims: QrClaims) -> str:
    """``KQ1:`` + base45(body ‖ r ‖ s): the claims and an ES256 signature by the identity's key."""
    if claims.key_id != identity.key_id:
        raise PdfSignError("qr_payload", "key_id", "the claims name another certificate")
    body = claims.body()
    r, s = decode_dss_signature(sign_bytes(keystore, identity.key_label, _qr_message(body)))
    return QR_PREFIX + b45encode(body + r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def parse_qr(payload: str) -> tuple[QrClaims, bytes, bytes]:
    """(claims, signed message, DER signature) of a scanned payload; PdfSignError when malformed."""
    if not isinstance(payload, str) or not payload.startswith(QR_PREFIX) or len(payload) > 1000:
        raise PdfSignError("qr_payload", "format", "not a Kiban signed document QR code (KQ1:)")
    try:
        raw = b45decode(payload[len(QR_PREFIX) :])
        if len(raw) < 64:
            raise ValueError("too short")
        body, signature = raw[:-64], raw[-64:]
        claims = _parse_body(body)
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise PdfSignError("qr_payload", "format", f"malformed QR payload: {exc}") from None
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    return claims, _qr_message(body), der


def qr_signature_ok(certificate: x509.Certificate, message: bytes, signature: bytes) -> bool:
    public = certificate.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        return False
    try:
        public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


# --------------------------------------------------------------------------- placing the QR

# What kiban.core.documents.draw_qr writes: white box, module transform, one `re` per dark run.
_QR_BLOCK = re.compile(
    rb"q\n1 1 1 rg\nn (?P<x>-?[\d.]+) (?P<y>-?[\d.]+) (?P<s>[\d.]+) (?P=s) re f\*\n0 0 0 rg\n"
    rb"[-\d. ]+ cm\n(?:\d+ \d+ \d+ 1 re\n)+f\nQ"
)


def _qr_block(payload: str, x: float, y: float, size: float) -> bytes:
    """The bytes draw_qr writes for ``payload`` at (x, y, size)."""
    from reportlab.pdfgen.canvas import Canvas

    from kiban.core.documents import draw_qr

    buffer = io.BytesIO()
    canvas = Canvas(buffer, pageCompression=0, invariant=True)
    draw_qr(canvas, payload, x, y, size)
    found = _QR_BLOCK.search(canvas.getpdfdata())
    if found is None:  # pragma: no cover - draw_qr changed its output
        raise PdfSignError("pdf", "qr_drawing", "kiban.core.documents.draw_qr output not recognised")
    return found.group(0)


def _content_streams(page: Any) -> list[Any]:
    from pypdf.generic import ArrayObject

    contents = page.get("/Contents")
    if contents is None:
        return []
    contents = contents.get_object()
    if isinstance(contents, ArrayObject):
        return [item.get_object() for item in contents]
    return [contents]


def _drawn_qr(pdf: bytes) -> list[tuple[bytes, tuple[float, float, float]]]:
    """Every QR block drawn by draw_qr in the PDF, with its position."""
    from pypdf import PdfReader

    found = []
    for page in PdfReader(io.BytesIO(pdf)).pages:
        for stream in _content_streams(page):
            for match in _QR_BLOCK.finditer(stream.get_data()):
                found.append((match.group(0), (float(match["x"]), float(match["y"]), float(match["s"]))))
    return found


def _prepare(pdf: bytes, info: dict[str, str], qr_payload: str | None) -> tuple[bytes, bool]:
    """The PDF with the signed QR drawn in place of the ledger's and Kiban entries in its Info."""
    from pypdf import PdfReader, PdfWriter
    from pypdf.errors import PdfReadError
    from pypdf.generic import DecodedStreamObject

    try:
        writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise PdfSignError("pdf", "pdf", f"not a readable PDF: {exc}") from None
    replaced = 0
    if qr_payload is not None:
        for page in writer.pages:
            data = b"\n".join(stream.get_data() for stream in _content_streams(page))
            matches = list(_QR_BLOCK.finditer(data))
            for match in reversed(matches):
                block = _qr_block(qr_payload, float(match["x"]), float(match["y"]), float(match["s"]))
                data = data[: match.start()] + block + data[match.end() :]
                replaced += 1
            if matches:
                # One new Flate stream for the page (reportlab's ASCII85+Flate cannot be set in place).
                stream = DecodedStreamObject()
                stream.set_data(data)
                page.replace_contents(stream.flate_encode())
    if replaced > 1:
        raise PdfSignError("pdf", "one_qr", "the document draws more than one QR code")
    writer.add_metadata(info)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue(), replaced == 1


# --------------------------------------------------------------------------- signing


def _asn1(certificate: x509.Certificate) -> Any:
    from asn1crypto import x509 as asn1_x509

    return asn1_x509.Certificate.load(certificate.public_bytes(serialization.Encoding.DER))


def _pyhanko_signer(keystore: Any, identity: SigningIdentity) -> Any:
    from asn1crypto import algos
    from pyhanko.sign import signers
    from pyhanko_certvalidator.registry import SimpleCertificateStore

    class StoreSigner(signers.Signer):
        """pyHanko signer whose raw signature comes from the key store (token or file)."""

        async def async_sign_raw(self, data: bytes, digest_algorithm: str, dry_run: bool = False) -> bytes:
            if dry_run:
                return bytes(72)  # the longest DER ECDSA P-256 signature
            return sign_bytes(keystore, identity.key_label, data)

    return StoreSigner(
        signing_cert=_asn1(identity.certificate),
        cert_registry=SimpleCertificateStore.from_certs([_asn1(c) for c in identity.chain]),
        signature_mechanism=algos.SignedDigestAlgorithm({"algorithm": "sha256_ecdsa"}),
        embed_roots=True,
    )


def _ledger_row(session: Session, serial: str) -> Any:
    from kiban.core.models.documents import IssuedDocument

    return session.scalars(select(IssuedDocument).where(IssuedDocument.serial == serial)).one_or_none()


def sign_pdf(
    session: Session,
    keystore: Any,
    pdf_bytes: bytes,
    *,
    municipality_code: str,
    serial: str,
    now: datetime | None = None,
    require_qr: bool = False,
) -> bytes:
    """PAdES B-B certification signature (no changes allowed) by the municipality's key.

    ``serial`` must be a document of the ledger issued by ``municipality_code``. The signed QR
    payload over the ledger's (serial, hash, type, issue date) is computed here; where the PDF
    draws a QR code with :func:`kiban.core.documents.draw_qr` (every register layout does) it is
    replaced by the signed one before signing, and the payload and the ledger facts are written
    to the PDF's Info dictionary, which the signature covers. Returns the signed PDF.
    ``require_qr``: refuse (rule ``qr_placeholder``) a PDF without such a QR code to replace.
    """
    code = _check_code(municipality_code)
    if not isinstance(pdf_bytes, bytes | bytearray) or not bytes(pdf_bytes).startswith(b"%PDF-"):
        raise PdfSignError("pdf", "pdf", "not a PDF")
    row = _ledger_row(session, serial)
    if row is None:
        raise PdfSignError("serial", "known_serial", f"no document {serial!r} in the ledger")
    if row.municipality_code != code:
        raise PdfSignError("municipality_code", "issuer", "the document was issued by another municipality")
    when = now or utcnow()
    identity = signing_identity(session, keystore, code, now=when)
    claims = QrClaims(
        serial=row.serial,
        document_type=row.document_type,
        content_hash=row.content_hash,
        issued_on=row.issued_at.astimezone(JST).date(),
        key_id=identity.key_id,
    )
    payload = make_qr_payload(keystore, identity, claims)
    info = {
        INFO_SERIAL: row.serial,
        INFO_MUNICIPALITY: code,
        INFO_TYPE: row.document_type,
        INFO_HASH: row.content_hash,
        INFO_QR: payload,
    }
    prepared, drawn = _prepare(bytes(pdf_bytes), info, payload)
    if require_qr and not drawn:
        raise PdfSignError("pdf", "qr_placeholder", "the PDF draws no QR code (draw_qr) to replace")
    return _pades(keystore, identity, prepared)


def _pades(keystore: Any, identity: SigningIdentity, pdf: bytes) -> bytes:
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
    from pyhanko.sign import fields, signers

    meta = signers.PdfSignatureMetadata(
        field_name=FIELD_NAME,
        md_algorithm="sha256",
        subfilter=fields.SigSeedSubFilter.PADES,
        certify=True,
        docmdp_permissions=fields.MDPPerm.NO_CHANGES,
        reason="証明書の発行",
        location=identity.municipality_code,
        name=identity.signer_name,
    )
    signer = _pyhanko_signer(keystore, identity)

    async def go() -> bytes:
        writer = IncrementalPdfFileWriter(io.BytesIO(pdf), strict=False)
        out = await signers.PdfSigner(meta, signer=signer).async_sign_pdf(writer)
        return bytes(out.getvalue())

    return _run(go)


def qr_then_sign(session: Session, keystore: Any, issued: Any, *, now: datetime | None = None) -> bytes:
    """A register document (:class:`kiban.register.documents.IssuedPdf`) with the signed QR, signed."""
    pdf = sign_pdf(
        session,
        keystore,
        issued.pdf,
        municipality_code=issued.issuance.municipality_code,
        serial=issued.issuance.serial,
        now=now,
        require_qr=True,
    )
    return pdf


_PRINTED_SERIAL = re.compile(r"発行番号\s*(\d{6}-\d{4}-[0-9A-Z]{16})")


def printed_serial(pdf: bytes, municipality_code: str) -> str:
    """The serial a Kiban layout prints ("発行番号　212016-2026-…"); exactly one, of that municipality."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise PdfSignError("pdf", "pdf", f"not a readable PDF: {exc}") from None
    found = set(_PRINTED_SERIAL.findall(text))
    if len(found) != 1:
        raise PdfSignError("serial", "required", "the PDF prints no single 発行番号; pass the serial")
    serial = found.pop()
    if not serial.startswith(municipality_code):
        raise PdfSignError("municipality_code", "issuer", "the printed serial is another municipality's")
    return serial


def signing_finisher(session_maker: Any, keystore: Any) -> Callable[..., bytes]:
    """``finish(pdf, municipality_code, serial=None) -> signed pdf`` for a document whose ledger row
    is committed: signs in a transaction of its own (the certificate may be issued on first use)
    and, without ``serial``, takes the 発行番号 the layout printed. Refuses a PDF without the
    layout's QR code (rule ``qr_placeholder``)."""

    def finish(pdf: bytes, municipality_code: str, serial: str | None = None) -> bytes:
        number = serial or printed_serial(pdf, municipality_code)
        with session_maker.begin() as session:
            return sign_pdf(
                session, keystore, pdf, municipality_code=municipality_code, serial=number, require_qr=True
            )

    return finish


def issue_signed(
    session: Session,
    keystore: Any,
    generator: Callable[..., Any],
    request: Any,
    *,
    issued_at: datetime | None = None,
    signers: Any = None,
) -> tuple[Any, bytes]:
    """One call for a kiosk: ``generator(session, request, ...)`` (any ``kiban.register.documents
    .issue_*``) writes the ledger row and draws the PDF; the QR is replaced by the signed one and
    the PDF signed. Returns (the generator's IssuedPdf, the signed PDF bytes)."""
    issued = generator(session, request, signers=signers, issued_at=issued_at)
    return issued, qr_then_sign(session, keystore, issued, now=issued_at)


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class Problem:
    """A failed check: ``code`` is stable (tests, CLI, JSON), ``message`` explains it in Japanese."""

    code: str
    message: str


@dataclass
class VerificationResult:
    """Outcome of :func:`verify_pdf` / :func:`verify_qr`: ok only when no check failed."""

    signer: str | None = None
    municipality: str | None = None
    serial: str | None = None
    document_type: str | None = None
    issued_on: date | None = None
    online: bool = False
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def fail(self, code: str, message: str) -> None:
        self.problems.append(Problem(code, message))

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "signer": self.signer,
            "municipality": self.municipality,
            "serial": self.serial,
            "document_type": self.document_type,
            "issued_on": self.issued_on.isoformat() if self.issued_on else None,
            "online": self.online,
            "problems": [{"code": p.code, "message": p.message} for p in self.problems],
        }


def trust_roots_from_db(session: Session) -> list[x509.Certificate]:
    """The LGPKI root's certificate from the CA table (the trust anchor of document signatures)."""
    from kiban.jpki import service

    return [service.ca_certificate(service.get_ca(session, ROOT_CA))]


def _info(pdf: bytes) -> dict[str, str]:
    from pypdf import PdfReader

    meta: Any = PdfReader(io.BytesIO(pdf)).metadata or {}
    return {
        key: str(meta[key])
        for key in (INFO_SERIAL, INFO_MUNICIPALITY, INFO_TYPE, INFO_HASH, INFO_QR)
        if key in meta
    }


def _pades_status(pdf: bytes, trust_roots: Sequence[x509.Certificate], result: VerificationResult) -> Any:
    """Validate the one signature with pyHanko; record problems; return its signer certificate."""
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.sign.general import SigningError
    from pyhanko.sign.validation import async_validate_pdf_signature
    from pyhanko.sign.validation.status import SignatureCoverageLevel
    from pyhanko_certvalidator import ValidationContext

    try:
        reader = PdfFileReader(io.BytesIO(pdf), strict=False)
        signatures = reader.embedded_signatures
    except Exception as exc:  # pyHanko raises many kinds for broken files
        result.fail("not_a_pdf", f"PDFとして読めません: {type(exc).__name__}")
        return None
    if not signatures:
        result.fail("no_signature", "電子署名がありません。")
        return None
    if len(signatures) > 1:
        result.fail("several_signatures", "電子署名が複数あります。発行時の文書は署名が一つです。")
    context = ValidationContext(
        trust_roots=[_asn1(c) for c in trust_roots], allow_fetching=False, revocation_mode="soft-fail"
    )

    async def go() -> Any:
        return await async_validate_pdf_signature(signatures[0], context)

    try:
        status = _run(go)
    except (SigningError, ValueError, KeyError, TypeError) as exc:
        result.fail("signature_invalid", f"電子署名を検証できません: {type(exc).__name__}")
        return None
    except Exception as exc:  # a damaged signature value can break the CMS parser anywhere
        result.fail("signature_invalid", f"電子署名を検証できません: {type(exc).__name__}")
        return None
    if not status.intact:
        result.fail("signature_broken", "署名後に文書の内容が変更されています（ハッシュ値が一致しません）。")
    elif not status.valid:
        result.fail("signature_invalid", "電子署名の値が正しくありません。")
    if not status.trusted:
        result.fail("signer_untrusted", "署名者の証明書が組織認証局（LGPKI）のルートにつながりません。")
    if status.coverage != SignatureCoverageLevel.ENTIRE_FILE:
        result.fail("modified_after_signing", "署名の後に文書が追記・変更されています。")
    return x509.load_der_x509_certificate(status.signing_cert.dump())


def is_organisation_certificate(certificate: x509.Certificate) -> bool:
    """A 職責証明書 (organisation policy OID) naming a municipality: the only kind that signs documents.

    The same CA issues the nodes' TLS certificates; a TLS key must never pass for a municipality's.
    """
    from kiban.jpki.profiles import POLICIES

    try:
        policies = certificate.extensions.get_extension_for_class(x509.CertificatePolicies).value
    except x509.ExtensionNotFound:
        return False
    wanted = x509.ObjectIdentifier(POLICIES["organisation"])
    code = _municipality_of(certificate)
    return any(p.policy_identifier == wanted for p in policies) and bool(code and len(code) == 6)


def _check_claims(
    result: VerificationResult,
    claims: QrClaims,
    message: bytes,
    signature: bytes,
    certificate: x509.Certificate,
) -> None:
    if claims.key_id != key_id(certificate):
        result.fail("qr_signer_mismatch", "二次元コードは別の鍵で署名されています。")
    elif not qr_signature_ok(certificate, message, signature):
        result.fail("qr_signature_invalid", "二次元コードの署名が正しくありません（改ざんの可能性）。")
    if _municipality_of(certificate) != claims.municipality_code:
        result.fail("qr_municipality_mismatch", "二次元コードの発行団体と署名者の団体が一致しません。")


def _check_online(
    session: Session,
    result: VerificationResult,
    claims: QrClaims | None,
    certificate: x509.Certificate | None,
) -> None:
    from kiban.jpki import service
    from kiban.jpki.service import CaError

    result.online = True
    if claims is not None:
        row = _ledger_row(session, claims.serial)
        if row is None:
            result.fail("unknown_serial", "この発行番号の証明書は交付台帳にありません。")
        elif (
            row.content_hash != claims.content_hash
            or row.document_type != claims.document_type
            or row.municipality_code != claims.municipality_code
            or row.issued_at.astimezone(JST).date() != claims.issued_on
        ):
            result.fail("ledger_mismatch", "交付台帳の記録（内容のハッシュ値・種類・発行日）と一致しません。")
    if certificate is not None:
        try:
            cert_row = service.find_certificate(session, certificate.serial_number, ca_id=ORG_CA)
        except CaError:
            result.fail("signer_certificate_unknown", "署名者の証明書は組織認証局の発行記録にありません。")
            return
        if cert_row.status != "good":
            result.fail(
                "signer_certificate_revoked",
                f"署名者の証明書は失効または一時停止されています（{cert_row.reason or cert_row.status}）。",
            )


def verify_pdf(
    pdf_bytes: bytes,
    *,
    trust_roots: Sequence[x509.Certificate],
    online_session: Session | None = None,
) -> VerificationResult:
    """Check a signed document offline (and online when a session is given).

    Offline: the PAdES signature with pyHanko's validator against ``trust_roots`` (intact,
    valid, trusted, covering the whole file), the signer being an organisation certificate, the
    signed QR payload (present, well formed, signed by the same certificate, about this PDF's
    serial, hash, type and municipality) and that the QR drawn on the page is that payload.
    Online: the ledger knows the serial with the same hash, type and date, and the signer's
    certificate is good in the organisation CA.
    """
    result = VerificationResult()
    if not isinstance(pdf_bytes, bytes | bytearray) or not bytes(pdf_bytes[:1024]).lstrip().startswith(
        b"%PDF-"
    ):
        result.fail("not_a_pdf", "PDFファイルではありません。")
        return result
    pdf = bytes(pdf_bytes)
    certificate = _pades_status(pdf, trust_roots, result)
    if certificate is None:
        return result
    result.signer = _signer_name(certificate)
    result.municipality = _municipality_of(certificate)
    if not is_organisation_certificate(certificate):
        result.fail("signer_not_organisation", "署名者の証明書は市区町村の職責証明書ではありません。")
    try:
        info = _info(pdf)
    except Exception:  # a damaged PDF the signature check already named
        info = {}
    result.serial = info.get(INFO_SERIAL)
    claims: QrClaims | None = None
    if INFO_QR not in info:
        result.fail("qr_missing", "署名付き二次元コードがありません。")
    else:
        try:
            claims, message, signature = parse_qr(info[INFO_QR])
        except PdfSignError:
            result.fail("qr_malformed", "二次元コードの形式が正しくありません。")
        if claims is not None:
            result.document_type = claims.document_type
            result.issued_on = claims.issued_on
            _check_claims(result, claims, message, signature, certificate)
            if claims.serial != info.get(INFO_SERIAL):
                result.fail(
                    "qr_serial_mismatch", "二次元コードの発行番号がこの文書の発行番号と一致しません。"
                )
            if (
                claims.content_hash != info.get(INFO_HASH)
                or claims.document_type != info.get(INFO_TYPE)
                or claims.municipality_code != info.get(INFO_MUNICIPALITY)
            ):
                result.fail(
                    "qr_document_mismatch",
                    "二次元コードが別の文書のものです（内容のハッシュ値が一致しません）。",
                )
            if info.get(INFO_MUNICIPALITY) != result.municipality:
                result.fail("qr_municipality_mismatch", "文書の発行団体と署名者の団体が一致しません。")
            try:
                drawn = _drawn_qr(pdf)
            except Exception:  # a damaged page stream (already named by the signature check)
                drawn = []
            if len(drawn) != 1 or drawn[0][0] != _qr_block(info[INFO_QR], *drawn[0][1]):
                result.fail("qr_not_drawn", "印刷される二次元コードが署名付きのものと一致しません。")
    if online_session is not None:
        _check_online(online_session, result, claims, certificate)
    return result


def verify_qr(
    payload: str, *, session: Session, trust_roots: Sequence[x509.Certificate] | None = None
) -> VerificationResult:
    """Check a scanned QR payload online: its signature by a certificate of the organisation CA
    (found by the key id among the municipality's), the chain to the root, and the ledger."""
    from kiban.jpki.models import Certificate

    result = VerificationResult()
    try:
        claims, message, signature = parse_qr(payload)
    except PdfSignError:
        result.fail("qr_malformed", "二次元コードの形式が正しくありません。")
        return result
    result.serial = claims.serial
    result.document_type = claims.document_type
    result.issued_on = claims.issued_on
    result.municipality = claims.municipality_code
    rows = session.scalars(
        select(Certificate).where(
            Certificate.ca_id == ORG_CA,
            Certificate.kind == "organisation",
            Certificate.subject_id.like(f"{claims.municipality_code}:%"),
        )
    )
    certificate = next(
        (c for c in (x509.load_der_x509_certificate(r.der) for r in rows) if key_id(c) == claims.key_id), None
    )
    if certificate is None:
        result.fail("qr_signer_mismatch", "二次元コードは発行団体の証明書で署名されていません。")
        _check_online(session, result, claims, None)
        return result
    result.signer = _signer_name(certificate)
    _check_claims(result, claims, message, signature, certificate)
    roots = list(trust_roots) if trust_roots is not None else trust_roots_from_db(session)
    if not _chains_to(session, certificate, roots):
        result.fail("signer_untrusted", "署名者の証明書が組織認証局（LGPKI）のルートにつながりません。")
    _check_online(session, result, claims, certificate)
    return result


def _chains_to(session: Session, certificate: x509.Certificate, roots: Sequence[x509.Certificate]) -> bool:
    from kiban.jpki import service

    issuer = service.ca_certificate(service.get_ca(session, ORG_CA))
    try:
        certificate.verify_directly_issued_by(issuer)
        return any(_verify_issued(issuer, root) for root in roots)
    except (ValueError, TypeError, InvalidSignature):
        return False


def _verify_issued(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
