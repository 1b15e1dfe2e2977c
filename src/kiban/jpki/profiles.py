"""Certificate profiles (証明書プロファイル, SPEC K5/K8): OIDs, character rules, validity rules.

Everything here is pure (no database): the service layer feeds it the holder's data and the
issuing CA, and gets back a ``cryptography`` builder. docs/jpki.md explains each choice.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from functools import lru_cache

from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from kiban.jpki.keys import PublicKey, algorithm_of

JST = timezone(timedelta(hours=9), "JST")

# --- OIDs ------------------------------------------------------------------------------------------
# Personal data (基本4情報) mirrors the real card exactly: the J-LIS arc 1.2.392.200149.8.5.5, so a
# verifier written against real cards parses ours. Everything that asserts *our* policy or carries
# items the real arc has no number for lives under IANA's enterprise number for documentation,
# 32473 (RFC 5612): the data is synthetic, and a production deployment replaces the arc with its own
# registered one. (Tried first: a 2.25 UUID arc, refused by pyasn1-based tools such as pkilint for
# arcs above 32 bits; the X.660 example arc 2.999, which pkilint's fast decoder misreads.)
JPKI_PERSONAL_DATA = "1.2.392.200149.8.5.5"
OID_NAME = x509.ObjectIdentifier(JPKI_PERSONAL_DATA + ".1")  # 氏名
OID_NAME_FLAGS = x509.ObjectIdentifier(JPKI_PERSONAL_DATA + ".2")  # 氏名代替文字の位置
OID_SEX = x509.ObjectIdentifier(JPKI_PERSONAL_DATA + ".3")  # 性別
OID_BIRTH_DATE = x509.ObjectIdentifier(JPKI_PERSONAL_DATA + ".4")  # 生年月日
OID_ADDRESS = x509.ObjectIdentifier(JPKI_PERSONAL_DATA + ".5")  # 住所
OID_ADDRESS_FLAGS = x509.ObjectIdentifier(JPKI_PERSONAL_DATA + ".6")  # 住所代替文字の位置

KIBAN_ARC = "1.3.6.1.4.1.32473.392"  # RFC 5612 documentation PEN / 392 (Japan)
OID_FORMER_NAME = x509.ObjectIdentifier(KIBAN_ARC + ".5.1")  # 旧氏
OID_FORMER_NAME_FLAGS = x509.ObjectIdentifier(KIBAN_ARC + ".5.2")
OID_NAME_KANA = x509.ObjectIdentifier(KIBAN_ARC + ".5.3")  # 振り仮名 (katakana, same character rule)
OID_NAME_KANA_FLAGS = x509.ObjectIdentifier(KIBAN_ARC + ".5.4")

POLICIES: dict[str, str] = {
    "signature": KIBAN_ARC + ".1.1",
    "user_auth": KIBAN_ARC + ".1.3",
    "mobile_signature": KIBAN_ARC + ".1.11",
    "mobile_user_auth": KIBAN_ARC + ".1.13",
    "organisation": KIBAN_ARC + ".2.1",
    "tls_server": KIBAN_ARC + ".2.2",
    "tls_client": KIBAN_ARC + ".2.3",
    "ocsp_signer": KIBAN_ARC + ".3.1",
}
PERSONAL_KINDS = ("signature", "user_auth", "mobile_signature", "mobile_user_auth")
SIGNATURE_KINDS = ("signature", "mobile_signature")
KINDS = tuple(POLICIES)

SIGNATURE_MIN_AGE = 15
RENEWAL_WINDOW_MONTHS = 3
CERTIFICATE_BIRTHDAYS = 5
MAX_ADDRESS_LENGTH = 200
MAX_NAME_LENGTH = 100
SUBSTITUTE = "〓"  # U+3013 GETA MARK, JIS X 0208 0x222E: the 代替文字


class ProfileError(ValueError):
    """Input that a profile refuses: names the field and the rule; nothing was issued."""

    def __init__(self, field: str, rule: str, message: str) -> None:
        super().__init__(f"{field}: {message} (rule: {rule})")
        self.field = field
        self.rule = rule


# --- character set: JIS X 0208 + 補助漢字 (JIS X 0212) -------------------------------------------

# Unicode code points that name a JIS X 0208 character under the Microsoft mapping (cp932) but
# not under the JIS mapping Python's codecs use: the same character, so we map, not substitute.
_MAPPING_VARIANTS = {
    "\uff0d": "\u2212",  # FULLWIDTH HYPHEN-MINUS -> MINUS SIGN (0x215D, the "全角ハイフン" of addresses)
    "\uff5e": "\u301c",  # FULLWIDTH TILDE -> WAVE DASH (0x2141)
    "\u2225": "\u2016",  # PARALLEL TO -> DOUBLE VERTICAL LINE (0x2142)
    "\uffe0": "\u00a2",  # FULLWIDTH CENT SIGN (0x2171)
    "\uffe1": "\u00a3",  # FULLWIDTH POUND SIGN (0x2172)
    "\uffe2": "\u00ac",  # FULLWIDTH NOT SIGN (0x224C)
    "\u2014": "\u2015",  # EM DASH -> HORIZONTAL BAR (0x213D)
}
_JIS_DESIGNATIONS = (b"\x1b$B", b"\x1b$@", b"\x1b$(D")  # JIS X 0208-1983, -1978, JIS X 0212


def _to_wide(char: str) -> str:
    """ASCII is written in its full-width form (the certificate fields are double-byte only)."""
    if char == " ":
        return "\u3000"
    if "!" <= char <= "~":
        char = chr(ord(char) + 0xFEE0)
    return _MAPPING_VARIANTS.get(char, char)


@lru_cache(maxsize=65536)
def in_certificate_charset(char: str) -> bool:
    """True when ``char`` is a JIS X 0208 or JIS X 0212 (補助漢字) character.

    The test: Python's ``iso2022_jp_1`` codec encodes exactly ASCII, JIS X 0201 Roman, JIS X 0208
    and JIS X 0212; the character belongs when the encoding succeeds and starts with the escape
    sequence designating JIS X 0208 (ESC $ B / ESC $ @) or JIS X 0212 (ESC $ ( D).
    """
    if len(char) != 1:
        return False
    try:
        encoded = char.encode("iso2022_jp_1")
    except UnicodeEncodeError:
        return False
    return encoded.startswith(_JIS_DESIGNATIONS)


@dataclass(frozen=True)
class RestrictedText:
    """Text in the certificate character set, with one flag digit per character (1 = substituted)."""

    text: str
    flags: str

    @property
    def substituted(self) -> tuple[int, ...]:
        return tuple(i for i, flag in enumerate(self.flags) if flag == "1")


def restrict(value: str, field: str = "text") -> RestrictedText:
    """Write ``value`` in JIS X 0208 + 補助漢字: other characters become 〓 and are flagged."""
    if not isinstance(value, str) or not value.strip():
        raise ProfileError(field, "required", "must be a non-empty string")
    chars: list[str] = []
    flags: list[str] = []
    for original in value:
        char = _to_wide(original)
        if in_certificate_charset(char):
            chars.append(char)
            flags.append("0")
        else:
            chars.append(SUBSTITUTE)
            flags.append("1")
    return RestrictedText("".join(chars), "".join(flags))


# --- holder data --------------------------------------------------------------------------------


@dataclass(frozen=True)
class HolderInfo:
    """The card holder as the CA sees them: 基本4情報 plus what the profiles need."""

    resident_code: str  # 住民票コード (recorded, never written into a certificate)
    name: str  # 氏名, family and given name separated by a full-width space
    birth_date: date
    sex: int  # 1 male, 2 female, 3 unknown (the profile's codes)
    address: str  # from the prefecture, no postcode
    card_id: str
    name_kana: str | None = None  # 振り仮名
    former_name: str | None = None  # 旧氏
    adult_ward: bool = False  # 成年被後見人


def check_holder(holder: HolderInfo) -> None:
    if not isinstance(holder.resident_code, str) or not (
        len(holder.resident_code) == 11 and holder.resident_code.isdigit()
    ):
        raise ProfileError("holder.resident_code", "format", "must be 11 digits (住民票コード)")
    if holder.sex not in (1, 2, 3):
        raise ProfileError("holder.sex", "code", "must be 1 (male), 2 (female) or 3 (unknown)")
    if not isinstance(holder.birth_date, date) or isinstance(holder.birth_date, datetime):
        raise ProfileError("holder.birth_date", "type", "must be a datetime.date")
    if not isinstance(holder.card_id, str) or not holder.card_id or len(holder.card_id) > 64:
        raise ProfileError("holder.card_id", "format", "must be a non-empty string of at most 64 characters")
    if not isinstance(holder.name, str) or not holder.name.strip() or len(holder.name) > MAX_NAME_LENGTH:
        raise ProfileError("holder.name", "length", f"must be 1–{MAX_NAME_LENGTH} characters")
    if not isinstance(holder.address, str) or not holder.address.strip():
        raise ProfileError("holder.address", "required", "must be a non-empty string")
    if len(holder.address) > MAX_ADDRESS_LENGTH:
        raise ProfileError("holder.address", "max_length", f"must be at most {MAX_ADDRESS_LENGTH} characters")


# Era digit of the birth-date field: 1 明治 … 5 令和 (the day the era began).
_ERA_STARTS = (
    (5, date(2019, 5, 1)),
    (4, date(1989, 1, 8)),
    (3, date(1926, 12, 25)),
    (2, date(1912, 7, 30)),
    (1, date(1868, 1, 25)),
)


def encode_birth_date(day: date) -> str:
    """Era digit + 8 Gregorian digits, e.g. 1990-01-02 -> '419900102' (0 = unknown era)."""
    era = next((digit for digit, start in _ERA_STARTS if day >= start), 0)
    return f"{era}{day:%Y%m%d}"


# --- validity rules -------------------------------------------------------------------------------


def anniversary(birth: date, year: int) -> date:
    """The birthday (応当日) in ``year``; Feb 29 falls on Feb 28 in common years.

    民法143条2項 ただし書 (applied to ages by 年齢計算ニ関スル法律): a period counted in years whose
    last month has no corresponding day ends on that month's last day, so the holder's year of age
    ends with Feb 28; we take Feb 28 as their birthday for certificate expiry.
    """
    try:
        return birth.replace(year=year)
    except ValueError:
        return date(year, 2, 28)


def age_on(birth: date, day: date) -> int:
    """Completed years on ``day`` (年齢計算ニ関スル法律: the age is reached when the day before the
    birthday ends, so one is N on the birthday; a Feb 29 child is N on Mar 1 of a common year)."""
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def nth_birthday_after(birth: date, day: date, n: int) -> date:
    """The ``n``-th birthday strictly after ``day`` (a birthday on ``day`` itself does not count)."""
    year = day.year if anniversary(birth, day.year) > day else day.year + 1
    return anniversary(birth, year + n - 1)


def end_of_day_jst(day: date) -> datetime:
    return datetime.combine(day, time(23, 59, 59), JST).astimezone(UTC)


def jst_date(moment: datetime) -> date:
    return moment.astimezone(JST).date()


def add_months(day: date, months: int) -> date:
    month0 = day.month - 1 + months
    year, month = day.year + month0 // 12, month0 % 12 + 1
    for d in (day.day, 30, 29, 28):
        try:
            return date(year, month, d)
        except ValueError:
            continue
    raise AssertionError("unreachable")


def in_renewal_window(old_not_after: datetime, now: datetime) -> bool:
    """True in the last 3 months before ``old_not_after`` (JST calendar months)."""
    expiry = jst_date(old_not_after)
    return add_months(expiry, -RENEWAL_WINDOW_MONTHS) <= jst_date(now) <= expiry


def personal_not_after(
    birth: date,
    now: datetime,
    card_expiry: date,
    *,
    renewal_window: bool = False,
    cap: datetime | None = None,
) -> datetime:
    """End of validity: the 5th birthday after issuance (6th when renewed in the window), at the
    end of that day JST; never past the card's expiry nor ``cap`` (the user-auth cert's end)."""
    count = CERTIFICATE_BIRTHDAYS + (1 if renewal_window else 0)
    end = end_of_day_jst(nth_birthday_after(birth, jst_date(now), count))
    end = min(end, end_of_day_jst(card_expiry))
    if cap is not None:
        end = min(end, cap)
    if end <= now:
        raise ProfileError("card_expiry", "after_issuance", "the certificate would end before it begins")
    return end


# --- serials and names ------------------------------------------------------------------------------


def new_serial() -> int:
    """A positive 159-bit random serial (RFC 5280 allows 20 octets; the top bit stays 0)."""
    while True:
        value = secrets.randbits(159)
        if value >= 1 << 64:  # at least 64 random bits in any case
            return value


def serial_hex(serial: int) -> str:
    return format(serial, "040x")


def opaque_id() -> str:
    return secrets.token_hex(16)


def check_public_key(public_key: object) -> PublicKey:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise ProfileError("public_key", "key_type", "must be an RSA-2048 or ECDSA P-256 public key")
    try:
        algorithm_of(public_key)
    except ValueError as exc:
        raise ProfileError("public_key", "key_type", "must be an RSA-2048 or ECDSA P-256 public key") from exc
    return public_key


def _utf8(value: str) -> bytes:
    body = value.encode("utf-8")
    return b"\x0c" + _len(len(body)) + body


def _printable(value: str) -> bytes:
    body = value.encode("ascii")
    return b"\x13" + _len(len(body)) + body


def _len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def personal_data_names(holder: HolderInfo) -> tuple[list[x509.GeneralName], dict[str, str]]:
    """The subjectAltName otherName entries of a signature certificate, and the flag strings."""
    name = restrict(holder.name, "holder.name")
    address = restrict(holder.address, "holder.address")
    names: list[x509.GeneralName] = [
        x509.OtherName(OID_NAME, _utf8(name.text)),
        x509.OtherName(OID_BIRTH_DATE, _printable(encode_birth_date(holder.birth_date))),
        x509.OtherName(OID_SEX, _printable(str(holder.sex))),
        x509.OtherName(OID_ADDRESS, _utf8(address.text)),
        x509.OtherName(OID_NAME_FLAGS, _printable(name.flags)),
        x509.OtherName(OID_ADDRESS_FLAGS, _printable(address.flags)),
    ]
    flags = {"name": name.flags, "address": address.flags}
    if holder.former_name:
        former = restrict(holder.former_name, "holder.former_name")
        names += [
            x509.OtherName(OID_FORMER_NAME, _utf8(former.text)),
            x509.OtherName(OID_FORMER_NAME_FLAGS, _printable(former.flags)),
        ]
        flags["former_name"] = former.flags
    if holder.name_kana:
        kana = restrict(holder.name_kana, "holder.name_kana")
        names += [
            x509.OtherName(OID_NAME_KANA, _utf8(kana.text)),
            x509.OtherName(OID_NAME_KANA_FLAGS, _printable(kana.flags)),
        ]
        flags["name_kana"] = kana.flags
    return names, flags


def read_personal_data(certificate: x509.Certificate) -> dict[str, str]:
    """The personal-data otherNames of a certificate, decoded (for verifiers and tests)."""
    from asn1crypto.core import Asn1Value  # an independent DER parser

    labels = {
        OID_NAME: "name",
        OID_NAME_FLAGS: "name_flags",
        OID_SEX: "sex",
        OID_BIRTH_DATE: "birth_date",
        OID_ADDRESS: "address",
        OID_ADDRESS_FLAGS: "address_flags",
        OID_FORMER_NAME: "former_name",
        OID_FORMER_NAME_FLAGS: "former_name_flags",
        OID_NAME_KANA: "name_kana",
        OID_NAME_KANA_FLAGS: "name_kana_flags",
    }
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return {}
    out: dict[str, str] = {}
    for other in san.get_values_for_type(x509.OtherName):
        if other.type_id in labels:
            out[labels[other.type_id]] = str(Asn1Value.load(other.value).native)
    return out


# --- builders ------------------------------------------------------------------------------------


def ca_urls(base_url: str, ca_id: str) -> dict[str, str]:
    base = base_url.rstrip("/")
    return {
        "crl": f"{base}/crl/{ca_id}.crl",
        "ocsp": f"{base}/ocsp",
        "ca_issuers": f"{base}/ca/{ca_id}.cer",
    }


def partition_crl_url(base_url: str, ca_id: str, partition: int) -> str:
    return f"{base_url.rstrip('/')}/crl/{ca_id}/{partition}.crl"


@dataclass(frozen=True)
class Issuer:
    """What a builder needs from the issuing CA."""

    ca_id: str
    name: x509.Name
    certificate: x509.Certificate
    base_url: str


@lru_cache(maxsize=64)
def _issuer_extensions(issuer: Issuer) -> tuple[x509.Extension[x509.ExtensionType], ...]:
    """basicConstraints, AKI and AIA: the same in every certificate of one CA (built once)."""
    urls = ca_urls(issuer.base_url, issuer.ca_id)
    ski = issuer.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aia = x509.AuthorityInformationAccess(
        [
            x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(urls["ocsp"])
            ),
            x509.AccessDescription(
                AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(urls["ca_issuers"])
            ),
        ]
    )
    return (
        x509.Extension(x509.BasicConstraints.oid, True, x509.BasicConstraints(ca=False, path_length=None)),
        x509.Extension(
            x509.AuthorityKeyIdentifier.oid,
            False,
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
        ),
        x509.Extension(x509.AuthorityInformationAccess.oid, False, aia),
    )


@lru_cache(maxsize=4096)
def _crl_dp(crl_url: str) -> x509.Extension[x509.ExtensionType]:
    value = x509.CRLDistributionPoints(
        [x509.DistributionPoint([x509.UniformResourceIdentifier(crl_url)], None, None, None)]
    )
    return x509.Extension(x509.CRLDistributionPoints.oid, False, value)


def _base_extensions(
    issuer: Issuer, public_key: PublicKey, crl_url: str
) -> list[x509.Extension[x509.ExtensionType]]:
    basic, aki, aia = _issuer_extensions(issuer)
    ski = x509.Extension(
        x509.SubjectKeyIdentifier.oid, False, x509.SubjectKeyIdentifier.from_public_key(public_key)
    )
    return [basic, ski, aki, _crl_dp(crl_url), aia]


def _ext(value: x509.ExtensionType, critical: bool = False) -> x509.Extension[x509.ExtensionType]:
    return x509.Extension(value.oid, critical, value)


def _key_usage(
    *, digital_signature: bool = True, non_repudiation: bool = False, key_encipherment: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=non_repudiation,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _policy(kind: str) -> x509.CertificatePolicies:
    return x509.CertificatePolicies([x509.PolicyInformation(x509.ObjectIdentifier(POLICIES[kind]), None)])


_POLICY_EXT = {kind: _ext(_policy(kind)) for kind in POLICIES}
_KU_SIGNATURE = _ext(_key_usage(non_repudiation=True), critical=True)
_KU_AUTH = _ext(_key_usage(), critical=True)
_COUNTRY_JP = x509.NameAttribute(NameOID.COUNTRY_NAME, "JP")


def personal_builder(
    kind: str,
    *,
    issuer: Issuer,
    public_key: PublicKey,
    serial: int,
    subject_id: str,
    not_before: datetime,
    not_after: datetime,
    crl_url: str,
    holder: HolderInfo | None,
    personal_names: list[x509.GeneralName] | None = None,
) -> x509.CertificateBuilder:
    """署名用 / 利用者証明用 (card or smartphone): the subject is only an opaque id.

    ``personal_names`` (from :func:`personal_data_names`) saves recomputing them."""
    subject = x509.Name(
        [
            _COUNTRY_JP,
            x509.NameAttribute(NameOID.COMMON_NAME, subject_id),
        ]
    )
    extensions = _base_extensions(issuer, public_key, crl_url)
    extensions.append(_POLICY_EXT[kind])
    if kind in SIGNATURE_KINDS:
        if holder is None:
            raise ProfileError("holder", "required", "a signature certificate carries the 基本4情報")
        names = personal_names if personal_names is not None else personal_data_names(holder)[0]
        extensions.append(_ext(x509.SubjectAlternativeName(names)))
        extensions.append(_KU_SIGNATURE)
    else:
        extensions.append(_KU_AUTH)
    return x509.CertificateBuilder(
        issuer_name=issuer.name,
        subject_name=subject,
        public_key=public_key,
        serial_number=serial,
        not_valid_before=not_before,
        not_valid_after=not_after,
        extensions=extensions,
    )


def organisation_builder(
    *,
    issuer: Issuer,
    public_key: PublicKey,
    serial: int,
    not_before: datetime,
    not_after: datetime,
    crl_url: str,
    municipality_code: str,
    organisation: str,
    title: str,
) -> x509.CertificateBuilder:
    """職責証明書: the office (e.g. 市長) of a municipality, for signing issued documents."""
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, municipality_code),
            x509.NameAttribute(NameOID.COMMON_NAME, title),
        ]
    )
    return x509.CertificateBuilder(
        issuer_name=issuer.name,
        subject_name=subject,
        public_key=public_key,
        serial_number=serial,
        not_valid_before=not_before,
        not_valid_after=not_after,
        extensions=[
            *_base_extensions(issuer, public_key, crl_url),
            _POLICY_EXT["organisation"],
            _KU_SIGNATURE,
        ],
    )


def tls_builder(
    kind: str,
    *,
    issuer: Issuer,
    public_key: PublicKey,
    serial: int,
    not_before: datetime,
    not_after: datetime,
    crl_url: str,
    node_name: str,
    dns_names: list[str],
) -> x509.CertificateBuilder:
    """TLS server or client certificate of a node (node-to-node mutual TLS, SPEC K8)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Kiban nodes"),
            x509.NameAttribute(NameOID.COMMON_NAME, node_name),
        ]
    )
    eku = ExtendedKeyUsageOID.SERVER_AUTH if kind == "tls_server" else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = x509.CertificateBuilder(
        issuer_name=issuer.name,
        subject_name=subject,
        public_key=public_key,
        serial_number=serial,
        not_valid_before=not_before,
        not_valid_after=not_after,
        extensions=[
            *_base_extensions(issuer, public_key, crl_url),
            _POLICY_EXT[kind],
            _ext(_key_usage(key_encipherment=isinstance(public_key, rsa.RSAPublicKey)), critical=True),
            _ext(x509.ExtendedKeyUsage([eku])),
        ],
    )
    if dns_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False
        )
    return builder


def ocsp_signer_builder(
    *,
    issuer: Issuer,
    public_key: PublicKey,
    serial: int,
    not_before: datetime,
    not_after: datetime,
    crl_url: str,
) -> x509.CertificateBuilder:
    """Delegated OCSP signing certificate (RFC 6960 §4.2.2.2): EKU OCSPSigning and id-pkix-ocsp-nocheck,
    so clients do not ask about the responder's own certificate; kept short-lived instead."""
    organisation = issuer.name.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    subject = x509.Name(
        [
            _COUNTRY_JP,
            *organisation[:1],  # the CA's own organisation
            x509.NameAttribute(NameOID.COMMON_NAME, f"OCSP responder for {issuer.ca_id}"),
        ]
    )
    return x509.CertificateBuilder(
        issuer_name=issuer.name,
        subject_name=subject,
        public_key=public_key,
        serial_number=serial,
        not_valid_before=not_before,
        not_valid_after=not_after,
        extensions=[
            *_base_extensions(issuer, public_key, crl_url),
            _POLICY_EXT["ocsp_signer"],
            _KU_AUTH,
            _ext(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING])),
            _ext(x509.OCSPNoCheck()),
        ],
    )
