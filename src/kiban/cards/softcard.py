"""The software My Number card chip (個人番号カードのICチップ, simulated; SPEC K4 "card chip").

A :class:`SoftCard` is a client-side object: the card-face data (券面事項), the PINs with their
rules and retry counters, two key pairs generated on the card (署名用 and 利用者証明用), the
certificates the CA issued for them, and a small application area (アプリケーション領域).

- Private keys are made inside the card and never leave it: no method returns them, the object
  refuses pickling and ``repr`` shows nothing secret. They are written only into the card file,
  inside its AEAD ciphertext.
- PINs never leave the card either: the card keeps a keyed hash of each PIN (HMAC-SHA256 under a
  per-card random secret) and compares in constant time. The platform never sees a PIN after
  handing it to the card at the counter, and stores none.
- A wrong PIN spends a try; the PIN locks exactly when its limit is reached (利用者証明用 3,
  署名用 5, 住民基本台帳用 3, 券面事項入力補助用 3); a right PIN restores the counter. A locked
  PIN refuses even the right PIN until it is reset at the counter (:meth:`SoftCard.reset_pin`).
- File at rest: JSON header (format, KDF parameters, salt, nonce) + AES-256-GCM ciphertext of the
  card's contents, the key from the holder's passphrase by scrypt (n=2^15, r=8, p=1); the header is
  the AEAD's associated data, so any change to it or to the ciphertext is detected. A card opened
  from a file writes itself back (atomically, mode 0600) after every change, retry counters
  included.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any, Final, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

PinKind = Literal["user_auth", "signature", "juki", "face"]
KeyKind = Literal["user_auth", "signature"]
Algorithm = Literal["rsa2048", "p256"]

PIN_KINDS: Final[tuple[PinKind, ...]] = ("user_auth", "signature", "juki", "face")
KEY_KINDS: Final[tuple[KeyKind, ...]] = ("user_auth", "signature")
ALGORITHMS: Final[tuple[Algorithm, ...]] = ("rsa2048", "p256")

PIN_JA: Final[dict[str, str]] = {
    "user_auth": "利用者証明用電子証明書暗証番号",
    "signature": "署名用電子証明書暗証番号",
    "juki": "住民基本台帳用暗証番号",
    "face": "券面事項入力補助用暗証番号",
}


@dataclass(frozen=True)
class PinRule:
    pattern: re.Pattern[str]
    description: str
    max_tries: int


# SPEC K4 / REFERENCE §1: authentication 4 digits (3 tries), signature 6–16 upper-case letters and
# digits (5 tries); the 住基 and 券面事項入力補助 PINs are 4 digits with 3 tries like the first.
PIN_RULES: Final[dict[str, PinRule]] = {
    "user_auth": PinRule(re.compile(r"[0-9]{4}"), "4 digits", 3),
    "signature": PinRule(re.compile(r"[A-Z0-9]{6,16}"), "6–16 upper-case letters A–Z and digits", 5),
    "juki": PinRule(re.compile(r"[0-9]{4}"), "4 digits", 3),
    "face": PinRule(re.compile(r"[0-9]{4}"), "4 digits", 3),
}
# The PIN that unlocks each key.
KEY_PIN: Final[dict[str, PinKind]] = {"user_auth": "user_auth", "signature": "signature"}

FILE_FORMAT = "kiban-softcard-v1"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
MAX_CHALLENGE = 1024  # bytes; a kiosk's or verifier's nonce is 32
MAX_DOCUMENT = 16 * 1024 * 1024
MAX_AREA_ITEMS = 16
MAX_AREA_BYTES = 4096
MAX_FILE_BYTES = 1024 * 1024
_AREA_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_CARD_ID = re.compile(r"[0-9A-Z]{12}")


class CardError(ValueError):
    """The card refused an operation (``field`` and ``rule`` say why); the card is unchanged,
    except that a wrong PIN spends a try (``tries_left`` says how many remain)."""

    def __init__(self, field: str, rule: str, message: str, *, tries_left: int | None = None) -> None:
        super().__init__(f"{field}: {message} (rule: {rule})")
        self.field = field
        self.rule = rule
        self.tries_left = tries_left


@dataclass(frozen=True)
class CardFace:
    """券面事項: what is printed on the card (front: name, address, birth date, sex, expiry; back:
    個人番号). The chip holds the same items; the 個人番号 is read only with the 券面事項入力補助用 PIN."""

    card_id: str
    name: str
    address: str
    birth_date: date
    sex: int  # 1 male, 2 female, 3 unknown (as in the certificate profile)
    expires_on: date
    municipality_code: str
    individual_number: str | None = None

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("individual_number")
        data["birth_date"] = self.birth_date.isoformat()
        data["expires_on"] = self.expires_on.isoformat()
        return data


@dataclass(frozen=True)
class PinStatus:
    kind: str
    is_set: bool
    tries_left: int
    locked: bool


def check_pin(kind: str, pin: object, field: str = "pin") -> str:
    """Refuse a PIN that breaks its rule (the same check the card makes before storing one)."""
    if kind not in PIN_RULES:
        raise CardError("kind", "pin_kind", f"unknown PIN kind {kind!r}; one of {', '.join(PIN_KINDS)}")
    rule = PIN_RULES[kind]
    if not isinstance(pin, str) or not rule.pattern.fullmatch(pin):
        raise CardError(field, "pin_format", f"{PIN_JA[kind]} must be {rule.description}")
    return pin


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def _kdf(passphrase: str, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(passphrase.encode("utf-8"))


def _check_passphrase(passphrase: object) -> str:
    if not isinstance(passphrase, str) or len(passphrase) < 8 or len(passphrase) > 1024:
        raise CardError(
            "passphrase", "passphrase_length", "the card file passphrase must be 8–1024 characters"
        )
    return passphrase


class SoftCard:
    """One card. Make a blank one with :meth:`blank` (the manufacturer), open a file with :meth:`open`."""

    __slots__ = (
        "_face",
        "_secret",
        "_pins",
        "_tries",
        "_keys",
        "_certs",
        "_area",
        "_algorithm",
        "_path",
        "_key",
    )

    def __init__(self) -> None:  # use blank() or open()
        self._face: CardFace
        self._secret: bytes = secrets.token_bytes(32)
        self._pins: dict[str, bytes] = {}
        self._tries: dict[str, int] = {kind: PIN_RULES[kind].max_tries for kind in PIN_KINDS}
        self._keys: dict[str, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey] = {}
        self._certs: dict[str, bytes] = {}
        self._area: dict[str, bytes] = {}
        self._algorithm: Algorithm = "rsa2048"
        self._path: Path | None = None
        self._key: tuple[bytes, bytes] | None = None  # (salt, derived key) of the bound file

    # ----------------------------------------------------------------- making and storing

    @classmethod
    def blank(cls, face: CardFace, *, algorithm: Algorithm = "rsa2048") -> SoftCard:
        """A produced card: face data written, no PINs, no keys (they are made at the counter)."""
        if not isinstance(face, CardFace):
            raise CardError("face", "type", "must be a CardFace")
        if not _CARD_ID.fullmatch(face.card_id):
            raise CardError("face.card_id", "format", "must be 12 upper-case letters or digits")
        if algorithm not in ALGORITHMS:
            raise CardError("algorithm", "algorithm", f"must be one of {', '.join(ALGORITHMS)}")
        card = cls()
        card._face = face
        card._algorithm = algorithm
        return card

    def __reduce__(self) -> Any:
        raise TypeError("a SoftCard cannot be pickled: its private keys never leave the card")

    def __repr__(self) -> str:
        return f"SoftCard(card_id={self._face.card_id!r}, keys={sorted(self._keys)})"

    def _contents(self) -> dict[str, Any]:
        face = asdict(self._face)
        face["birth_date"] = self._face.birth_date.isoformat()
        face["expires_on"] = self._face.expires_on.isoformat()
        return {
            "face": face,
            "secret": _b64(self._secret),
            "pins": {k: _b64(v) for k, v in self._pins.items()},
            "tries": self._tries,
            "algorithm": self._algorithm,
            "keys": {
                k: _b64(
                    key.private_bytes(
                        serialization.Encoding.DER,
                        serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption(),
                    )
                )
                for k, key in self._keys.items()
            },
            "certs": {k: _b64(v) for k, v in self._certs.items()},
            "area": {k: _b64(v) for k, v in self._area.items()},
        }

    @classmethod
    def _from_contents(cls, data: Mapping[str, Any]) -> SoftCard:
        card = cls()
        face = dict(data["face"])
        face["birth_date"] = date.fromisoformat(face["birth_date"])
        face["expires_on"] = date.fromisoformat(face["expires_on"])
        card._face = CardFace(**face)
        card._secret = _unb64(data["secret"])
        card._pins = {k: _unb64(v) for k, v in data["pins"].items()}
        card._tries = {k: int(data["tries"][k]) for k in PIN_KINDS}
        card._algorithm = data["algorithm"]
        for kind, der in data["keys"].items():
            key = serialization.load_der_private_key(_unb64(der), password=None)
            if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
                raise CardError("file", "corrupt", "unexpected key type in the card file")
            card._keys[kind] = key
        card._certs = {k: _unb64(v) for k, v in data["certs"].items()}
        card._area = {k: _unb64(v) for k, v in data["area"].items()}
        return card

    def save(self, path: Path | str, passphrase: str) -> None:
        """Write the card to ``path`` encrypted under ``passphrase`` and bind the card to that file."""
        salt = secrets.token_bytes(16)
        self._path = Path(path)
        self._key = (salt, _kdf(_check_passphrase(passphrase), salt))
        self._write()

    def _write(self) -> None:
        if self._path is None or self._key is None:
            return
        salt, key = self._key
        nonce = secrets.token_bytes(12)
        header = {
            "format": FILE_FORMAT,
            "kdf": {"name": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P, "salt": _b64(salt)},
            "aead": {"name": "AES-256-GCM", "nonce": _b64(nonce)},
            "card_id": self._face.card_id,
        }
        aad = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
        plaintext = json.dumps(self._contents(), sort_keys=True).encode("utf-8")
        blob = {"header": header, "ciphertext": _b64(AESGCM(key).encrypt(nonce, plaintext, aad))}
        target = self._path
        fd, tmp = tempfile.mkstemp(prefix=".card-", dir=str(target.parent))
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(blob, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def open(cls, path: Path | str, passphrase: str) -> SoftCard:
        """Read and decrypt a card file; a wrong passphrase or any change to the file is refused."""
        path = Path(path)
        _check_passphrase(passphrase)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise CardError("file", "not_found", f"no card file at {path}") from None
        if len(raw) > MAX_FILE_BYTES:
            raise CardError("file", "too_large", f"a card file is at most {MAX_FILE_BYTES} bytes")
        try:
            blob = json.loads(raw)
            header = blob["header"]
            if header.get("format") != FILE_FORMAT:
                raise CardError("file", "format", f"not a {FILE_FORMAT} file")
            kdf = header["kdf"]
            if (kdf.get("name"), kdf.get("n"), kdf.get("r"), kdf.get("p")) != (
                "scrypt",
                SCRYPT_N,
                SCRYPT_R,
                SCRYPT_P,
            ):
                raise CardError("file", "kdf", "unsupported key derivation parameters")
            salt = _unb64(kdf["salt"])
            nonce = _unb64(header["aead"]["nonce"])
            ciphertext = _unb64(blob["ciphertext"])
        except CardError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError):
            raise CardError("file", "format", "not a card file") from None
        key = _kdf(passphrase, salt)
        aad = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
        try:
            plaintext = AESGCM(key).decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise CardError(
                "passphrase", "decrypt_failed", "wrong passphrase, or the card file was altered"
            ) from None
        card = cls._from_contents(json.loads(plaintext))
        card._path = path
        card._key = (salt, key)
        return card

    # ----------------------------------------------------------------- public data

    @property
    def card_id(self) -> str:
        return self._face.card_id

    @property
    def face(self) -> dict[str, Any]:
        """The printed front (no 個人番号)."""
        return self._face.public()

    @property
    def algorithm(self) -> Algorithm:
        return self._algorithm

    def pin_status(self) -> list[PinStatus]:
        return [
            PinStatus(kind, kind in self._pins, self._tries[kind], self._tries[kind] <= 0)
            for kind in PIN_KINDS
        ]

    def public_key(self, kind: KeyKind) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey | None:
        key = self._keys.get(self._key_kind(kind))
        return None if key is None else key.public_key()

    def public_key_pem(self, kind: KeyKind) -> str | None:
        key = self.public_key(kind)
        if key is None:
            return None
        return key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def certificate(self, kind: KeyKind) -> bytes | None:
        return self._certs.get(self._key_kind(kind))

    def area(self) -> dict[str, bytes]:
        """The application area (アプリケーション領域), readable by any terminal."""
        return dict(self._area)

    # ----------------------------------------------------------------- PINs

    def _digest(self, kind: str, pin: str) -> bytes:
        return hmac.new(self._secret, f"{kind}\x00{pin}".encode(), hashlib.sha256).digest()

    def verify_pin(self, kind: PinKind, pin: str) -> None:
        """Check ``pin``; a wrong one spends a try (and the card file is written at once)."""
        if kind not in PIN_RULES:
            raise CardError("kind", "pin_kind", f"unknown PIN kind {kind!r}")
        if kind not in self._pins:
            raise CardError("pin", "pin_not_set", f"{PIN_JA[kind]} is not set yet (set at the counter)")
        if self._tries[kind] <= 0:
            raise CardError(
                "pin", "pin_locked", f"{PIN_JA[kind]} is locked; reset it at the counter", tries_left=0
            )
        candidate = pin if isinstance(pin, str) else ""
        if hmac.compare_digest(self._digest(kind, candidate), self._pins[kind]):
            if self._tries[kind] != PIN_RULES[kind].max_tries:
                self._tries[kind] = PIN_RULES[kind].max_tries
                self._write()
            return
        self._tries[kind] -= 1
        self._write()
        left = self._tries[kind]
        if left == 0:
            raise CardError("pin", "pin_locked", f"wrong {PIN_JA[kind]}; it is now locked", tries_left=0)
        raise CardError("pin", "pin_wrong", f"wrong {PIN_JA[kind]}; {left} tries left", tries_left=left)

    def set_initial_pins(self, pins: Mapping[str, str]) -> None:
        """At the counter (交付時): set PINs that are not set yet. All are checked before any is set."""
        if not isinstance(pins, Mapping) or not pins:
            raise CardError("pins", "required", "give at least one PIN")
        for kind, pin in pins.items():
            check_pin(kind, pin, f"pins.{kind}")
            if kind in self._pins:
                raise CardError(
                    f"pins.{kind}", "pin_already_set", f"{PIN_JA[kind]} is already set; change or reset it"
                )
        for kind, pin in pins.items():
            self._pins[kind] = self._digest(kind, pin)
            self._tries[kind] = PIN_RULES[kind].max_tries
        self._write()

    def change_pin(self, kind: PinKind, old: str, new: str) -> None:
        """The holder changes a PIN: the new one is checked first, then the old one is verified."""
        check_pin(kind, new, "new_pin")
        self.verify_pin(kind, old)
        self._pins[kind] = self._digest(kind, new)
        self._write()

    def reset_pin(self, kind: PinKind, new: str) -> None:
        """暗証番号の初期化 (counter, or kiosk after a face match): a new PIN, the counter restored.

        The platform calls this only after its own identity check (kiban.cards.service.reset_pin);
        a software card has no secure channel to tell a counter terminal from anyone else, which is
        the honest limit of simulating a chip in software.
        """
        check_pin(kind, new, "new_pin")
        self._pins[kind] = self._digest(kind, new)
        self._tries[kind] = PIN_RULES[kind].max_tries
        self._write()

    # ----------------------------------------------------------------- keys and signing

    @staticmethod
    def _key_kind(kind: str) -> KeyKind:
        if kind not in KEY_KINDS:
            raise CardError("kind", "key_kind", f"unknown key {kind!r}; one of {', '.join(KEY_KINDS)}")
        return kind

    def generate_key_pair(self, kind: KeyKind, pin: str) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        """Make a new key pair inside the card (replacing the old one and its certificate) after the
        key's PIN; returns the public key for the CA."""
        kind = self._key_kind(kind)
        self.verify_pin(KEY_PIN[kind], pin)
        key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        if self._algorithm == "p256":
            key = ec.generate_private_key(ec.SECP256R1())
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._keys[kind] = key
        self._certs.pop(kind, None)
        self._write()
        return key.public_key()

    def store_certificate(self, kind: KeyKind, der: bytes) -> None:
        """Write the CA's certificate for the card's key (refused if it certifies another key)."""
        kind = self._key_kind(kind)
        if kind not in self._keys:
            raise CardError("kind", "no_key", f"the card has no {kind} key")
        try:
            cert = x509.load_der_x509_certificate(der)
        except (ValueError, TypeError):
            raise CardError("certificate", "format", "not a DER X.509 certificate") from None
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        mine = self._keys[kind].public_key().public_bytes(serialization.Encoding.DER, spki)
        if cert.public_key().public_bytes(serialization.Encoding.DER, spki) != mine:
            raise CardError("certificate", "key_mismatch", "the certificate is for another key")
        self._certs[kind] = der
        self._write()

    def _sign(self, kind: KeyKind, data: bytes) -> bytes:
        key = self._keys.get(kind)
        if key is None:
            raise CardError("kind", "no_key", f"the card has no {kind} key (issued at the counter)")
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return key.sign(data, ec.ECDSA(hashes.SHA256()))

    def sign_challenge(self, pin: str, challenge: bytes) -> bytes:
        """利用者証明: sign a verifier's challenge with the user-authentication key, after its PIN."""
        if not isinstance(challenge, bytes) or not 1 <= len(challenge) <= MAX_CHALLENGE:
            raise CardError("challenge", "length", f"must be 1–{MAX_CHALLENGE} bytes")
        if "user_auth" not in self._keys:
            raise CardError("kind", "no_key", "the card has no user_auth key (issued at the counter)")
        self.verify_pin("user_auth", pin)
        return self._sign("user_auth", challenge)

    def sign_document(self, pin: str, document: bytes) -> bytes:
        """電子署名: sign a document with the signature key, after the signature PIN."""
        if not isinstance(document, bytes) or not 1 <= len(document) <= MAX_DOCUMENT:
            raise CardError("document", "length", f"must be 1–{MAX_DOCUMENT} bytes")
        if "signature" not in self._keys:
            raise CardError("kind", "no_key", "the card has no signature key (issued at the counter)")
        self.verify_pin("signature", pin)
        return self._sign("signature", document)

    # ----------------------------------------------------------------- face data and area

    def read_individual_number(self, pin: str) -> str | None:
        """券面事項入力補助AP: the 個人番号, only with the 券面事項入力補助用 PIN."""
        self.verify_pin("face", pin)
        return self._face.individual_number

    def write_area(self, name: str, data: bytes, pin: str) -> None:
        """Write an item of the application area, after the user-authentication PIN."""
        if not isinstance(name, str) or not _AREA_NAME.fullmatch(name):
            raise CardError("name", "format", "must be a lower-case letter then up to 31 of a–z, 0–9, _")
        if not isinstance(data, bytes) or len(data) > MAX_AREA_BYTES:
            raise CardError("data", "length", f"must be bytes, at most {MAX_AREA_BYTES}")
        if name not in self._area and len(self._area) >= MAX_AREA_ITEMS:
            raise CardError("name", "area_full", f"the application area holds at most {MAX_AREA_ITEMS} items")
        self.verify_pin("user_auth", pin)
        self._area[name] = data
        self._write()


def verify_signature(public_key: Any, signature: bytes, data: bytes) -> bool:
    """Check a card signature with its public key (what a verifier or the platform does)."""
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        else:
            return False
    except InvalidSignature:
        return False
    return True
