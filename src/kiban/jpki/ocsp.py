"""The OCSP responder of the JPKI analogue (RFC 6960; 失効情報の提供, SPEC K5).

Three layers:

* **DER** — a strict reader of OCSP requests (several CertIDs, nonce) and a writer of responses.
  ``cryptography``'s OCSP API reads only one CertID per request and builds one SingleResponse per
  response; both limits are below what RFC 6960 allows, and writing the few structures ourselves
  also makes pre-signing cheap.
* **Signers and pre-signed responses** (database) — each issuing CA has a delegated responder key
  (:class:`~kiban.jpki.models.OcspSigner`, P-256, in the same key store as the CA keys) certified
  by :func:`kiban.jpki.service.issue_ocsp_signer_certificate`. Every certificate has a stored
  response per CertID hash (SHA-1 and SHA-256), refreshed on every status change (the
  ``jpki.certificate_status_changed`` handler) and re-signed before nextUpdate
  (:func:`refresh_responses`). The CA key is needed only to certify a new responder key.
* **Serving** (:class:`OcspResponder`) — a raw ASGI handler: request → (issuer key hash, serial) →
  stored DER from an in-process cache, invalidated by polling ``refreshed_at``. A nonce, several
  CertIDs or an unknown serial make a fresh signature with the delegated key.

The decisions (limits, error statuses, rate limits) are in docs/jpki.md, "OCSP responder".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import secrets
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote_to_bytes

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from sqlalchemy import and_, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from kiban.jpki import service
from kiban.jpki.keys import FileKeyStore, KeyStore, KeyStoreError
from kiban.jpki.models import Certificate, CertificateAuthority, OcspResponse, OcspSigner

LOG = logging.getLogger("kiban.jpki.ocsp")

# --- limits and lifetimes (docs/jpki.md "OCSP responder") ------------------------------------------

MAX_REQUEST_BYTES = 8 * 1024  # ten CertIDs, a nonce and even a signature fit in far less
MAX_CERT_IDS = 10
MAX_NONCE_OCTETS = 32  # RFC 8954 §2.1
RESPONSE_VALIDITY = timedelta(hours=24)  # nextUpdate - thisUpdate, as the daily CRL
REFRESH_AHEAD = timedelta(hours=8)  # re-sign when less than this is left
SIGNER_DAYS = service.OCSP_SIGNER_DAYS
SIGNER_ROTATE_BEFORE = timedelta(days=7)
SIGNER_ALGORITHM = "p256"  # ~48,000 signatures/s per core: pre-signing stays cheap whatever the CA key
HTTP_MAX_AGE = 300  # seconds a GET answer may be cached by HTTP caches (status changes must show)
UNKNOWN_TTL = 30.0  # seconds an "unknown" answer is kept in memory
POLL_INTERVAL = 1.0
REFRESH_INTERVAL = 600.0
USAGE_FLUSH_INTERVAL = 10.0  # seconds between writes of per-verifier counts

MEDIA_REQUEST = "application/ocsp-request"
MEDIA_RESPONSE = "application/ocsp-response"

# OCSPResponseStatus (RFC 6960 §4.2.1)
SUCCESSFUL, MALFORMED_REQUEST, INTERNAL_ERROR, TRY_LATER, SIG_REQUIRED, UNAUTHORIZED = 0, 1, 2, 3, 5, 6
STATUS_NAMES = {
    MALFORMED_REQUEST: "malformedRequest",
    INTERNAL_ERROR: "internalError",
    TRY_LATER: "tryLater",
    SIG_REQUIRED: "sigRequired",
    UNAUTHORIZED: "unauthorized",
}

REASON_CODES = {
    "unspecified": 0,
    "keyCompromise": 1,
    "cACompromise": 2,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
    "certificateHold": 6,
    "removeFromCRL": 8,
    "privilegeWithdrawn": 9,
    "aACompromise": 10,
}

# OID contents (without tag and length)
_OID_SHA1 = bytes.fromhex("2b0e03021a")
_OID_SHA256 = bytes.fromhex("608648016503040201")
_OID_NONCE = bytes.fromhex("2b0601050507300102")  # 1.3.6.1.5.5.7.48.1.2
_OID_BASIC = bytes.fromhex("2b0601050507300101")  # 1.3.6.1.5.5.7.48.1.1
HASHES: dict[bytes, str] = {_OID_SHA1: "sha1", _OID_SHA256: "sha256"}
_ALG_DER = {
    "sha1": bytes.fromhex("300906052b0e03021a0500"),
    "sha256": bytes.fromhex("300d06096086480165030402010500"),
}
_SIG_ALG_DER = {
    "rsa2048": bytes.fromhex("300d06092a864886f70d01010b0500"),
    "p256": bytes.fromhex("300a06082a8648ce3d040302"),
}


class OcspError(Exception):
    """A request answered with an unsuccessful OCSPResponseStatus (no signature)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{STATUS_NAMES.get(status, status)}: {detail}")
        self.status = status
        self.detail = detail


# --- DER --------------------------------------------------------------------------------------------


def _len(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes((tag,)) + _len(len(body)) + body


def _integer(value: int) -> bytes:
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def _gentime(moment: datetime) -> bytes:
    return _tlv(0x18, moment.astimezone(UTC).strftime("%Y%m%d%H%M%SZ").encode())


def _read(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """One DER TLV at ``pos``: (tag, content start, content end). Raises ValueError."""
    if pos + 2 > end:
        raise ValueError("truncated")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise ValueError("high tag numbers are not used in OCSP")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 3 or pos + count > end:
            raise ValueError("bad length")
        length = int.from_bytes(data[pos : pos + count], "big")
        if length < 0x80 or data[pos] == 0:
            raise ValueError("length not in DER form")
        pos += count
    if pos + length > end:
        raise ValueError("truncated")
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """The TLVs inside [start, end): (tag, element start, content start, content end)."""
    out = []
    pos = start
    while pos < end:
        tag, c0, c1 = _read(data, pos, end)
        out.append((tag, pos, c0, c1))
        pos = c1
    return out


@dataclass(frozen=True)
class CertId:
    """One CertID of a request: which hash, the issuer's name and key hashes, the serial."""

    hash_name: str | None  # sha1 / sha256, None for a hash we do not support
    name_hash: bytes
    key_hash: bytes
    serial: int
    der: bytes  # as the client sent it: echoed in a freshly signed response


@dataclass(frozen=True)
class ParsedRequest:
    cert_ids: tuple[CertId, ...]
    nonce_value: bytes | None  # the nonce extension's extnValue contents, echoed verbatim


def parse_request(data: bytes) -> ParsedRequest:
    """Parse a DER OCSPRequest strictly; :class:`OcspError` (malformedRequest) on anything wrong."""
    if not data:
        raise OcspError(MALFORMED_REQUEST, "empty request")
    if len(data) > MAX_REQUEST_BYTES:
        raise OcspError(MALFORMED_REQUEST, f"request over {MAX_REQUEST_BYTES} bytes")
    try:
        return _parse_request(data)
    except (ValueError, IndexError) as error:
        raise OcspError(MALFORMED_REQUEST, f"not a DER OCSPRequest ({error})") from None


def _parse_request(data: bytes) -> ParsedRequest:
    tag, c0, c1 = _read(data, 0, len(data))
    if tag != 0x30 or c1 != len(data):
        raise ValueError("OCSPRequest must be one SEQUENCE")
    outer = _children(data, c0, c1)
    if not outer or outer[0][0] != 0x30 or len(outer) > 2 or (len(outer) == 2 and outer[1][0] != 0xA0):
        raise ValueError("OCSPRequest ::= SEQUENCE { tbsRequest, [0] signature OPTIONAL }")
    _, _, t0, t1 = outer[0]
    parts = _children(data, t0, t1)
    index = 0
    if index < len(parts) and parts[index][0] == 0xA0:  # version [0] EXPLICIT INTEGER
        inner = _children(data, parts[index][2], parts[index][3])
        if len(inner) != 1 or inner[0][0] != 0x02 or data[inner[0][2] : inner[0][3]] != b"\x00":
            raise ValueError("only version v1 is known")
        index += 1
    if index < len(parts) and parts[index][0] == 0xA1:  # requestorName: not used
        index += 1
    if index >= len(parts) or parts[index][0] != 0x30:
        raise ValueError("requestList missing")
    requests = _children(data, parts[index][2], parts[index][3])
    index += 1
    nonce: bytes | None = None
    if index < len(parts) and parts[index][0] == 0xA2:
        nonce = _parse_extensions(data, parts[index][2], parts[index][3])
        index += 1
    if index != len(parts):
        raise ValueError("unexpected element in TBSRequest")
    if not requests:
        raise ValueError("requestList is empty")
    if len(requests) > MAX_CERT_IDS:
        raise OcspError(MALFORMED_REQUEST, f"at most {MAX_CERT_IDS} certificates per request")
    cert_ids = []
    for tag, _, r0, r1 in requests:
        if tag != 0x30:
            raise ValueError("Request must be a SEQUENCE")
        items = _children(data, r0, r1)
        if not items or items[0][0] != 0x30 or len(items) > 2 or (len(items) == 2 and items[1][0] != 0xA0):
            raise ValueError("Request ::= SEQUENCE { reqCert, [0] extensions OPTIONAL }")
        if len(items) == 2:
            _parse_extensions(data, items[1][2], items[1][3])  # critical unknown ones are refused
        cert_ids.append(_parse_cert_id(data, items[0][1], items[0][2], items[0][3]))
    return ParsedRequest(tuple(cert_ids), nonce)


def _parse_cert_id(data: bytes, start: int, c0: int, c1: int) -> CertId:
    fields = _children(data, c0, c1)
    if [f[0] for f in fields] != [0x30, 0x04, 0x04, 0x02]:
        raise ValueError("CertID ::= SEQUENCE { AlgorithmIdentifier, OCTET STRING, OCTET STRING, INTEGER }")
    alg = _children(data, fields[0][2], fields[0][3])
    if (
        not alg
        or alg[0][0] != 0x06
        or len(alg) > 2
        or (len(alg) == 2 and data[alg[1][1] : alg[1][3]] != b"\x05\x00")
    ):
        raise ValueError("bad hashAlgorithm")
    oid = data[alg[0][2] : alg[0][3]]
    serial_bytes = data[fields[3][2] : fields[3][3]]
    if not serial_bytes:
        raise ValueError("empty serialNumber")
    if len(serial_bytes) > 1 and (
        (serial_bytes[0] == 0 and serial_bytes[1] < 0x80)
        or (serial_bytes[0] == 0xFF and serial_bytes[1] >= 0x80)
    ):
        # Not DER; and the CertID is echoed in a fresh response, which must be DER.
        raise ValueError("serialNumber is not minimally encoded")
    hash_name = HASHES.get(oid)
    name_hash = data[fields[1][2] : fields[1][3]]
    key_hash = data[fields[2][2] : fields[2][3]]
    if hash_name is not None:
        size = 20 if hash_name == "sha1" else 32
        if len(name_hash) != size or len(key_hash) != size:
            raise ValueError(f"{hash_name} hashes are {size} octets")
    return CertId(
        hash_name, name_hash, key_hash, int.from_bytes(serial_bytes, "big", signed=True), data[start:c1]
    )


def _parse_extensions(data: bytes, c0: int, c1: int) -> bytes | None:
    """Extensions inside an EXPLICIT tag; returns the nonce's extnValue contents if any."""
    seq = _children(data, c0, c1)
    if len(seq) != 1 or seq[0][0] != 0x30:
        raise ValueError("Extensions must be a SEQUENCE")
    nonce = None
    for tag, _, e0, e1 in _children(data, seq[0][2], seq[0][3]):
        if tag != 0x30:
            raise ValueError("Extension must be a SEQUENCE")
        parts = _children(data, e0, e1)
        if len(parts) not in (2, 3) or parts[0][0] != 0x06 or parts[-1][0] != 0x04:
            raise ValueError("Extension ::= SEQUENCE { OID, BOOLEAN DEFAULT FALSE, OCTET STRING }")
        critical = len(parts) == 3 and parts[1][0] == 0x01 and data[parts[1][2] : parts[1][3]] != b"\x00"
        oid = data[parts[0][2] : parts[0][3]]
        value = data[parts[-1][2] : parts[-1][3]]
        if oid == _OID_NONCE:
            nonce = _check_nonce(value)
        elif critical:
            raise OcspError(MALFORMED_REQUEST, "a critical extension the responder does not know")
    return nonce


def _check_nonce(value: bytes) -> bytes:
    # RFC 8954: Nonce ::= OCTET STRING (SIZE(1..32)) inside extnValue; a bare value is tolerated.
    octets = len(value)
    if len(value) >= 2 and value[0] == 0x04:
        try:
            _, v0, v1 = _read(value, 0, len(value))
            if v1 == len(value):
                octets = v1 - v0
        except ValueError:
            pass
    if not 1 <= octets <= MAX_NONCE_OCTETS:
        raise OcspError(MALFORMED_REQUEST, f"a nonce is 1–{MAX_NONCE_OCTETS} octets (RFC 8954)")
    return value


def error_response(status: int) -> bytes:
    """An unsuccessful OCSPResponse: just the status, never signed (RFC 6960 §4.2.1)."""
    return bytes((0x30, 0x03, 0x0A, 0x01, status))


def cert_id_der(hash_name: str, name_hash: bytes, key_hash: bytes, serial: int) -> bytes:
    return _tlv(0x30, _ALG_DER[hash_name] + _tlv(0x04, name_hash) + _tlv(0x04, key_hash) + _integer(serial))


@dataclass(frozen=True)
class CertState:
    """What a SingleResponse says about one certificate."""

    status: str  # good / revoked / hold / unknown
    revoked_at: datetime | None = None
    reason: str | None = None


def single_response(cert_id: bytes, state: CertState, this_update: datetime, next_update: datetime) -> bytes:
    if state.status == "good":
        status = b"\x80\x00"
    elif state.status in ("revoked", "hold"):
        assert state.revoked_at is not None
        reason = "certificateHold" if state.status == "hold" else (state.reason or "unspecified")
        status = _tlv(
            0xA1, _gentime(state.revoked_at) + _tlv(0xA0, _tlv(0x0A, bytes((REASON_CODES[reason],))))
        )
    else:
        status = b"\x82\x00"
    return _tlv(0x30, cert_id + status + _gentime(this_update) + _tlv(0xA0, _gentime(next_update)))


# --- signers -----------------------------------------------------------------------------------------


def _spki_key_bits(public_key: Any) -> bytes:
    """The subjectPublicKey BIT STRING's value (what CertID and ResponderID byKey hash)."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _, s0, s1 = _read(spki, 0, len(spki))
    parts = _children(spki, s0, s1)
    return spki[parts[1][2] + 1 : parts[1][3]]


def sign_with(keystore: KeyStore, label: str, algorithm: str, data: bytes) -> bytes:
    """A signature by the delegated key: through the token's ``sign_bytes`` when it has one,
    else with the file store's key (it has no byte-signing method of its own)."""
    sign_bytes = getattr(keystore, "sign_bytes", None)
    if callable(sign_bytes):
        signature: bytes = sign_bytes(label, data)
        return signature
    if isinstance(keystore, FileKeyStore):
        key = keystore._private(label)
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(data, ec.ECDSA(hashes.SHA256()))
    raise KeyStoreError("keystore", "sign_bytes", f"{type(keystore).__name__} cannot sign OCSP responses")


@dataclass
class Signer:
    """A usable delegated signer: what a response needs from it."""

    ca_id: str
    serial: str
    key_label: str
    algorithm: str
    certificate_der: bytes
    key_hash: bytes  # SHA-1 of the signer's key: ResponderID byKey
    not_after: datetime

    @classmethod
    def from_row(cls, row: OcspSigner) -> Signer:
        cert = x509.load_der_x509_certificate(row.certificate_der)
        return cls(
            row.ca_id,
            row.serial,
            row.key_label,
            row.key_algorithm,
            row.certificate_der,
            hashlib.sha1(_spki_key_bits(cert.public_key())).digest(),  # noqa: S324 - RFC 6960 KeyHash
            row.not_after,
        )

    def sign_response(
        self,
        keystore: KeyStore,
        singles: Sequence[bytes],
        produced_at: datetime,
        nonce_value: bytes | None = None,
    ) -> bytes:
        """A complete, successful OCSPResponse (BasicOCSPResponse carrying the signer's certificate)."""
        extensions = b""
        if nonce_value is not None:
            nonce_ext = _tlv(0x30, _tlv(0x06, _OID_NONCE) + _tlv(0x04, nonce_value))
            extensions = _tlv(0xA1, _tlv(0x30, nonce_ext))
        tbs = _tlv(
            0x30,
            _tlv(0xA2, _tlv(0x04, self.key_hash))
            + _gentime(produced_at)
            + _tlv(0x30, b"".join(singles))
            + extensions,
        )
        signature = sign_with(keystore, self.key_label, self.algorithm, tbs)
        basic = _tlv(
            0x30,
            tbs
            + _SIG_ALG_DER[self.algorithm]
            + _tlv(0x03, b"\x00" + signature)
            + _tlv(0xA0, _tlv(0x30, self.certificate_der)),
        )
        body = _tlv(0x30, _tlv(0x06, _OID_BASIC) + _tlv(0x04, basic))
        return _tlv(0x30, b"\x0a\x01\x00" + _tlv(0xA0, body))


def current_signer(session: Session, ca_id: str, now: datetime) -> OcspSigner | None:
    """The newest signer of ``ca_id`` valid at ``now`` whose certificate is still good."""
    return session.scalar(
        select(OcspSigner)
        .join(
            Certificate, and_(Certificate.ca_id == OcspSigner.ca_id, Certificate.serial == OcspSigner.serial)
        )
        .where(
            OcspSigner.ca_id == ca_id,
            OcspSigner.not_before <= now,
            OcspSigner.not_after > now,
            Certificate.status == "good",
        )
        .order_by(OcspSigner.not_after.desc(), OcspSigner.id.desc())
        .limit(1)
    )


def issuing_ca_ids(session: Session) -> list[str]:
    return list(
        session.scalars(
            select(CertificateAuthority.id)
            .where(CertificateAuthority.parent_id.is_not(None))
            .order_by(CertificateAuthority.id)
        )
    )


@dataclass(frozen=True)
class SignerOutcome:
    ca_id: str
    action: str  # kept / created / rotated / failed
    serial: str | None
    not_after: datetime | None
    detail: str = ""


def ensure_signer(
    session: Session,
    keystore: KeyStore,
    ca_id: str,
    now: datetime,
    *,
    force: bool = False,
    days: int = SIGNER_DAYS,
    rotate_before: timedelta = SIGNER_ROTATE_BEFORE,
    actor: str = "ocsp-responder",
) -> SignerOutcome:
    """Give ``ca_id`` a delegated signer valid for more than ``rotate_before``: keep the current
    one, or make a new key (P-256) and have the CA certify it (needs the CA key)."""
    existing = current_signer(session, ca_id, now)
    if existing is not None and not force and existing.not_after - now > rotate_before:
        return SignerOutcome(ca_id, "kept", existing.serial, existing.not_after)
    label = f"ocsp-{ca_id}-{now:%Y%m%d%H%M%S}-{secrets.token_hex(2)}"[:64]
    ca = service.get_ca(session, ca_id)
    if not keystore.has_key(ca.key_label):
        # Checked first so no orphan responder key is made when the CA cannot certify it.
        raise KeyStoreError("ca_id", "ca_key_available", f"the key of {ca_id} is not in the store")
    public_key = keystore.generate(label, SIGNER_ALGORITHM)
    issued = service.issue_ocsp_signer_certificate(
        session, keystore, ca_id=ca_id, public_key=public_key, now=now, days=days, actor=actor
    )
    session.add(
        OcspSigner(
            ca_id=ca_id,
            serial=issued.serial,
            key_label=label,
            key_algorithm=SIGNER_ALGORITHM,
            certificate_der=issued.der,
            not_before=issued.not_before,
            not_after=issued.not_after,
            created_at=now,
        )
    )
    session.flush()
    return SignerOutcome(ca_id, "rotated" if existing else "created", issued.serial, issued.not_after)


def ensure_signers(
    session: Session, keystore: KeyStore, now: datetime, *, force: bool = False, ca_ids: Sequence[str] = ()
) -> list[SignerOutcome]:
    """:func:`ensure_signer` for every issuing CA (or ``ca_ids``); a CA whose key is unavailable
    is reported as failed and the others go on — its current signer keeps answering."""
    outcomes = []
    for ca_id in ca_ids or issuing_ca_ids(session):
        try:
            # ensure_signer refuses before writing anything, so the others' work survives.
            outcomes.append(ensure_signer(session, keystore, ca_id, now, force=force))
        except (KeyStoreError, service.CaError) as error:
            LOG.warning("OCSP signer of %s not renewed: %s", ca_id, error)
            current = current_signer(session, ca_id, now)
            outcomes.append(
                SignerOutcome(
                    ca_id,
                    "failed",
                    current.serial if current else None,
                    current.not_after if current else None,
                    str(error),
                )
            )
    return outcomes


# --- pre-signed responses ------------------------------------------------------------------------


def _issuer_hashes(ca: CertificateAuthority) -> dict[str, tuple[bytes, bytes]]:
    cert = x509.load_der_x509_certificate(ca.certificate_der)
    name = cert.subject.public_bytes()
    key = _spki_key_bits(cert.public_key())
    return {
        "sha1": (hashlib.sha1(name).digest(), hashlib.sha1(key).digest()),  # noqa: S324 - RFC 6960 CertID
        "sha256": (hashlib.sha256(name).digest(), hashlib.sha256(key).digest()),
    }


def state_of(row: Certificate) -> CertState:
    if row.status == "good":
        return CertState("good")
    return CertState(row.status, row.status_changed_at, row.reason)


def _upsert(session: Session, values: dict[str, Any]) -> None:
    existing = session.scalar(
        select(OcspResponse).where(
            OcspResponse.ca_id == values["ca_id"], OcspResponse.serial == values["serial"]
        )
    )
    if existing is None:
        session.add(OcspResponse(**values))
    else:
        for key, value in values.items():
            setattr(existing, key, value)


@dataclass
class _SigningContext:
    """Per-CA things a batch of pre-signatures shares."""

    signers: dict[str, Signer | None] = field(default_factory=dict)
    hashes: dict[str, dict[str, tuple[bytes, bytes]]] = field(default_factory=dict)

    def get(
        self, session: Session, ca_id: str, now: datetime
    ) -> tuple[Signer | None, dict[str, tuple[bytes, bytes]]]:
        if ca_id not in self.signers:
            row = current_signer(session, ca_id, now)
            self.signers[ca_id] = Signer.from_row(row) if row is not None else None
            self.hashes[ca_id] = _issuer_hashes(service.get_ca(session, ca_id))
        return self.signers[ca_id], self.hashes[ca_id]


def presign(
    session: Session,
    keystore: KeyStore | None,
    rows: Sequence[Certificate],
    now: datetime,
    *,
    context: _SigningContext | None = None,
) -> tuple[int, int]:
    """Sign and store the responses of ``rows`` (SHA-1 and SHA-256 CertIDs). Returns (signed,
    failed); a row that cannot be signed gets a tombstone so that no stale status is served."""
    context = context or _SigningContext()
    signed = failed = 0
    next_update = now + RESPONSE_VALIDITY
    for row in rows:
        signer, hashes_ = context.get(session, row.ca_id, now)
        serial = int(row.serial, 16)
        state = state_of(row)
        ders: dict[str, bytes | None] = {"sha1": None, "sha256": None}
        if signer is not None and keystore is not None:
            try:
                for name in ders:
                    single = single_response(
                        cert_id_der(name, *hashes_[name], serial), state, now, next_update
                    )
                    ders[name] = signer.sign_response(keystore, [single], now)
            except KeyStoreError as error:
                LOG.error("OCSP response for %s/%s not signed: %s", row.ca_id, row.serial, error)
                ders = {"sha1": None, "sha256": None}
        ok = ders["sha1"] is not None
        signed += ok
        failed += not ok
        _upsert(
            session,
            {
                "ca_id": row.ca_id,
                "serial": row.serial,
                "status": row.status,
                "der_sha1": ders["sha1"],
                "der_sha256": ders["sha256"],
                "this_update": now,
                "next_update": next_update if ok else now,
                "signer_serial": signer.serial if ok and signer else None,
                "refreshed_at": now,
            },
        )
    session.flush()
    return signed, failed


@dataclass(frozen=True)
class RefreshStats:
    signed: int
    failed: int
    signers: list[SignerOutcome]


def refresh_responses(
    session: Session,
    keystore: KeyStore,
    now: datetime,
    *,
    ahead: timedelta = REFRESH_AHEAD,
    ca_ids: Sequence[str] = (),
    batch: int = 1000,
    limit: int | None = None,
    rotate: bool = True,
) -> RefreshStats:
    """Re-sign what is due: unexpired certificates with no stored response, a response whose
    nextUpdate is less than ``ahead`` away, a tombstone, a status that differs from the
    certificate's, or a signer that is not the current one. Rotates signers first (``rotate``)."""
    signers = ensure_signers(session, keystore, now, ca_ids=ca_ids) if rotate else []
    current: dict[str, str | None] = {o.ca_id: o.serial for o in signers if o.serial}
    if not rotate:
        for ca_id in ca_ids or issuing_ca_ids(session):
            row = current_signer(session, ca_id, now)
            current[ca_id] = row.serial if row else None
    due = or_(
        OcspResponse.id.is_(None),
        OcspResponse.next_update < now + ahead,
        OcspResponse.der_sha1.is_(None),
        OcspResponse.status != Certificate.status,
        *[
            and_(
                Certificate.ca_id == ca_id,
                or_(OcspResponse.signer_serial.is_(None), OcspResponse.signer_serial != serial),
            )
            for ca_id, serial in current.items()
            if serial
        ],
    )
    query = (
        select(Certificate)
        .outerjoin(
            OcspResponse,
            and_(OcspResponse.ca_id == Certificate.ca_id, OcspResponse.serial == Certificate.serial),
        )
        .where(Certificate.not_after > now, Certificate.kind != "ocsp_signer", due)
        .order_by(Certificate.id)
    )
    if ca_ids:
        query = query.where(Certificate.ca_id.in_(list(ca_ids)))
    signed = failed = 0
    context = _SigningContext()
    last_id = 0
    while limit is None or signed + failed < limit:
        size = batch if limit is None else min(batch, limit - signed - failed)
        rows = session.scalars(query.where(Certificate.id > last_id).limit(size)).all()
        if not rows:
            break
        last_id = rows[-1].id
        s, f = presign(session, keystore, rows, now, context=context)
        signed, failed = signed + s, failed + f
    return RefreshStats(signed, failed, signers)


def refresh_certificate(
    session: Session, keystore: KeyStore | None, ca_id: str, serial: str, now: datetime
) -> bool:
    """Re-sign one certificate's stored response (the status-change handler). True when signed;
    False leaves a tombstone (the responder then signs on demand or answers tryLater)."""
    row = session.scalar(select(Certificate).where(Certificate.ca_id == ca_id, Certificate.serial == serial))
    if row is None or row.kind == "ocsp_signer":
        return False
    signed, _ = presign(session, keystore, [row], now)
    notify_changed(ca_id, serial)
    return signed == 1


# Keystore the event handler signs with; set by register_web / kiban serve, else from settings.
_KEYSTORE: KeyStore | None = None


def configure(keystore: KeyStore | None) -> None:
    global _KEYSTORE
    _KEYSTORE = keystore


def default_keystore() -> KeyStore | None:
    if _KEYSTORE is not None:
        return _KEYSTORE
    try:
        from kiban.core.config import load_settings
        from kiban.jpki.keys import keystore_from_settings

        return keystore_from_settings(load_settings())
    except KeyStoreError as error:
        LOG.error("no key store for OCSP signing: %s", error)
        return None


def on_status_changed(session: Session, ca_id: str, serial: str, now: datetime | None = None) -> bool:
    """Handler body for ``jpki.certificate_status_changed``: idempotent (re-signs the current
    status, whatever the event says, so a late or repeated event never restores an old one)."""
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    return refresh_certificate(session, default_keystore(), ca_id, service.normalise_serial(serial), now)


# --- serving -------------------------------------------------------------------------------------

_RESPONDERS: weakref.WeakSet[OcspResponder] = weakref.WeakSet()


def notify_changed(ca_id: str, serial: str) -> None:
    """Drop one certificate from every responder cache of this process at once."""
    for responder in list(_RESPONDERS):
        responder.evict(ca_id, int(serial, 16))


@dataclass
class _Entry:
    state: CertState
    ders: dict[str, bytes | None]
    expires: float  # epoch seconds: nextUpdate of the stored response, or when to look again


@dataclass(frozen=True)
class Verifier:
    """Who asks: a registered verifier's code, or ``anonymous:<address>``; their rate."""

    code: str
    rate_per_second: float
    label: str  # for metrics: the verifier code, or "anonymous"


@dataclass(frozen=True)
class Answer:
    body: bytes
    # good / revoked / unknown / multiple, or the error status (malformedRequest, unauthorized, tryLater…)
    outcome: str
    cacheable_until: float | None = None  # epoch seconds, for GET HTTP caching


class _Buckets:
    """Token buckets per verifier (in memory, per process; the event loop is single-threaded)."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        self._max = max_keys

    def take(self, key: str, rate: float, now: float) -> float:
        """0 when allowed, else seconds until a token is free. Burst = 2 s worth (at least 5)."""
        capacity = max(5.0, 2 * rate)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max:
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = [capacity, now]
        else:
            self._buckets.move_to_end(key)
        tokens = min(capacity, bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if tokens >= 1:
            bucket[0] = tokens - 1
            return 0.0
        bucket[0] = tokens
        return (1 - tokens) / rate if rate > 0 else 60.0


IdentifyToken = Callable[[Session, str], Any]


def default_identify() -> IdentifyToken | None:
    """``kiban.jpki.verifiers.service.identify_token`` when that module exists, else None."""
    try:
        from kiban.jpki.verifiers import service as verifiers_service
    except ImportError:
        return None
    found = getattr(verifiers_service, "identify_token", None)
    return found if callable(found) else None


class OcspResponder:
    """Answers OCSP requests from pre-signed responses; signs fresh only when it must."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        keystore: KeyStore | None,
        *,
        anonymous_rate: float = 50.0,
        allow_anonymous: bool = True,
        identify: IdentifyToken | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.factory = factory
        self.keystore = keystore
        self.anonymous_rate = anonymous_rate
        self.allow_anonymous = allow_anonymous
        self.identify = identify if identify is not None else default_identify()
        self.clock = clock
        self._cache: dict[tuple[str, int], _Entry] = {}
        self._unknown: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()
        self._raw: dict[bytes, tuple[tuple[str, int], str]] = {}
        self._anonymous: dict[str, Verifier] = {}
        self._flushed: dict[str, int] = {}
        self._issuers: dict[tuple[str, bytes, bytes], str] = {}
        self._issuers_loaded = 0.0
        self._signers: dict[str, Signer | None] = {}
        self._signers_loaded = 0.0
        self._tokens: dict[str, tuple[Verifier | None, float]] = {}
        self._buckets = _Buckets()
        self.counts: dict[tuple[str, str], int] = {}
        self.cache_hits = 0
        self.cache_misses = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        _RESPONDERS.add(self)

    # -- cache ---------------------------------------------------------------------------------

    def evict(self, ca_id: str, serial: int) -> None:
        self._cache.pop((ca_id, serial), None)

    def clear(self) -> None:
        self._cache.clear()
        self._raw.clear()
        self._unknown.clear()
        self._signers_loaded = 0.0

    def poll_once(self, since: datetime) -> int:
        """Drop cached entries whose stored response changed since ``since``; returns how many."""
        with self.factory() as session:
            rows = session.execute(
                select(OcspResponse.ca_id, OcspResponse.serial)
                .where(OcspResponse.refreshed_at >= since)
                .limit(10_001)
            ).all()
        if len(rows) > 10_000:
            self._cache.clear()
        else:
            for ca_id, serial in rows:
                self._cache.pop((ca_id, int(serial, 16)), None)
        if rows:
            self._signers_loaded = 0.0  # a refresh may come with a rotated signer
        return len(rows)

    def start_background(
        self,
        *,
        refresh: bool,
        poll_interval: float = POLL_INTERVAL,
        refresh_interval: float = REFRESH_INTERVAL,
    ) -> None:
        """Threads: the cache poller (always) and, in one process only, the periodic refresher
        (signers rotated, responses re-signed before nextUpdate, new certificates pre-signed)."""
        if self._threads:
            return

        def poll() -> None:
            since = datetime.now(UTC) - timedelta(seconds=5)
            flushed = time.monotonic()
            while not self._stop.wait(poll_interval):
                started = datetime.now(UTC)
                try:
                    self.poll_once(since)
                    since = started - timedelta(seconds=5)  # margin for commits still in flight
                except SQLAlchemyError:
                    LOG.exception("OCSP cache poll failed")
                if time.monotonic() - flushed > USAGE_FLUSH_INTERVAL:
                    flushed = time.monotonic()
                    try:
                        self.flush_usage()
                    except Exception:  # a count lost is better than a poller stopped
                        LOG.exception("OCSP usage flush failed")

        def refresher() -> None:
            while True:
                if self.keystore is not None:
                    try:
                        self.refresh_now()
                    except Exception:  # keep refreshing: one bad round must not stop it
                        LOG.exception("OCSP refresh round failed")
                if self._stop.wait(refresh_interval):
                    return

        self._threads.append(threading.Thread(target=poll, name="kiban-ocsp-poll", daemon=True))
        if refresh:
            self._threads.append(threading.Thread(target=refresher, name="kiban-ocsp-refresh", daemon=True))
        for thread in self._threads:
            thread.start()

    def refresh_now(self) -> RefreshStats:
        assert self.keystore is not None
        now = datetime.now(UTC).replace(microsecond=0)
        with self.factory() as session, session.begin():
            stats = refresh_responses(session, self.keystore, now)
        if stats.signed or stats.failed:
            LOG.info("OCSP refresh: %d signed, %d failed", stats.signed, stats.failed)
        return stats

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(2)

    # -- lookups -----------------------------------------------------------------------------------

    def _load_issuers(self, session: Session) -> None:
        issuers: dict[tuple[str, bytes, bytes], str] = {}
        for ca in session.scalars(
            select(CertificateAuthority).where(CertificateAuthority.parent_id.is_not(None))
        ):
            for name, (name_hash, key_hash) in _issuer_hashes(ca).items():
                issuers[(name, name_hash, key_hash)] = ca.id
        self._issuers = issuers
        self._issuers_loaded = time.monotonic()

    def issuer_of(self, cert_id: CertId) -> str | None:
        if cert_id.hash_name is None:
            return None
        return self._issuers.get((cert_id.hash_name, cert_id.name_hash, cert_id.key_hash))

    def _signer(self, session: Session, ca_id: str) -> Signer | None:
        if time.monotonic() - self._signers_loaded > 60:
            self._signers = {}
            self._signers_loaded = time.monotonic()
        if ca_id not in self._signers:
            row = current_signer(session, ca_id, datetime.now(UTC))
            self._signers[ca_id] = Signer.from_row(row) if row else None
        return self._signers[ca_id]

    def _entry(self, session: Session, ca_id: str, serial: int) -> _Entry:
        now = self.clock()
        cached = self._cache.get((ca_id, serial))
        if cached is not None and cached.expires > now:
            return cached
        entry = self._load_entry(session, ca_id, serial)
        if len(self._cache) > 1_000_000:
            self._cache.clear()
        self._cache[(ca_id, serial)] = entry
        return entry

    def _load_entry(self, session: Session, ca_id: str, serial: int, *, sign: bool = True) -> _Entry:
        now = self.clock()
        if not 0 < serial < 1 << 160:
            return _Entry(CertState("unknown"), {}, now + UNKNOWN_TTL)
        hex_serial = f"{serial:040x}"
        cert = session.scalar(
            select(Certificate).where(Certificate.ca_id == ca_id, Certificate.serial == hex_serial)
        )
        if cert is None:
            return _Entry(CertState("unknown"), {}, now + UNKNOWN_TTL)
        state = state_of(cert)
        stored = session.scalar(
            select(OcspResponse).where(OcspResponse.ca_id == ca_id, OcspResponse.serial == hex_serial)
        )
        if stored is not None and stored.der_sha1 is not None and stored.status == cert.status:
            expires = stored.next_update.timestamp()
            if expires > now:
                return _Entry(state, {"sha1": stored.der_sha1, "sha256": stored.der_sha256}, expires)
        # None stored yet (a new certificate), a tombstone or stale: sign now and store it.
        if sign and self.keystore is not None and cert.kind != "ocsp_signer":
            session.rollback()  # end the read transaction; sign and store in a transaction of its own
            try:
                with self.factory() as writer, writer.begin():
                    mine = writer.scalar(
                        select(Certificate).where(
                            Certificate.ca_id == ca_id, Certificate.serial == hex_serial
                        )
                    )
                    assert mine is not None
                    signed, _ = presign(
                        writer, self.keystore, [mine], datetime.now(UTC).replace(microsecond=0)
                    )
            except SQLAlchemyError:  # a concurrent signer stored it first: read theirs
                signed = 1
            if signed:
                return self._load_entry(session, ca_id, serial, sign=False)
        # Nothing servable without a fresh signature; look again soon.
        return _Entry(state, {}, now + 5)

    # -- answering -----------------------------------------------------------------------------

    def answer_raw(self, data: bytes) -> Answer | None:
        """The hottest path: these exact request bytes were answered from a still-valid entry.

        A request without a nonce is the same bytes every time a verifier asks about a
        certificate, so the bytes map to the cache key and parsing is skipped; the entry itself
        (evicted on every status change) decides whether the answer still stands.
        """
        hit = self._raw.get(data)
        if hit is None:
            return None
        entry = self._cache.get(hit[0])
        if entry is None or entry.expires <= self.clock():
            return None
        der = entry.ders.get(hit[1])
        if der is None:
            return None
        self.cache_hits += 1
        return Answer(der, "revoked" if entry.state.status == "hold" else entry.state.status, entry.expires)

    def answer_fast(self, data: bytes, client: str, token: str | None) -> bytes | None:
        """For the HTTP layer's shortcut (:mod:`kiban.jpki.ocsp_http`): the response body when
        these request bytes are a cache hit and the verifier is known, with the rate limit and
        the count applied; None (nothing counted) to take the ordinary path."""
        if token is not None and token not in self._tokens:
            return None
        answer = self.answer_raw(data)
        if answer is None:
            return None
        verifier = self.verifier_for(token, client)
        if verifier is None:
            return None
        if self._buckets.take(verifier.code, verifier.rate_per_second, time.monotonic()):
            return None  # the ordinary path answers tryLater with its Retry-After
        self.count(verifier.label, answer.outcome)
        return answer.body

    def answer_cached(self, parsed: ParsedRequest, data: bytes = b"") -> Answer | None:
        """The common case without touching the database: one CertID, no nonce, cached."""
        if parsed.nonce_value is not None or len(parsed.cert_ids) != 1:
            return None
        cert_id = parsed.cert_ids[0]
        ca_id = self.issuer_of(cert_id)
        if ca_id is None or cert_id.hash_name is None:
            return None
        entry = self._cache.get((ca_id, cert_id.serial))
        if entry is None or entry.expires <= self.clock():
            return None
        der = entry.ders.get(cert_id.hash_name)
        if der is None:
            return None
        if data:
            if len(self._raw) >= 200_000:
                self._raw.clear()
            self._raw[data] = ((ca_id, cert_id.serial), cert_id.hash_name)
        self.cache_hits += 1
        return Answer(der, entry.state.status if entry.state.status != "hold" else "revoked", entry.expires)

    def answer(self, parsed: ParsedRequest) -> Answer:
        """Everything else (database, on-demand signatures). Runs in a worker thread."""
        self.cache_misses += 1
        with self.factory() as session:
            missing = not self._issuers or any(self.issuer_of(c) is None for c in parsed.cert_ids)
            if missing and (time.monotonic() - self._issuers_loaded > 10 or not self._issuers):
                self._load_issuers(session)
            ca_ids = {self.issuer_of(c) for c in parsed.cert_ids}
            if None in ca_ids:
                unsupported = any(c.hash_name is None for c in parsed.cert_ids)
                raise OcspError(
                    UNAUTHORIZED,
                    "unsupported CertID hash algorithm" if unsupported else "not a CA this responder serves",
                )
            if len(ca_ids) != 1:
                raise OcspError(UNAUTHORIZED, "one request names one issuing CA (one delegated signer)")
            ca_id = next(iter(ca_ids))
            assert ca_id is not None
            entries = [self._entry(session, ca_id, c.serial) for c in parsed.cert_ids]
            if len(entries) == 1 and parsed.nonce_value is None:
                der = entries[0].ders.get(parsed.cert_ids[0].hash_name or "")
                if der is not None:
                    status = entries[0].state.status
                    return Answer(der, "revoked" if status == "hold" else status, entries[0].expires)
                if entries[0].state.status == "unknown":
                    return self._unknown_answer(session, ca_id, parsed.cert_ids[0])
            return self._fresh(session, ca_id, parsed, entries)

    def _unknown_answer(self, session: Session, ca_id: str, cert_id: CertId) -> Answer:
        now = self.clock()
        cached = self._unknown.get(cert_id.der)
        if cached is not None and cached[1] > now:
            return Answer(cached[0], "unknown", None)
        answer = self._fresh(
            session, ca_id, ParsedRequest((cert_id,), None), [_Entry(CertState("unknown"), {}, 0)]
        )
        if len(self._unknown) >= 10_000:
            self._unknown.popitem(last=False)
        self._unknown[cert_id.der] = (answer.body, now + UNKNOWN_TTL)
        return answer

    def _fresh(self, session: Session, ca_id: str, parsed: ParsedRequest, entries: list[_Entry]) -> Answer:
        signer = self._signer(session, ca_id)
        if signer is None or self.keystore is None:
            return self._fallback(parsed, entries, "no delegated signer")
        now = datetime.now(UTC).replace(microsecond=0)
        next_update = now + RESPONSE_VALIDITY
        singles = [
            single_response(c.der, e.state, now, next_update)
            for c, e in zip(parsed.cert_ids, entries, strict=True)
        ]
        try:
            body = signer.sign_response(self.keystore, singles, now, parsed.nonce_value)
        except KeyStoreError as error:
            LOG.error("OCSP signing with %s failed: %s", signer.key_label, error)
            return self._fallback(parsed, entries, str(error))
        statuses = {("revoked" if e.state.status == "hold" else e.state.status) for e in entries}
        return Answer(body, statuses.pop() if len(statuses) == 1 else "multiple", None)

    def _fallback(self, parsed: ParsedRequest, entries: list[_Entry], why: str) -> Answer:
        # The delegated key is unavailable: a nonce request gets the pre-signed response (no nonce
        # in it, SPEC K5); anything needing a new signature must wait.
        if len(entries) == 1:
            der = entries[0].ders.get(parsed.cert_ids[0].hash_name or "")
            if der is not None:
                status = entries[0].state.status
                return Answer(der, "revoked" if status == "hold" else status, None)
        raise OcspError(TRY_LATER, f"cannot sign now ({why})")

    # -- verifiers and rate limits --------------------------------------------------------------

    def verifier_for(self, token: str | None, client: str) -> Verifier | None:
        """None means refused (unauthorized). Tokens are resolved through ``identify`` (cached 60 s)."""
        if token is None:
            if not self.allow_anonymous:
                return None
            anonymous = self._anonymous.get(client)
            if anonymous is None:
                if len(self._anonymous) > 100_000:
                    self._anonymous.clear()
                anonymous = self._anonymous[client] = Verifier(
                    f"anonymous:{client}", self.anonymous_rate, "anonymous"
                )
            return anonymous
        now = time.monotonic()
        cached = self._tokens.get(token)
        if cached is not None and cached[1] > now:
            return cached[0]
        verifier: Verifier | None = None
        if self.identify is not None:
            with self.factory() as session:
                found = self.identify(session, token)
            may = getattr(found, "may", None)
            if found is not None and callable(may) and not may("revocation"):
                found = None  # registered, but not for revocation information
            if found is not None:
                code = str(found.code)
                verifier = Verifier(code, float(found.ocsp_rate_per_second), code)
        if len(self._tokens) > 10_000:
            self._tokens.clear()
        self._tokens[token] = (verifier, now + 60)
        return verifier

    def flush_usage(self) -> int:
        """Add each verifier's OCSP answers since the last flush to its usage counts
        (``kiban.jpki.verifiers.service.record_usage``, service ``ocsp``); returns how many."""
        try:
            from kiban.jpki.verifiers.service import record_usage
        except ImportError:
            return 0
        totals: dict[str, int] = {}
        for (verifier, outcome), value in list(self.counts.items()):
            if verifier != "anonymous" and outcome not in ("unauthorized", "rate_limited"):
                totals[verifier] = totals.get(verifier, 0) + value
        deltas = {v: n - self._flushed.get(v, 0) for v, n in totals.items() if n > self._flushed.get(v, 0)}
        if not deltas:
            return 0
        with self.factory() as session, session.begin():
            for verifier, delta in deltas.items():
                record_usage(session, verifier, "ocsp", delta)
        self._flushed.update({v: totals[v] for v in deltas})
        return sum(deltas.values())

    def count(self, verifier: str, outcome: str) -> None:
        key = (verifier, outcome)
        self.counts[key] = self.counts.get(key, 0) + 1

    # -- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        import anyio.to_thread

        method = scope["method"]
        if method not in ("GET", "POST"):
            await _send(send, 405, b"", [(b"allow", b"GET, POST"), (b"content-type", b"text/plain")])
            return
        headers = scope["headers"]
        token = None
        for name, value in headers:
            if name == b"authorization":
                scheme, _, credential = value.decode("latin-1").partition(" ")
                token = credential.strip() if scheme.lower() == "bearer" else ""
        client = scope.get("client") or ("?", 0)
        label = "anonymous"
        try:
            if method == "POST":
                data = await _read_body(receive, MAX_REQUEST_BYTES)
            else:
                data = _decode_get(scope)
            if token is not None and token not in self._tokens:
                verifier = await anyio.to_thread.run_sync(self.verifier_for, token, client[0])
            else:
                verifier = self.verifier_for(token, client[0])
            if verifier is None:
                raise OcspError(UNAUTHORIZED, "a registered verifier's credential is required")
            label = verifier.label
            wait = self._buckets.take(verifier.code, verifier.rate_per_second, time.monotonic())
            if wait:
                self.count(label, "rate_limited")
                await _send(
                    send,
                    200,
                    error_response(TRY_LATER),
                    [
                        (b"content-type", MEDIA_RESPONSE.encode()),
                        (b"cache-control", b"no-store"),
                        (b"retry-after", str(max(1, round(wait + 0.5))).encode()),
                    ],
                )
                return
            answer = self.answer_raw(data)
            if answer is None:
                parsed = parse_request(data)
                answer = self.answer_cached(parsed, data)
                if answer is None:
                    answer = await anyio.to_thread.run_sync(self.answer, parsed)
        except OcspError as error:
            answer = Answer(error_response(error.status), STATUS_NAMES[error.status])
        except Exception:
            LOG.exception("OCSP request failed")
            answer = Answer(error_response(INTERNAL_ERROR), "internalError")
        self.count(label, answer.outcome)
        extra = [(b"content-type", MEDIA_RESPONSE.encode())]
        if method == "GET" and answer.cacheable_until is not None:
            max_age = int(min(HTTP_MAX_AGE, answer.cacheable_until - self.clock()))
            extra.append(
                (
                    b"cache-control",
                    f"max-age={max(0, max_age)}, public, no-transform, must-revalidate".encode(),
                )
            )
        else:
            extra.append((b"cache-control", b"no-store"))
        await _send(send, 200, answer.body, extra)

    def collect(self) -> Iterator[Any]:
        """Prometheus collector: per-verifier counts (plain dict increments on the hot path)."""
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(
            "kiban_ocsp_requests",
            "OCSP requests by verifier (code or anonymous) and outcome.",
            labels=["verifier", "outcome"],
        )
        for (verifier, outcome), value in sorted(self.counts.items()):
            family.add_metric([verifier, outcome], value)
        yield family
        cache = CounterMetricFamily(
            "kiban_ocsp_cache", "OCSP answers from the in-process cache or not.", labels=["result"]
        )
        cache.add_metric(["hit"], self.cache_hits)
        cache.add_metric(["miss"], self.cache_misses)
        yield cache


class _TooLarge(Exception):
    pass


async def _read_body(receive: Any, limit: int) -> bytes:
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise OcspError(MALFORMED_REQUEST, "client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise OcspError(MALFORMED_REQUEST, f"request over {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _decode_get(scope: Any) -> bytes:
    """GET /ocsp/{url-encoded base64 of the DER request} (RFC 6960 Appendix A.1)."""
    raw = scope.get("raw_path") or scope["path"].encode()
    raw = raw.split(b"?", 1)[0]
    root = scope.get("root_path", "").encode()
    prefix = root + b"/ocsp/"
    if not raw.startswith(prefix) or len(raw) == len(prefix):
        raise OcspError(MALFORMED_REQUEST, "GET needs the request in the path: /ocsp/{base64}")
    encoded = unquote_to_bytes(raw[len(prefix) :])
    if len(encoded) > MAX_REQUEST_BYTES * 4 // 3 + 4:
        raise OcspError(MALFORMED_REQUEST, f"request over {MAX_REQUEST_BYTES} bytes")
    encoded = encoded.replace(b"-", b"+").replace(b"_", b"/")  # the URL-safe alphabet too
    encoded += b"=" * (-len(encoded) % 4)
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise OcspError(MALFORMED_REQUEST, "the path is not base64") from None


async def _send(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *headers,
                (b"content-length", str(len(body)).encode()),
                (b"x-content-type-options", b"nosniff"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
