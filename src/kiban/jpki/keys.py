"""CA key storage (鍵管理): files for the embedded demo, a PKCS#11 token in production.

Every CA operation that needs the private key goes through a :class:`KeyStore`: the CA asks the
store to sign a certificate or CRL builder, never for the key. :class:`FileKeyStore` keeps PKCS#8
PEM files in ``<data>/keys/`` (demo only). :class:`Pkcs11KeyStore` keeps keys in a token
(SoftHSM2 in tests, an HSM in production): the key is generated there as sensitive and
non-extractable, and signing happens inside the token. Because ``cryptography`` can only sign with
its own key objects, the token path has ``cryptography`` build the to-be-signed structure (it signs
it with a throw-away key of the same type, which fixes the signature-algorithm fields), takes the
TBS bytes, has the token sign them and assembles the final DER (certificate or CRL: both are
``SEQUENCE { tbs, signatureAlgorithm, BIT STRING }``).
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ALGORITHMS = ("rsa2048", "p256")
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

# DER of AlgorithmIdentifier: sha256WithRSAEncryption (NULL parameters) and ecdsa-with-SHA256.
_SIG_ALG_DER = {
    "rsa2048": bytes.fromhex("300d06092a864886f70d01010b0500"),
    "p256": bytes.fromhex("300a06082a8648ce3d040302"),
}


class KeyStoreError(ValueError):
    """A key-store operation refused: names the label and the rule."""

    def __init__(self, field: str, rule: str, message: str) -> None:
        super().__init__(f"{field}: {message} (rule: {rule})")
        self.field = field
        self.rule = rule


@runtime_checkable
class KeyStore(Protocol):
    """Where CA keys live. The private key never leaves the store; callers get signatures only."""

    def has_key(self, label: str) -> bool: ...

    def generate(self, label: str, algorithm: str) -> PublicKey:
        """Make a new key pair under ``label``; refuses when one exists (never overwrites)."""
        ...

    def public_key(self, label: str) -> PublicKey: ...

    def sign_certificate(self, label: str, builder: x509.CertificateBuilder) -> x509.Certificate: ...

    def sign_crl(
        self, label: str, builder: x509.CertificateRevocationListBuilder
    ) -> x509.CertificateRevocationList: ...


def algorithm_of(key: PublicKey | PrivateKey) -> str:
    """'rsa2048' or 'p256'; other keys are refused (the profiles allow only these two)."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey) and key.key_size == 2048:
        return "rsa2048"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) and isinstance(
        key.curve, ec.SECP256R1
    ):
        return "p256"
    raise KeyStoreError("public_key", "key_type", "only RSA-2048 and ECDSA P-256 keys are allowed")


def new_private_key(algorithm: str) -> PrivateKey:
    if algorithm == "rsa2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if algorithm == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    raise KeyStoreError("algorithm", "known_algorithm", f"{algorithm!r} is not one of {ALGORITHMS}")


def _check_label(label: str) -> str:
    if not isinstance(label, str) or not label or not all(c.isalnum() or c in "-_" for c in label):
        raise KeyStoreError("label", "label_format", f"{label!r}: letters, digits, '-' and '_' only")
    return label


class FileKeyStore:
    """Keys as PKCS#8 PEM files (mode 0600) in a directory: the embedded demo only."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self._cache: dict[str, PrivateKey] = {}

    def _path(self, label: str) -> Path:
        return self.directory / f"{_check_label(label)}.key.pem"

    def has_key(self, label: str) -> bool:
        return self._path(label).exists()

    def generate(self, label: str, algorithm: str) -> PublicKey:
        key = new_private_key(algorithm)
        path = self._path(label)
        self.directory.mkdir(parents=True, exist_ok=True)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            # O_EXCL: an existing CA key is never overwritten, even by a racing ceremony.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise KeyStoreError("label", "no_overwrite", f"a key {label!r} exists already") from None
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        self._cache[label] = key
        return key.public_key()

    def _private(self, label: str) -> PrivateKey:
        key = self._cache.get(label)
        if key is None:
            path = self._path(label)
            if not path.exists():
                raise KeyStoreError("label", "key_exists", f"no key {label!r} in {self.directory}")
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
                raise KeyStoreError("label", "key_type", f"{label!r} is not an RSA or EC key")
            key = self._cache[label] = loaded
        return key

    def public_key(self, label: str) -> PublicKey:
        return self._private(label).public_key()

    def sign_certificate(self, label: str, builder: x509.CertificateBuilder) -> x509.Certificate:
        return builder.sign(self._private(label), hashes.SHA256())

    def sign_crl(
        self, label: str, builder: x509.CertificateRevocationListBuilder
    ) -> x509.CertificateRevocationList:
        return builder.sign(self._private(label), hashes.SHA256())


# --- PKCS#11 ---------------------------------------------------------------------------------------

_DUMMY: dict[str, PrivateKey] = {}


def _dummy_key(algorithm: str) -> PrivateKey:
    if algorithm not in _DUMMY:
        _DUMMY[algorithm] = new_private_key(algorithm)
    return _DUMMY[algorithm]


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def assemble_signed(tbs: bytes, algorithm: str, signature: bytes) -> bytes:
    """DER of ``SEQUENCE { tbs, AlgorithmIdentifier, BIT STRING signature }``."""
    bit_string = b"\x03" + _der_length(len(signature) + 1) + b"\x00" + signature
    body = tbs + _SIG_ALG_DER[algorithm] + bit_string
    return b"\x30" + _der_length(len(body)) + body


DEFAULT_SOFTHSM_LIBRARY = "/usr/lib/softhsm/libsofthsm2.so"


class Pkcs11KeyStore:
    """Keys in a PKCS#11 token (python-pkcs11): generated non-extractable, used in the token.

    ``library`` is the module path (SoftHSM2: ``/usr/lib/softhsm/libsofthsm2.so``), ``token_label``
    the initialised token, ``user_pin`` its user PIN (from the environment or an operator prompt,
    never from a file in the data directory).
    """

    def __init__(self, library: str, token_label: str, user_pin: str) -> None:
        import pkcs11

        self._pkcs11: Any = pkcs11
        self._lib = pkcs11.lib(library)
        self._token = self._lib.get_token(token_label=token_label)
        self._session: Any = self._token.open(user_pin=user_pin, rw=True)
        self._lock = threading.Lock()
        self._algorithms: dict[str, str] = {}

    def close(self) -> None:
        with self._lock:
            self._session.close()

    def _find(self, label: str, object_class: Any) -> Any | None:
        found = list(
            self._session.get_objects(
                {
                    self._pkcs11.Attribute.LABEL: _check_label(label),
                    self._pkcs11.Attribute.CLASS: object_class,
                }
            )
        )
        return found[0] if found else None

    def has_key(self, label: str) -> bool:
        with self._lock:
            return self._find(label, self._pkcs11.ObjectClass.PRIVATE_KEY) is not None

    def generate(self, label: str, algorithm: str) -> PublicKey:
        p = self._pkcs11
        if algorithm not in ALGORITHMS:
            raise KeyStoreError("algorithm", "known_algorithm", f"{algorithm!r} is not one of {ALGORITHMS}")
        if self.has_key(label):
            raise KeyStoreError("label", "no_overwrite", f"a key {label!r} exists already in the token")
        private_template = {
            p.Attribute.SENSITIVE: True,
            p.Attribute.EXTRACTABLE: False,
            p.Attribute.TOKEN: True,
            p.Attribute.SIGN: True,
        }
        with self._lock:
            if algorithm == "rsa2048":
                self._session.generate_keypair(
                    p.KeyType.RSA,
                    2048,
                    label=label,
                    id=label.encode(),
                    store=True,
                    private_template=private_template,
                )
            else:
                from pkcs11.util.ec import encode_named_curve_parameters

                params = self._session.create_domain_parameters(
                    p.KeyType.EC,
                    {p.Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
                    local=True,
                )
                params.generate_keypair(
                    label=label, id=label.encode(), store=True, private_template=private_template
                )
        return self.public_key(label)

    def public_key(self, label: str) -> PublicKey:
        p = self._pkcs11
        with self._lock:
            pub = self._find(label, p.ObjectClass.PUBLIC_KEY)
            if pub is None:
                raise KeyStoreError("label", "key_exists", f"no key {label!r} in the token")
            if pub.key_type == p.KeyType.RSA:
                numbers = rsa.RSAPublicNumbers(
                    int.from_bytes(pub[p.Attribute.PUBLIC_EXPONENT], "big"),
                    int.from_bytes(pub[p.Attribute.MODULUS], "big"),
                )
                key: PublicKey = numbers.public_key()
            else:
                from pkcs11.util.ec import encode_ec_public_key

                loaded = serialization.load_der_public_key(encode_ec_public_key(pub))
                if not isinstance(loaded, ec.EllipticCurvePublicKey):
                    raise KeyStoreError("label", "key_type", f"{label!r} is not an EC key")
                key = loaded
        self._algorithms[label] = algorithm_of(key)
        return key

    def _algorithm(self, label: str) -> str:
        if label not in self._algorithms:
            self.public_key(label)
        return self._algorithms[label]

    def sign_bytes(self, label: str, data: bytes) -> bytes:
        """A signature over ``data`` made in the token (PKCS#1 v1.5/SHA-256 or DER ECDSA/SHA-256)."""
        p = self._pkcs11
        algorithm = self._algorithm(label)
        with self._lock:
            key = self._find(label, p.ObjectClass.PRIVATE_KEY)
            if key is None:
                raise KeyStoreError("label", "key_exists", f"no key {label!r} in the token")
            if algorithm == "rsa2048":
                return bytes(key.sign(data, mechanism=p.Mechanism.SHA256_RSA_PKCS))
            from pkcs11.util.ec import encode_ecdsa_signature

            # Hash here and use raw CKM_ECDSA: not every token offers CKM_ECDSA_SHA256.
            raw = key.sign(hashlib.sha256(data).digest(), mechanism=p.Mechanism.ECDSA)
            return bytes(encode_ecdsa_signature(raw))

    def sign_certificate(self, label: str, builder: x509.CertificateBuilder) -> x509.Certificate:
        algorithm = self._algorithm(label)
        draft = builder.sign(_dummy_key(algorithm), hashes.SHA256())
        tbs = draft.tbs_certificate_bytes
        return x509.load_der_x509_certificate(assemble_signed(tbs, algorithm, self.sign_bytes(label, tbs)))

    def sign_crl(
        self, label: str, builder: x509.CertificateRevocationListBuilder
    ) -> x509.CertificateRevocationList:
        algorithm = self._algorithm(label)
        draft = builder.sign(_dummy_key(algorithm), hashes.SHA256())
        tbs = draft.tbs_certlist_bytes
        return x509.load_der_x509_crl(assemble_signed(tbs, algorithm, self.sign_bytes(label, tbs)))


def keystore_from_settings(settings: Any) -> KeyStore:
    """The key store a process uses: a PKCS#11 token when ``KIBAN_PKCS11_LIBRARY`` is set (token
    ``KIBAN_PKCS11_TOKEN``, default "kiban"; PIN ``KIBAN_PKCS11_PIN``), else files in
    ``<data>/keys/`` — refused in production mode, where CA keys live only in a token."""
    library = os.environ.get("KIBAN_PKCS11_LIBRARY")
    if library:
        pin = os.environ.get("KIBAN_PKCS11_PIN")
        if not pin:
            raise KeyStoreError("KIBAN_PKCS11_PIN", "required", "the token's user PIN must be set")
        return Pkcs11KeyStore(library, os.environ.get("KIBAN_PKCS11_TOKEN", "kiban"), pin)
    if getattr(settings, "mode", "development") == "production":
        raise KeyStoreError(
            "KIBAN_PKCS11_LIBRARY",
            "production_needs_token",
            "production mode keeps CA keys in a PKCS#11 token",
        )
    return FileKeyStore(settings.keys_dir)
