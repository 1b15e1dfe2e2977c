"""The CA core (認証局): hierarchies, issuance, revocation rules, and the event handlers.

Every function takes the caller's session and writes in its transaction: the certificate row,
the 発行記録, the audit entry and the ``jpki.certificate_status_changed`` event commit together or
not at all. The CA never makes or sees a holder's private key: issuance takes a public key.
docs/jpki.md has the rules and the reasons for each choice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID
from sqlalchemy import Table, insert, select, update
from sqlalchemy.orm import Session

from kiban.core import audit
from kiban.core.database import utcnow
from kiban.core.events import DomainEvent, emit
from kiban.jpki import profiles
from kiban.jpki.keys import ALGORITHMS, KeyStore, PublicKey
from kiban.jpki.models import Certificate, CertificateAuthority, IssuanceRecord
from kiban.jpki.profiles import HolderInfo, Issuer, ProfileError

log = logging.getLogger(__name__)
_DER = Encoding.DER

STATUS_EVENT = "jpki.certificate_status_changed"
AUDIT_ROLE = "jpki_ca"
AUDIT_PURPOSE = "公的個人認証"
DEFAULT_ACTOR = "jpki-ca"

# RFC 5280 CRLReason names (as `cryptography` and `openssl crl -text` spell them).
REASONS: dict[str, x509.ReasonFlags] = {flag.value: flag for flag in x509.ReasonFlags}


@dataclass(frozen=True)
class CaDefinition:
    id: str
    hierarchy: str
    role: str
    parent: str | None
    common_name: str
    kinds: tuple[str, ...]


CA_DEFINITIONS: tuple[CaDefinition, ...] = (
    CaDefinition("jpki-root", "individual", "root", None, "Kiban JPKI Root CA", ()),
    CaDefinition(
        "jpki-sign", "individual", "signature", "jpki-root", "Kiban JPKI Signature CA", ("signature",)
    ),
    CaDefinition(
        "jpki-auth",
        "individual",
        "user_auth",
        "jpki-root",
        "Kiban JPKI User Authentication CA",
        ("user_auth",),
    ),
    CaDefinition(
        "jpki-mobile-sign",
        "individual",
        "mobile_signature",
        "jpki-root",
        "Kiban JPKI Mobile Signature CA",
        ("mobile_signature",),
    ),
    CaDefinition(
        "jpki-mobile-auth",
        "individual",
        "mobile_user_auth",
        "jpki-root",
        "Kiban JPKI Mobile User Authentication CA",
        ("mobile_user_auth",),
    ),
    CaDefinition("lgpki-root", "organisation", "root", None, "Kiban LGPKI Root CA", ()),
    CaDefinition(
        "lgpki-org",
        "organisation",
        "organisation",
        "lgpki-root",
        "Kiban LGPKI Organisation CA",
        ("organisation", "tls_server", "tls_client"),
    ),
)
KIND_CA: dict[str, str] = {kind: d.id for d in CA_DEFINITIONS for kind in d.kinds}
USER_AUTH_OF = {"signature": "user_auth", "mobile_signature": "mobile_user_auth"}
CARD_KINDS = ("signature", "user_auth")
ROOT_YEARS = 20
ISSUING_YEARS = 12
ORGANISATION_YEARS = 3
TLS_DAYS = 397
DEFAULT_PARTITION_SIZE = 100_000
DEFAULT_PARTITION_THRESHOLD = 50_000


class CaError(ValueError):
    """A CA operation refused: names the field and the rule; nothing changed."""

    def __init__(self, field: str, rule: str, message: str) -> None:
        super().__init__(f"{field}: {message} (rule: {rule})")
        self.field = field
        self.rule = rule


@dataclass(frozen=True)
class IssuedCertificate:
    """What an issuance returns."""

    ca_id: str
    serial: str  # 40 hex digits
    kind: str
    subject_id: str
    not_before: datetime
    not_after: datetime
    der: bytes
    partition: int
    replaced: str | None = None

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.der)


# --- hierarchies ----------------------------------------------------------------------------------


def _ca_name(definition: CaDefinition) -> x509.Name:
    organisation = (
        "Kiban JPKI (synthetic)" if definition.hierarchy == "individual" else "Kiban LGPKI (synthetic)"
    )
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
            x509.NameAttribute(NameOID.COMMON_NAME, definition.common_name),
        ]
    )


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def get_ca(session: Session, ca_id: str, *, for_update: bool = False) -> CertificateAuthority:
    ca = session.get(CertificateAuthority, ca_id, with_for_update=for_update or None)
    if ca is None:
        raise CaError("ca_id", "ca_exists", f"no CA {ca_id!r}: run `kiban ca init` first")
    return ca


def ca_certificate(ca: CertificateAuthority) -> x509.Certificate:
    return x509.load_der_x509_certificate(ca.certificate_der)


def issuer_of(ca: CertificateAuthority) -> Issuer:
    cert = ca_certificate(ca)
    return Issuer(ca_id=ca.id, name=cert.subject, certificate=cert, base_url=ca.base_url)


def init_hierarchies(
    session: Session,
    keystore: KeyStore,
    base_url: str,
    *,
    algorithm: str = "rsa2048",
    now: datetime | None = None,
    actor: str = "ca-ceremony",
    partition_size: int = DEFAULT_PARTITION_SIZE,
    partition_threshold: int = DEFAULT_PARTITION_THRESHOLD,
) -> list[CertificateAuthority]:
    """Create the individual and organisation hierarchies (鍵生成式典); idempotent.

    A CA that exists in the database is kept as it is. A CA missing from the database whose key
    already exists in the store is refused: a key is never overwritten nor silently adopted.
    """
    if algorithm not in ALGORITHMS:
        raise CaError("algorithm", "known_algorithm", f"{algorithm!r} is not one of {ALGORITHMS}")
    if not base_url.startswith(("http://", "https://")):
        raise CaError("base_url", "http_url", "must be an http(s) URL (it goes into every certificate)")
    if partition_size < 1 or partition_threshold < 0:
        raise CaError("partition_size", "positive", "partition_size ≥ 1 and partition_threshold ≥ 0")
    now = (now or utcnow()).replace(microsecond=0)
    result: list[CertificateAuthority] = []
    for definition in CA_DEFINITIONS:
        existing = session.get(CertificateAuthority, definition.id)
        if existing is not None:
            result.append(existing)
            continue
        label = definition.id
        if keystore.has_key(label):
            raise CaError(
                "key_label",
                "no_overwrite",
                f"a key {label!r} exists in the key store but no CA row: refusing to reuse or overwrite it",
            )
        public_key = keystore.generate(label, algorithm)
        name = _ca_name(definition)
        ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
        if definition.parent is None:
            years, issuer_name, parent_ski = ROOT_YEARS, name, ski
            constraints = x509.BasicConstraints(ca=True, path_length=None)
        else:
            parent = get_ca(session, definition.parent)
            parent_cert = ca_certificate(parent)
            years, issuer_name = ISSUING_YEARS, parent_cert.subject
            parent_ski = parent_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            constraints = x509.BasicConstraints(ca=True, path_length=0)
        not_after = (
            now.replace(year=now.year + years)
            if not (now.month == 2 and now.day == 29)
            else (now.replace(year=now.year + years, day=28))
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer_name)
            .public_key(public_key)
            .serial_number(profiles.new_serial())
            .not_valid_before(now)
            .not_valid_after(not_after)
            .add_extension(constraints, critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(ski, critical=False)
        )
        if definition.parent is not None:
            urls = profiles.ca_urls(base_url, definition.parent)
            builder = (
                builder.add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(parent_ski), critical=False
                )
                .add_extension(
                    x509.CRLDistributionPoints(
                        [
                            x509.DistributionPoint(
                                [x509.UniformResourceIdentifier(urls["crl"])], None, None, None
                            )
                        ]
                    ),
                    critical=False,
                )
                .add_extension(
                    x509.AuthorityInformationAccess(
                        [
                            x509.AccessDescription(
                                AuthorityInformationAccessOID.CA_ISSUERS,
                                x509.UniformResourceIdentifier(urls["ca_issuers"]),
                            ),
                        ]
                    ),
                    critical=False,
                )
                .add_extension(
                    x509.CertificatePolicies(
                        [x509.PolicyInformation(x509.ObjectIdentifier("2.5.29.32.0"), None)]
                    ),
                    critical=False,
                )
            )
        signer = definition.id if definition.parent is None else get_ca(session, definition.parent).key_label
        cert = keystore.sign_certificate(signer, builder)
        ca = CertificateAuthority(
            id=definition.id,
            hierarchy=definition.hierarchy,
            role=definition.role,
            parent_id=definition.parent,
            subject=name.rfc4514_string(),
            key_label=label,
            key_algorithm=algorithm,
            base_url=base_url.rstrip("/"),
            certificate_der=cert.public_bytes(_DER),
            not_before=now,
            not_after=not_after,
            crl_number=0,
            issued_count=0,
            partition_size=partition_size,
            partition_threshold=partition_threshold,
            created_at=now,
        )
        session.add(ca)
        session.flush()
        audit.record(
            session,
            actor=actor,
            role=AUDIT_ROLE,
            action="create",
            purpose=AUDIT_PURPOSE,
            subject="",
            items=["ca_key", "ca_certificate"],
            detail={"ca": definition.id, "algorithm": algorithm, "fingerprint_sha256": fingerprint(cert)},
            occurred_at=now,
        )
        result.append(ca)
    return result


def fingerprint(cert: x509.Certificate) -> str:
    from cryptography.hazmat.primitives import hashes

    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


# --- issuance core --------------------------------------------------------------------------------

# (serial, crl_url, partition) -> builder
BuilderFactory = Callable[[int, str, int], x509.CertificateBuilder]


@dataclass(frozen=True)
class _Item:
    kind: str
    make: BuilderFactory
    subject_id: str
    subject: str
    resident_code: str | None
    card_id: str | None
    not_before: datetime
    not_after: datetime
    renewal_of: Certificate | None


def _issue_many(
    session: Session, keystore: KeyStore, ca_id: str, items: Sequence[_Item], *, now: datetime, actor: str
) -> list[IssuedCertificate]:
    # The CA row lock serialises issuance per CA: it orders the batch counter (CRL partitions).
    ca = get_ca(session, ca_id, for_update=True)
    serials = [profiles.new_serial() for _ in items]
    hexes = [profiles.serial_hex(s) for s in serials]
    taken = set(
        session.scalars(
            select(Certificate.serial).where(Certificate.ca_id == ca_id, Certificate.serial.in_(hexes))
        )
    )
    while taken or len(set(hexes)) != len(hexes):  # unique per CA, however unlikely a clash is
        seen: set[str] = set()
        for i, h in enumerate(hexes):
            if h in taken or h in seen:
                serials[i] = profiles.new_serial()
                hexes[i] = profiles.serial_hex(serials[i])
            seen.add(hexes[i])
        taken = set(
            session.scalars(
                select(Certificate.serial).where(Certificate.ca_id == ca_id, Certificate.serial.in_(hexes))
            )
        )
    issued: list[IssuedCertificate] = []
    count = ca.issued_count
    cert_rows: list[dict[str, Any]] = []
    record_rows: list[dict[str, Any]] = []
    audit_rows: list[dict[str, Any]] = []
    for item, serial, serial_hex in zip(items, serials, hexes, strict=True):
        partition = count // ca.partition_size + 1
        count += 1
        crl_url = profiles.partition_crl_url(ca.base_url, ca.id, partition)
        certificate = keystore.sign_certificate(ca.key_label, item.make(serial, crl_url, partition))
        der = certificate.public_bytes(_DER)
        renewal_hex = item.renewal_of.serial if item.renewal_of is not None else None
        cert_rows.append(
            {
                "ca_id": ca.id,
                "serial": serial_hex,
                "kind": item.kind,
                "resident_code": item.resident_code,
                "card_id": item.card_id,
                "subject_id": item.subject_id,
                "subject": item.subject,
                "status": "good",
                "reason": None,
                "status_changed_at": None,
                "invalidity_date": None,
                "replaced_by": None,
                "renewal_of": renewal_hex,
                "partition": partition,
                "not_before": item.not_before,
                "not_after": item.not_after,
                "der": der,
            }
        )
        record_rows.append(
            {
                "ca_id": ca.id,
                "serial": serial_hex,
                "kind": item.kind,
                "resident_code": item.resident_code,
                "action": "renew" if renewal_hex else "issue",
                "renewal_of": renewal_hex,
                "actor": actor,
                "recorded_at": now,
            }
        )
        audit_rows.append(
            {
                "actor": actor,
                "role": AUDIT_ROLE,
                "action": "issue",
                "purpose": AUDIT_PURPOSE,
                "subject": item.resident_code or "",
                "items": ["certificate"],
                # kept small: the audit log canonicalises and hashes every byte (kind: see the CA)
                "detail": {
                    "ca": ca.id,
                    "serial": serial_hex,
                    **({"renewal_of": renewal_hex} if renewal_hex else {}),
                },
                "occurred_at": now,
            }
        )
        issued.append(
            IssuedCertificate(
                ca_id=ca.id,
                serial=serial_hex,
                kind=item.kind,
                subject_id=item.subject_id,
                not_before=item.not_before,
                not_after=item.not_after,
                der=der,
                partition=partition,
                replaced=renewal_hex,
            )
        )
    ca.issued_count = count
    # Core inserts: no ORM identity bookkeeping for rows this transaction does not touch again.
    connection = session.connection()
    connection.execute(insert(cast(Table, Certificate.__table__)), cert_rows)
    connection.execute(insert(cast(Table, IssuanceRecord.__table__)), record_rows)
    audit.record_many(session, audit_rows)
    for item, new in zip(items, issued, strict=True):
        if item.renewal_of is not None:
            _change_status(
                session,
                item.renewal_of,
                "revoked",
                "superseded",
                now=now,
                actor=actor,
                replaced_by=new.serial,
            )
    session.flush()
    return issued


def _check_now(now: datetime) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None:
        raise CaError("now", "aware_datetime", "must be a timezone-aware datetime")
    return now.astimezone(UTC).replace(microsecond=0)


def _renewed(
    session: Session, ca_id: str, kind: str, renewal_of: str | None, resident_code: str | None
) -> Certificate | None:
    if renewal_of is None:
        return None
    old = session.scalar(
        select(Certificate).where(
            Certificate.ca_id == ca_id, Certificate.serial == normalise_serial(renewal_of)
        )
    )
    if old is None or old.kind != kind:
        raise CaError("renewal_of", "same_kind", f"no {kind} certificate {renewal_of!r} of CA {ca_id}")
    if resident_code is not None and old.resident_code != resident_code:
        raise CaError("renewal_of", "same_holder", "the renewed certificate belongs to another holder")
    if old.status != "good":
        raise CaError("renewal_of", "good", f"certificate {old.serial} is {old.status}; issue anew instead")
    return old


@dataclass(frozen=True)
class PersonalRequest:
    """One holder's request: the card's public key, the holder, the card's expiry (有効期限)."""

    public_key: PublicKey
    holder: HolderInfo
    card_expiry: date
    renewal_of: str | None = None


def issue_personal_certificates(
    session: Session,
    keystore: KeyStore,
    kind: str,
    requests: Sequence[PersonalRequest],
    *,
    now: datetime,
    actor: str = DEFAULT_ACTOR,
    allow_adult_ward: bool = False,
) -> list[IssuedCertificate]:
    """Issue certificates of one personal ``kind`` in one go (a batch shares the CA lock)."""
    if kind not in profiles.PERSONAL_KINDS:
        raise CaError("kind", "personal_kind", f"{kind!r} is not one of {profiles.PERSONAL_KINDS}")
    now = _check_now(now)
    ca = get_ca(session, KIND_CA[kind])
    issuer = issuer_of(ca)
    today = profiles.jst_date(now)
    caps: dict[str, datetime] = {}
    if kind in profiles.SIGNATURE_KINDS:
        # The signature certificate never outlives the user-authentication one of the same card.
        card_ids = {r.holder.card_id for r in requests}
        for row in session.execute(
            select(Certificate.card_id, Certificate.not_after).where(
                Certificate.kind == USER_AUTH_OF[kind],
                Certificate.card_id.in_(card_ids),
                Certificate.status == "good",
                Certificate.not_after > now,
            )
        ):
            if row.card_id is not None:
                caps[row.card_id] = max(caps.get(row.card_id, row.not_after), row.not_after)
    items: list[_Item] = []
    for request in requests:
        holder = request.holder
        if not isinstance(holder, HolderInfo):
            raise CaError("holder", "type", "must be a HolderInfo")
        profiles.check_holder(holder)
        public_key = profiles.check_public_key(request.public_key)
        if not isinstance(request.card_expiry, date):
            raise CaError("card_expiry", "type", "must be a datetime.date")
        cap: datetime | None = None
        if kind in profiles.SIGNATURE_KINDS:
            if profiles.age_on(holder.birth_date, today) < profiles.SIGNATURE_MIN_AGE:
                raise ProfileError(
                    "holder.birth_date",
                    "min_age_15",
                    "the signature certificate is only for holders aged 15 or over",
                )
            if holder.adult_ward and not allow_adult_ward:
                raise ProfileError(
                    "holder.adult_ward",
                    "adult_ward",
                    "not issued to 成年被後見人 unless allow_adult_ward is set",
                )
            if holder.card_id not in caps:
                raise CaError(
                    "holder.card_id",
                    "user_auth_first",
                    "issue the user-authentication certificate of this card first",
                )
            cap = caps[holder.card_id]
            # computed once; character-rule errors surface before anything is signed
            names = profiles.personal_data_names(holder)[0]
        else:
            names = None
        old = _renewed(session, ca.id, kind, request.renewal_of, holder.resident_code)
        window = old is not None and profiles.in_renewal_window(old.not_after, now)
        not_after = profiles.personal_not_after(
            holder.birth_date, now, request.card_expiry, renewal_window=window, cap=cap
        )
        not_after = min(not_after, ca.not_after)
        subject_id = profiles.opaque_id()

        def make(
            serial: int,
            crl_url: str,
            _partition: int,
            *,
            _pk: PublicKey = public_key,
            _sid: str = subject_id,
            _end: datetime = not_after,
            _h: HolderInfo = holder,
            _names: list[x509.GeneralName] | None = names,
        ) -> x509.CertificateBuilder:
            return profiles.personal_builder(
                kind,
                issuer=issuer,
                public_key=_pk,
                serial=serial,
                subject_id=_sid,
                not_before=now,
                not_after=_end,
                crl_url=crl_url,
                holder=_h,
                personal_names=_names,
            )

        items.append(
            _Item(
                kind,
                make,
                subject_id,
                f"C=JP,CN={subject_id}",
                holder.resident_code,
                holder.card_id,
                now,
                not_after,
                old,
            )
        )
    return _issue_many(session, keystore, ca.id, items, now=now, actor=actor)


def issue_signature_certificate(
    session: Session,
    keystore: KeyStore,
    *,
    public_key: PublicKey,
    holder: HolderInfo,
    card_expiry: date,
    now: datetime,
    renewal_of: str | None = None,
    actor: str = DEFAULT_ACTOR,
    allow_adult_ward: bool = False,
) -> IssuedCertificate:
    """署名用電子証明書 for a card holder aged 15+ (after the card's user-auth certificate)."""
    return issue_personal_certificates(
        session,
        keystore,
        "signature",
        [PersonalRequest(public_key, holder, card_expiry, renewal_of)],
        now=now,
        actor=actor,
        allow_adult_ward=allow_adult_ward,
    )[0]


def issue_user_auth_certificate(
    session: Session,
    keystore: KeyStore,
    *,
    public_key: PublicKey,
    holder: HolderInfo,
    card_expiry: date,
    now: datetime,
    renewal_of: str | None = None,
    actor: str = DEFAULT_ACTOR,
) -> IssuedCertificate:
    """利用者証明用電子証明書: no personal data in the certificate; any age."""
    return issue_personal_certificates(
        session,
        keystore,
        "user_auth",
        [PersonalRequest(public_key, holder, card_expiry, renewal_of)],
        now=now,
        actor=actor,
    )[0]


def issue_mobile_signature_certificate(
    session: Session,
    keystore: KeyStore,
    *,
    public_key: PublicKey,
    holder: HolderInfo,
    card_expiry: date,
    now: datetime,
    renewal_of: str | None = None,
    actor: str = DEFAULT_ACTOR,
    allow_adult_ward: bool = False,
) -> IssuedCertificate:
    """スマートフォン用署名用電子証明書 (移動端末設備用): the signature profile on a phone."""
    return issue_personal_certificates(
        session,
        keystore,
        "mobile_signature",
        [PersonalRequest(public_key, holder, card_expiry, renewal_of)],
        now=now,
        actor=actor,
        allow_adult_ward=allow_adult_ward,
    )[0]


def issue_mobile_user_auth_certificate(
    session: Session,
    keystore: KeyStore,
    *,
    public_key: PublicKey,
    holder: HolderInfo,
    card_expiry: date,
    now: datetime,
    renewal_of: str | None = None,
    actor: str = DEFAULT_ACTOR,
) -> IssuedCertificate:
    """スマートフォン用利用者証明用電子証明書 (移動端末設備用)."""
    return issue_personal_certificates(
        session,
        keystore,
        "mobile_user_auth",
        [PersonalRequest(public_key, holder, card_expiry, renewal_of)],
        now=now,
        actor=actor,
    )[0]


def issue_organisation_certificate(
    session: Session,
    keystore: KeyStore,
    *,
    public_key: PublicKey,
    municipality_code: str,
    organisation: str,
    title: str,
    now: datetime,
    renewal_of: str | None = None,
    actor: str = DEFAULT_ACTOR,
) -> IssuedCertificate:
    """職責証明書 of a municipality's office (e.g. title="市長"), valid 3 years."""
    from kiban.core.identifiers import IdentifierError, validate_municipality_code

    now = _check_now(now)
    try:
        validate_municipality_code(municipality_code)
    except IdentifierError as exc:
        raise CaError("municipality_code", exc.rule, str(exc)) from exc
    for field, value in (("organisation", organisation), ("title", title)):
        if not isinstance(value, str) or not value.strip() or len(value) > 64:
            raise CaError(field, "length", "must be 1–64 characters")
    public_key = profiles.check_public_key(public_key)
    ca = get_ca(session, KIND_CA["organisation"])
    issuer = issuer_of(ca)
    old = _renewed(session, ca.id, "organisation", renewal_of, None)
    not_after = min(now + timedelta(days=365 * ORGANISATION_YEARS), ca.not_after)

    def make(serial: int, crl_url: str, _partition: int) -> x509.CertificateBuilder:
        return profiles.organisation_builder(
            issuer=issuer,
            public_key=public_key,
            serial=serial,
            not_before=now,
            not_after=not_after,
            crl_url=crl_url,
            municipality_code=municipality_code,
            organisation=organisation,
            title=title,
        )

    subject_id = f"{municipality_code}:{title}"[:64]
    item = _Item(
        "organisation",
        make,
        subject_id,
        f"O={organisation},OU={municipality_code},CN={title}",
        None,
        None,
        now,
        not_after,
        old,
    )
    return _issue_many(session, keystore, ca.id, [item], now=now, actor=actor)[0]


def issue_tls_certificate(
    session: Session,
    keystore: KeyStore,
    *,
    public_key: PublicKey,
    node_name: str,
    dns_names: Sequence[str],
    server: bool,
    now: datetime,
    renewal_of: str | None = None,
    actor: str = DEFAULT_ACTOR,
) -> IssuedCertificate:
    """A node's TLS server (``server=True``) or client certificate, valid 397 days."""
    now = _check_now(now)
    kind = "tls_server" if server else "tls_client"
    if not isinstance(node_name, str) or not node_name.strip() or len(node_name) > 64:
        raise CaError("node_name", "length", "must be 1–64 characters")
    names = list(dns_names)
    if server and not names:
        raise CaError("dns_names", "required", "a server certificate names at least one DNS name")
    for name in names:
        if (
            not isinstance(name, str)
            or not name
            or not all(p and (p.isalnum() or "-" in p) and p.isascii() for p in name.split("."))
        ):
            raise CaError("dns_names", "dns_name", f"{name!r} is not a DNS name")
    public_key = profiles.check_public_key(public_key)
    ca = get_ca(session, KIND_CA[kind])
    issuer = issuer_of(ca)
    old = _renewed(session, ca.id, kind, renewal_of, None)
    not_after = min(now + timedelta(days=TLS_DAYS), ca.not_after)

    def make(serial: int, crl_url: str, _partition: int) -> x509.CertificateBuilder:
        return profiles.tls_builder(
            kind,
            issuer=issuer,
            public_key=public_key,
            serial=serial,
            not_before=now,
            not_after=not_after,
            crl_url=crl_url,
            node_name=node_name,
            dns_names=names,
        )

    item = _Item(kind, make, node_name[:64], f"CN={node_name}", None, None, now, not_after, old)
    return _issue_many(session, keystore, ca.id, [item], now=now, actor=actor)[0]


OCSP_SIGNER_DAYS = 30


def issue_ocsp_signer_certificate(
    session: Session,
    keystore: KeyStore,
    *,
    ca_id: str,
    public_key: PublicKey,
    now: datetime,
    days: int = OCSP_SIGNER_DAYS,
    actor: str = DEFAULT_ACTOR,
) -> IssuedCertificate:
    """A delegated OCSP signer for ``ca_id`` (kind ``ocsp_signer``): the responder's own key pair,
    certified by the CA, so responses can be signed while the CA key stays offline."""
    now = _check_now(now)
    if not isinstance(days, int) or not 1 <= days <= 366:
        raise CaError("days", "range", "an OCSP signer lives 1–366 days")
    ca = get_ca(session, ca_id)
    if ca.parent_id is None:
        raise CaError("ca_id", "issuing_ca", "root CAs answer no OCSP; name an issuing CA")
    public_key = profiles.check_public_key(public_key)
    issuer = issuer_of(ca)
    not_after = min(now + timedelta(days=days), ca.not_after)

    def make(serial: int, crl_url: str, _partition: int) -> x509.CertificateBuilder:
        return profiles.ocsp_signer_builder(
            issuer=issuer,
            public_key=public_key,
            serial=serial,
            not_before=now,
            not_after=not_after,
            crl_url=crl_url,
        )

    item = _Item(
        "ocsp_signer",
        make,
        f"ocsp-{ca_id}"[:64],
        f"CN=OCSP responder for {ca_id}",
        None,
        None,
        now,
        not_after,
        None,
    )
    return _issue_many(session, keystore, ca.id, [item], now=now, actor=actor)[0]


# --- status changes ---------------------------------------------------------------------------------


def normalise_serial(serial: str | int) -> str:
    """Serials are stored as 40 lower-case hex digits; accept an int or hex in any case/padding."""
    if isinstance(serial, int):
        value = serial
    else:
        try:
            value = int(str(serial).replace(":", ""), 16)
        except ValueError:
            raise CaError("serial", "hex", f"{serial!r} is not a hexadecimal serial") from None
    if value <= 0 or value >= 1 << 160:
        raise CaError("serial", "range", "a serial is a positive integer of at most 20 octets")
    return profiles.serial_hex(value)


def find_certificate(session: Session, serial: str | int, *, ca_id: str | None = None) -> Certificate:
    query = select(Certificate).where(Certificate.serial == normalise_serial(serial))
    if ca_id is not None:
        query = query.where(Certificate.ca_id == ca_id)
    rows = list(session.scalars(query))
    if not rows:
        raise CaError("serial", "known_certificate", f"no certificate {serial}")
    if len(rows) > 1:
        raise CaError("ca_id", "required", "the serial exists at several CAs: name the CA")
    return rows[0]


def _change_status(
    session: Session,
    cert: Certificate,
    status: str,
    reason: str | None,
    *,
    now: datetime,
    actor: str,
    invalidity_date: datetime | None = None,
    replaced_by: str | None = None,
) -> Certificate:
    cert.status = status
    cert.reason = reason
    cert.status_changed_at = now
    cert.invalidity_date = invalidity_date
    if replaced_by is not None:
        cert.replaced_by = replaced_by
    action = {"revoked": "revoke", "hold": "hold", "good": "release"}[status]
    audit.record(
        session,
        actor=actor,
        role=AUDIT_ROLE,
        action=action,
        purpose=AUDIT_PURPOSE,
        subject=cert.resident_code or "",
        items=["certificate_status"],
        detail={
            "ca": cert.ca_id,
            "serial": cert.serial,
            "kind": cert.kind,
            "reason": reason or "",
            **({"replaced_by": replaced_by} if replaced_by else {}),
        },
        occurred_at=now,
    )
    emit(
        session,
        STATUS_EVENT,
        cert.serial,
        {
            "ca_id": cert.ca_id,
            "serial": cert.serial,
            "kind": cert.kind,
            "status": status,
            "reason": reason,
            "time": now.isoformat(),
            "invalidity_date": invalidity_date.isoformat() if invalidity_date else None,
            "replacement_serial": cert.replaced_by,
        },
        occurred_at=now,
    )
    return cert


def revoke(
    session: Session,
    serial: str | int,
    *,
    reason: str,
    now: datetime,
    actor: str = DEFAULT_ACTOR,
    ca_id: str | None = None,
    invalidity_date: datetime | None = None,
) -> Certificate:
    """失効: revoke a good or held certificate with an RFC 5280 reason (final)."""
    now = _check_now(now)
    if reason not in REASONS or reason in ("certificateHold", "removeFromCRL"):
        raise CaError("reason", "crl_reason", f"{reason!r} is not a revocation reason (use hold() to hold)")
    cert = find_certificate(session, serial, ca_id=ca_id)
    if cert.status == "revoked":
        raise CaError("serial", "not_revoked", f"certificate {cert.serial} is revoked already")
    if invalidity_date is not None and invalidity_date.tzinfo is None:
        raise CaError("invalidity_date", "aware_datetime", "must be a timezone-aware datetime")
    return _change_status(
        session, cert, "revoked", reason, now=now, actor=actor, invalidity_date=invalidity_date
    )


def revoke_on_request(
    session: Session,
    serial: str | int,
    *,
    key_compromise: bool,
    now: datetime,
    actor: str,
    ca_id: str | None = None,
) -> Certificate:
    """失効申請 by the holder: keyCompromise when they report the key lost or exposed, otherwise
    cessationOfOperation (they no longer want it)."""
    return revoke(
        session,
        serial,
        reason="keyCompromise" if key_compromise else "cessationOfOperation",
        now=now,
        actor=actor,
        ca_id=ca_id,
    )


def hold(
    session: Session,
    serial: str | int,
    *,
    now: datetime,
    actor: str = DEFAULT_ACTOR,
    ca_id: str | None = None,
) -> Certificate:
    """一時保留 (certificateHold)."""
    now = _check_now(now)
    cert = find_certificate(session, serial, ca_id=ca_id)
    if cert.status != "good":
        raise CaError("serial", "good", f"certificate {cert.serial} is {cert.status}, not good")
    return _change_status(session, cert, "hold", "certificateHold", now=now, actor=actor)


def release_hold(
    session: Session, serial: str | int, *, now: datetime, actor: str, ca_id: str | None = None
) -> Certificate:
    """一時利用停止の解除: only a smartphone user-authentication certificate's hold is ever lifted
    (by its holder); a card certificate's hold ends by revocation and re-issue."""
    now = _check_now(now)
    cert = find_certificate(session, serial, ca_id=ca_id)
    if cert.status != "hold":
        raise CaError("serial", "on_hold", f"certificate {cert.serial} is {cert.status}, not on hold")
    if cert.kind != "mobile_user_auth":
        raise CaError(
            "serial",
            "hold_never_released",
            f"a {cert.kind} certificate's hold is never released: revoke it and issue anew",
        )
    return _change_status(session, cert, "good", None, now=now, actor=actor)


# --- event handlers -------------------------------------------------------------------------------

IDENTITY_FIELDS = ("name", "birth_date", "sex", "address", "former_name", "name_kana")
DEATH_REASONS = frozenset({"death", "死亡"})
REMOVAL_REASONS = frozenset({"ex_officio_removal", "職権消除"})
HOLD_STATES = frozenset({"suspended", "lost", "一時停止"})
RESUME_STATES = frozenset({"resumed", "found", "一時停止解除"})
END_STATES = frozenset({"revoked", "abolished", "returned", "invalidated", "expired", "廃止", "返納"})


def basic_four(data: Mapping[str, Any]) -> dict[str, str]:
    """The 基本4情報 (+旧氏, 振り仮名) of an event payload, in comparable form.

    Accepts either ``name``/``address`` or the register's ``family_name``+``given_name`` and
    ``address_text`` fields.
    """
    name = data.get("name")
    if name is None and data.get("family_name") is not None:
        name = f"{data.get('family_name')}　{data.get('given_name') or ''}".strip()
    kana = data.get("name_kana")
    if kana is None and data.get("family_name_kana") is not None:
        kana = f"{data.get('family_name_kana')}　{data.get('given_name_kana') or ''}".strip()
    address = data.get("address_text", data.get("address"))
    if isinstance(address, Mapping):
        address = "".join(str(v) for v in address.values() if v)
    values = {
        "name": name,
        "birth_date": data.get("birth_date"),
        "sex": data.get("sex"),
        "address": address,
        "former_name": data.get("former_name", data.get("old_family_name")),
        "name_kana": kana,
    }
    return {k: "" if v is None else str(v) for k, v in values.items()}


def _active(session: Session, now: datetime, *conditions: Any) -> list[Certificate]:
    return list(
        session.scalars(
            select(Certificate)
            .where(Certificate.status != "revoked", Certificate.not_after > now, *conditions)
            .order_by(Certificate.id)
        )
    )


def _effective(payload: Mapping[str, Any]) -> datetime | None:
    for key in ("date", "effective_on"):
        value = payload.get(key)
        if value:
            try:
                return datetime.combine(date.fromisoformat(str(value)), time(0), profiles.JST).astimezone(UTC)
            except ValueError:
                raise CaError(f"payload.{key}", "iso_date", f"{value!r} is not an ISO date") from None
    return None


def handle_identity_changed(
    session: Session, event: DomainEvent, *, now: datetime | None = None
) -> list[str]:
    """Consume ``network.identity_changed`` (異動等情報): key 住民票コード; payload ``old`` and ``new``
    (基本4情報 as in :func:`basic_four`), ``reason`` (異動事由, e.g. relocation, death) and ``date``.

    death, 職権消除: every live certificate of the person → cessationOfOperation;
    a change of 氏名, 生年月日, 性別, 住所 (or 旧氏, 振り仮名, which the certificate also carries):
    the signature certificates (card and smartphone) → affiliationChanged, with the 異動年月日 as
    invalidity date. Returns the serials revoked.
    """
    now = _check_now(now or utcnow())
    payload = event.payload
    resident_code = str(payload.get("resident_code") or event.key)
    reason = str(payload.get("reason") or "")
    invalid_since = _effective(payload)
    actor = f"event:{event.type}"
    previous = payload.get("previous_resident_code")
    if previous and previous != resident_code:
        # 住民票コード変更: the code is not in any certificate, so nothing is revoked; the CA's
        # records follow the person to the new code (later events arrive under it).
        for table in (Certificate, IssuanceRecord):
            session.execute(
                update(table).where(table.resident_code == str(previous)).values(resident_code=resident_code)
            )
    if reason in DEATH_REASONS or reason in REMOVAL_REASONS:
        targets = _active(session, now, Certificate.resident_code == resident_code)
        revoke_reason = "cessationOfOperation"
    else:
        old = basic_four(payload.get("old") or {})
        new = basic_four(payload.get("new") or {})
        changed = [f for f in IDENTITY_FIELDS if old[f] != new[f]]
        if not changed:
            return []
        targets = _active(
            session,
            now,
            Certificate.resident_code == resident_code,
            Certificate.kind.in_(profiles.SIGNATURE_KINDS),
        )
        revoke_reason = "affiliationChanged"
    for cert in targets:
        _change_status(
            session, cert, "revoked", revoke_reason, now=now, actor=actor, invalidity_date=invalid_since
        )
    return [c.serial for c in targets]


def handle_card_state_changed(
    session: Session, event: DomainEvent, *, now: datetime | None = None
) -> list[str]:
    """Consume ``cards.state_changed``: key card id; payload ``state`` and optional ``reason``.

    suspended/lost (一時停止): both card certificates → certificateHold (never released);
    resumed/found: held card certificates are revoked (cessationOfOperation) — re-issue instead;
    revoked/abolished/returned/expired (廃止, 返納): both revoked — keyCompromise when ``reason`` is
    ``key_compromise``, else cessationOfOperation. Smartphone certificates are not the card's.
    """
    now = _check_now(now or utcnow())
    payload = event.payload
    card_id = str(payload.get("card_id") or event.key)
    state = str(payload.get("state") or "")
    actor = f"event:{event.type}"
    card = (Certificate.card_id == card_id, Certificate.kind.in_(CARD_KINDS))
    changed: list[Certificate] = []
    if state in HOLD_STATES:
        for cert in _active(session, now, *card, Certificate.status == "good"):
            changed.append(_change_status(session, cert, "hold", "certificateHold", now=now, actor=actor))
    elif state in RESUME_STATES:
        for cert in _active(session, now, *card, Certificate.status == "hold"):
            changed.append(
                _change_status(session, cert, "revoked", "cessationOfOperation", now=now, actor=actor)
            )
    elif state in END_STATES:
        reason = "keyCompromise" if payload.get("reason") == "key_compromise" else "cessationOfOperation"
        for cert in _active(session, now, *card):
            changed.append(_change_status(session, cert, "revoked", reason, now=now, actor=actor))
    else:
        log.info("cards.state_changed with state %r: nothing for the CA to do", state)
    return [c.serial for c in changed]


def replacement_of(session: Session, serial: str | int, *, ca_id: str | None = None) -> str | None:
    """新旧紐付け: the serial of the certificate that replaced this one (renewal), if any."""
    return find_certificate(session, serial, ca_id=ca_id).replaced_by


def certificates_of(
    session: Session,
    resident_code: str,
    *,
    kinds: Sequence[str] | None = None,
    live_only: bool = True,
) -> list[Certificate]:
    """A person's certificates (card and smartphone), oldest first, optionally of some ``kinds``
    only (e.g. the 移動端末設備用 pair). ``live_only``: not revoked and not expired (a held one is
    live). Read-only; the caller records the audit entry for its purpose."""
    if (
        not isinstance(resident_code, str)
        or len(resident_code) != 11
        or not resident_code.isascii()
        or not resident_code.isdigit()
    ):
        raise CaError("resident_code", "format", "住民票コード is 11 digits")
    query = select(Certificate).where(Certificate.resident_code == resident_code)
    if kinds is not None:
        if isinstance(kinds, str) or not all(isinstance(k, str) for k in kinds):
            raise CaError("kinds", "type", "must be a sequence of certificate kinds")
        unknown = sorted(set(kinds) - set(profiles.PERSONAL_KINDS))
        if unknown:
            raise CaError("kinds", "personal_kind", f"{unknown[0]!r} is not one of {profiles.PERSONAL_KINDS}")
        query = query.where(Certificate.kind.in_(list(kinds)))
    if live_only:
        query = query.where(Certificate.status != "revoked", Certificate.not_after > utcnow())
    return list(session.scalars(query.order_by(Certificate.id)))
