"""Issued documents, shared by every capability that prints one (register, kiosk, disaster).

Three parts:

- **Ledger and verification.** :func:`issue` gives a document a serial (municipality code + year
  + 80 random bits), hashes its *canonical data* (RFC 8785 JSON of exactly what is printed),
  computes a verification code over (serial, hash, type, municipality) with the municipality's
  :class:`Signer`, and writes an :class:`~kiban.core.models.documents.IssuedDocument` row.
  :func:`verify_document` checks a (serial, hash, code) triple read from a document or its QR.
  The hash is over the data, not the PDF bytes, so it is reproducible from the document's
  content and the code can be printed on the very PDF it protects.
- **Signers.** Today an HMAC-SHA256 key per municipality in ``data_dir/keys``
  (:class:`HmacSigner`); the kiosk issue replaces it with a signature by the municipality's
  organisation certificate (SPEC K6, K8) by plugging in another :class:`Signer`.
- **PDF building blocks** on reportlab: the embedded Japanese font (IPAex Mincho, TrueType, so
  reportlab subsets and embeds it), glyph-coverage checks, a QR code drawn as vectors.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import rfc8785
import segno
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas
from sqlalchemy import select
from sqlalchemy.orm import Session

from kiban.core.database import utcnow
from kiban.core.models.documents import IssuedDocument


class DocumentError(ValueError):
    """Bad input to a document: names the field and the rule it broke."""

    def __init__(self, field: str, rule: str, message: str) -> None:
        super().__init__(f"{field}: {message} (rule: {rule})")
        self.field = field
        self.rule = rule


class FontMissingError(RuntimeError):
    """The Japanese font is not installed; documents cannot be printed without it."""


# --------------------------------------------------------------------------- signers


@runtime_checkable
class Signer(Protocol):
    """Makes and checks the verification code of a municipality's documents."""

    @property
    def signer_id(self) -> str:
        """Names the key (stored in the ledger, so that rotated keys still verify)."""
        ...

    def sign(self, message: bytes) -> bytes: ...

    def verify(self, message: bytes, signature: bytes) -> bool: ...


class HmacSigner:
    """HMAC-SHA256 with a per-municipality secret: verifiable only by the municipality itself.

    Placeholder for the organisation-certificate signature of the kiosk issue (offline
    verification by anyone with the public certificate). The MAC is cut to 160 bits, enough
    against forgery and short enough to print and type.
    """

    MAC_BYTES = 20

    def __init__(self, municipality_code: str, key: bytes) -> None:
        if len(key) < 32:
            raise DocumentError("key", "min_length", "an HMAC key needs at least 32 bytes")
        self._key = key
        self._id = f"hmac-sha256:{municipality_code}:{hashlib.sha256(key).hexdigest()[:8]}"

    @property
    def signer_id(self) -> str:
        return self._id

    def sign(self, message: bytes) -> bytes:
        return hmac.new(self._key, message, hashlib.sha256).digest()[: self.MAC_BYTES]

    def verify(self, message: bytes, signature: bytes) -> bool:
        return hmac.compare_digest(self.sign(message), signature)


SignerProvider = Callable[[str], Signer]
"""Gives the signer of a municipality code."""


class KeyDirectorySigners:
    """HMAC signers whose keys live in ``keys_dir/document-hmac-<code>.key`` (made on first use)."""

    def __init__(self, keys_dir: Path | str) -> None:
        self.keys_dir = Path(keys_dir)
        self._cache: dict[str, HmacSigner] = {}
        self._lock = threading.Lock()

    def __call__(self, municipality_code: str) -> Signer:
        _check_municipality_code(municipality_code)
        with self._lock:
            signer = self._cache.get(municipality_code)
            if signer is None:
                signer = HmacSigner(municipality_code, self._load_or_create(municipality_code))
                self._cache[municipality_code] = signer
            return signer

    def _load_or_create(self, municipality_code: str) -> bytes:
        path = self.keys_dir / f"document-hmac-{municipality_code}.key"
        if not path.exists():
            self.keys_dir.mkdir(parents=True, exist_ok=True)
            # O_EXCL: two processes creating the key at once must not end up with two keys.
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(secrets.token_bytes(32))
        return path.read_bytes()


def default_signers() -> SignerProvider:
    """Signers from the configured data directory (``KIBAN_DATA_DIR``)."""
    from kiban.core.config import load_settings

    return KeyDirectorySigners(load_settings().keys_dir)


# --------------------------------------------------------------------------- ledger

_SERIAL_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U


def _check_municipality_code(code: object) -> None:
    if not isinstance(code, str) or len(code) != 6 or not code.isascii() or not code.isdigit():
        raise DocumentError("municipality_code", "six_digits", f"{code!r} is not a 6-digit code")


def new_serial(municipality_code: str, issued_at: datetime) -> str:
    """ "212016-2026-7K3M9QXR2P4TZA5B": municipality, year, 80 random bits (not guessable)."""
    _check_municipality_code(municipality_code)
    value = secrets.randbits(80)
    chars = "".join(_SERIAL_ALPHABET[(value >> (5 * i)) & 31] for i in range(16))
    return f"{municipality_code}-{issued_at.year:04d}-{chars}"


def canonical_bytes(data: Mapping[str, Any]) -> bytes:
    """The document's data as RFC 8785 canonical JSON (stable key order, number and string forms)."""
    try:
        return rfc8785.dumps(data)
    except Exception as exc:  # rfc8785 raises its own errors for floats out of range, bad types
        raise DocumentError("data", "canonical_json", f"document data is not JSON: {exc}") from exc


def content_hash(data: Mapping[str, Any]) -> str:
    """Hex SHA-256 of :func:`canonical_bytes`: what the verification code protects."""
    return hashlib.sha256(canonical_bytes(data)).hexdigest()


def _signed_message(serial: str, digest: str, document_type: str, municipality_code: str) -> bytes:
    return "\n".join(("kiban-document-v1", serial, digest, document_type, municipality_code)).encode()


def format_code(signature: bytes) -> str:
    """Base32 in groups of four, as printed: "ABCD-EFGH-…"."""
    text = base64.b32encode(signature).decode().rstrip("=")
    return "-".join(text[i : i + 4] for i in range(0, len(text), 4))


def parse_code(code: str) -> bytes | None:
    """Bytes of a printed code (dashes, spaces and case ignored); None when not base32."""
    text = "".join(ch for ch in code.upper() if ch not in "- \u3000")
    # Base32 has no 0, 1 or 8: read them as the letters people mistake them for.
    text = text.translate(str.maketrans("018", "OIB"))
    try:
        return base64.b32decode(text + "=" * (-len(text) % 8))
    except (ValueError, binascii.Error):
        return None


@dataclass(frozen=True, slots=True)
class Issuance:
    """What a document prints to be verifiable: serial, content hash and code."""

    serial: str
    document_type: str
    municipality_code: str
    content_hash: str
    verification_code: str
    issued_at: datetime

    @property
    def qr_payload(self) -> str:
        """Text of the QR code: what :func:`verify_document` needs, nothing personal.

        Only characters of the QR alphanumeric mode (upper case, digits, ``-/``), which packs
        them in 5.5 bits each: a smaller code than bytes would give.
        """
        return "/".join(("KIBAN1", self.serial, self.content_hash.upper(), self.verification_code))


def parse_qr_payload(payload: str) -> tuple[str, str, str]:
    """(serial, content hash, code) from a scanned QR payload."""
    parts = payload.split("/")
    if len(parts) != 4 or parts[0] != "KIBAN1":
        raise DocumentError("qr_payload", "format", "not a Kiban document QR code")
    return parts[1], parts[2].lower(), parts[3]


def issue(
    session: Session,
    *,
    document_type: str,
    municipality_code: str,
    data: Mapping[str, Any],
    issuer: str,
    subject_resident_code: str | None = None,
    signers: SignerProvider | None = None,
    issued_at: datetime | None = None,
) -> Issuance:
    """Record a document about to be printed and return its serial, hash and verification code."""
    _check_municipality_code(municipality_code)
    if not isinstance(document_type, str) or not document_type or len(document_type) > 40:
        raise DocumentError("document_type", "length", "a document type of 1 to 40 characters is required")
    if not isinstance(issuer, str) or not issuer.strip():
        raise DocumentError("issuer", "required", "who issues the document must be recorded")
    if subject_resident_code is not None and (
        not isinstance(subject_resident_code, str)
        or len(subject_resident_code) != 11
        or not (subject_resident_code.isascii() and subject_resident_code.isdigit())
    ):
        raise DocumentError("subject_resident_code", "eleven_digits", "a 住民票コード has 11 digits")
    when = issued_at or utcnow()
    if when.tzinfo is None:
        raise DocumentError("issued_at", "timezone", "issued_at must be timezone-aware")
    digest = content_hash(data)
    serial = new_serial(municipality_code, when)
    signer = (signers or default_signers())(municipality_code)
    code = format_code(signer.sign(_signed_message(serial, digest, document_type, municipality_code)))
    session.add(
        IssuedDocument(
            serial=serial,
            document_type=document_type,
            municipality_code=municipality_code,
            subject_resident_code=subject_resident_code,
            content_hash=digest,
            verification_code=code,
            signer_id=signer.signer_id,
            issuer=issuer,
            issued_at=when,
        )
    )
    session.flush()
    return Issuance(serial, document_type, municipality_code, digest, code, when)


@dataclass(frozen=True, slots=True)
class VerificationResult:
    """Outcome of :func:`verify_document`; ``reason`` is one of valid, unknown_serial, hash_mismatch,
    bad_code, signer_changed."""

    valid: bool
    reason: str
    document_type: str | None = None
    municipality_code: str | None = None
    issued_at: datetime | None = None


def verify_document(
    session: Session,
    serial: str,
    content_hash: str,
    code: str,
    *,
    signers: SignerProvider | None = None,
) -> VerificationResult:
    """Is (serial, hash, code) a document this deployment issued, unchanged?

    Checks the ledger row (the serial exists, the hash is the one issued) and the code (a valid
    MAC/signature over the ledger's own type and municipality, so a code copied from another
    document fails).
    """
    row = session.scalars(select(IssuedDocument).where(IssuedDocument.serial == serial)).one_or_none()
    if row is None:
        return VerificationResult(False, "unknown_serial")

    def result(valid: bool, reason: str) -> VerificationResult:
        return VerificationResult(valid, reason, row.document_type, row.municipality_code, row.issued_at)

    if not hmac.compare_digest(row.content_hash, content_hash.lower()):
        return result(False, "hash_mismatch")
    signature = parse_code(code)
    signer = (signers or default_signers())(row.municipality_code)
    message = _signed_message(row.serial, row.content_hash, row.document_type, row.municipality_code)
    if signature is None or not signer.verify(message, signature):
        return result(False, "bad_code")
    if signer.signer_id != row.signer_id:
        # The key was rotated or replaced: the code matched anyway, but say so.
        return result(False, "signer_changed")
    return result(True, "valid")


# --------------------------------------------------------------------------- fonts

FONT_NAME = "IPAexMincho"
FONT_PACKAGE = "fonts-ipaexfont-mincho"
FONT_CANDIDATES = (
    Path("/usr/share/fonts/opentype/ipaexfont-mincho/ipaexm.ttf"),  # Debian fonts-ipaexfont-mincho
    Path("/usr/share/fonts/truetype/ipaexfont-mincho/ipaexm.ttf"),
    Path("/usr/share/fonts/ipaexfont-mincho/ipaexm.ttf"),
)
_VARIATION_SELECTORS = frozenset(range(0xFE00, 0xFE10)) | frozenset(range(0xE0100, 0xE01F0))
FALLBACK_FONT_NAME = "IPAmjMincho"
FALLBACK_PACKAGE = "fonts-ipamj-mincho"
FALLBACK_CANDIDATES = (Path("/usr/share/fonts/truetype/ipamj/ipamjm.ttf"),)
QR_MASK = 2  # fixed: see draw_qr
_font_lock = threading.Lock()
_font: TTFont | None = None
_fallback: TTFont | None = None
_fallback_loaded = False


def font_path() -> Path:
    """Where the font is: ``KIBAN_DOCUMENT_FONT`` if set, else the Debian package's file."""
    override = os.environ.get("KIBAN_DOCUMENT_FONT")
    if override:
        path = Path(override)
        if not path.is_file():
            raise FontMissingError(f"KIBAN_DOCUMENT_FONT={override} is not a file")
        return path
    for path in FONT_CANDIDATES:
        if path.is_file():
            return path
    raise FontMissingError(
        f"the Japanese font IPAex Mincho (ipaexm.ttf) was not found; install the Debian package "
        f"{FONT_PACKAGE} (apt-get install {FONT_PACKAGE}) or set KIBAN_DOCUMENT_FONT to a TrueType "
        "(glyf) Japanese font"
    )


def document_font() -> TTFont:
    """The registered reportlab font (loaded once per process; subset into each PDF)."""
    global _font
    with _font_lock:
        if _font is None:
            font = TTFont(FONT_NAME, str(font_path()))
            pdfmetrics.registerFont(font)
            _font = font
        return _font


def fallback_font() -> TTFont | None:
    """IPAmj明朝 (Debian ``fonts-ipamj-mincho``, ~58,000 MJ glyphs) when installed, else None.

    Used only for characters IPAex lacks (e.g. 𠮷 U+20BB7), so it is subset into a PDF only
    when such a name is printed. ``KIBAN_DOCUMENT_FALLBACK_FONT`` names another file; set to
    an empty string it disables the fallback.
    """
    global _fallback, _fallback_loaded
    with _font_lock:
        if not _fallback_loaded:
            override = os.environ.get("KIBAN_DOCUMENT_FALLBACK_FONT")
            paths = [Path(override)] if override else ([] if override == "" else list(FALLBACK_CANDIDATES))
            path = next((p for p in paths if p.is_file()), None)
            if path is not None:
                font = TTFont(FALLBACK_FONT_NAME, str(path))
                pdfmetrics.registerFont(font)
                _fallback = font
            _fallback_loaded = True
        return _fallback


def _maps() -> tuple[dict[int, int], dict[int, int]]:
    primary = document_font().face.charToGlyph
    fallback = fallback_font()
    return primary, (fallback.face.charToGlyph if fallback is not None else {})


def missing_glyphs(text: str) -> tuple[str, ...]:
    """Characters of ``text`` that neither font can draw (each once, in order of appearance).

    Variation selectors are not listed: neither font's IVS table is used (reportlab maps
    characters, not sequences), so they are dropped when drawing and the base character's
    usual glyph is printed (see :func:`drawable`).
    """
    primary, fallback = _maps()
    seen: dict[str, None] = {}
    for ch in text:
        code = ord(ch)
        if code in _VARIATION_SELECTORS or code in primary or code in fallback or ch in "\n\r\t":
            continue
        seen.setdefault(ch, None)
    return tuple(seen)


def drawable(text: str) -> str:
    """``text`` without variation selectors (they have no glyph; the base character is drawn)."""
    if not any(ord(ch) in _VARIATION_SELECTORS for ch in text):
        return text
    return "".join(ch for ch in text if ord(ch) not in _VARIATION_SELECTORS)


def font_runs(text: str) -> list[tuple[str, str]]:
    """``text`` (variation selectors dropped) cut into (font name, run) pieces.

    IPAex where it has the glyph, else the fallback font where it has it, else IPAex (which
    prints its empty box: :func:`missing_glyphs` reports those).
    """
    text = drawable(text)
    primary, fallback = _maps()
    if all(ord(ch) in primary for ch in text):  # the usual case: one run
        return [(FONT_NAME, text)]
    runs: list[tuple[str, str]] = []
    for ch in text:
        code = ord(ch)
        name = FALLBACK_FONT_NAME if code not in primary and code in fallback else FONT_NAME
        if runs and runs[-1][0] == name:
            runs[-1] = (name, runs[-1][1] + ch)
        else:
            runs.append((name, ch))
    return runs


def draw_text(canvas: Canvas, x: float, y: float, text: str, size: float, align: str = "left") -> None:
    """Draw ``text`` at (x, y) in the document font, switching to the fallback for missing glyphs.

    ``align`` is "left", "centre" or "right" (x is then the centre or the right edge).
    """
    runs = font_runs(text)
    if align != "left":
        width = sum(pdfmetrics.stringWidth(run, name, size) for name, run in runs)
        x -= width / 2 if align == "centre" else width
    for name, run in runs:
        canvas.setFont(name, size)
        canvas.drawString(x, y, run)
        if len(runs) > 1:
            x += pdfmetrics.stringWidth(run, name, size)


# --------------------------------------------------------------------------- drawing


def draw_qr(canvas: Canvas, payload: str, x: float, y: float, size: float) -> None:
    """A QR code (error correction M) as filled rectangles, ``size`` points wide, lower-left at (x, y).

    Vectors rather than an image: sharp at any print resolution. For speed (the QR was most of a
    document's time): a fixed mask pattern (any of the eight is valid; the search for the "best"
    one only helps damaged prints a little), and one rectangle per run of dark modules written
    directly in module units under a scaling transform.
    """
    qr = segno.make(payload, error="m", micro=False, mask=QR_MASK, boost_error=False)
    matrix = qr.matrix
    count = len(matrix)
    module = size / (count + 8)  # 4-module quiet zone on each side
    canvas.saveState()
    canvas.setFillColorRGB(1, 1, 1)
    canvas.rect(x, y, size, size, stroke=0, fill=1)
    canvas.setFillColorRGB(0, 0, 0)
    canvas.translate(x + 4 * module, y + size - 4 * module)
    canvas.scale(module, -module)  # row 0 at the top, one unit per module
    runs: list[str] = []
    for row_index, row in enumerate(matrix):
        col = 0
        while col < count:
            if row[col]:
                start = col
                while col < count and row[col]:
                    col += 1
                runs.append(f"{start} {row_index} {col - start} 1 re")
            else:
                col += 1
    canvas.addLiteral("\n".join(runs) + "\nf")
    canvas.restoreState()


@dataclass
class PdfText:
    """Collects every string drawn, so that callers can learn which characters the font lacks."""

    drawn: list[str] = field(default_factory=list)

    def add(self, text: str) -> str:
        self.drawn.append(text)
        return text

    def missing(self) -> tuple[str, ...]:
        return missing_glyphs("".join(self.drawn))
