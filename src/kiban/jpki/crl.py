"""CRLs (失効リスト): the full CRL, issuance-batch partitions, and the completeness check.

- :func:`publish_crl` signs the full CRL of a CA (CRL number, thisUpdate, nextUpdate a day later,
  a reason code on every entry and the invalidity date when known) and, once the CA's revoked
  count passes its ``partition_threshold``, one CRL per issuance batch (partition) carrying an
  issuingDistributionPoint with that partition's URL. CRL numbers come from one counter per CA,
  so they increase across the full CRL and the partitions alike.
- :func:`check_crl_complete` re-reads a published CRL and compares it with the database: every
  revoked or held certificate of that scope must be listed with its reason. A failed check emits
  ``jpki.crl_incomplete`` (the J-LIS drill "part of the CRL not published").
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import String, select, type_coerce
from sqlalchemy.orm import Session

from kiban.core import audit
from kiban.core.events import emit
from kiban.jpki import profiles
from kiban.jpki.keys import KeyStore
from kiban.jpki.models import Certificate, CertificateAuthority, CrlPublication
from kiban.jpki.service import (
    AUDIT_PURPOSE,
    AUDIT_ROLE,
    DEFAULT_ACTOR,
    REASONS,
    CaError,
    ca_certificate,
    get_ca,
)

log = logging.getLogger(__name__)

CRL_INTERVAL = timedelta(days=1)
# An entry stays listed until it has appeared on a CRL issued after the certificate expired
# (RFC 5280 §3.3): we keep it while not_after is later than thisUpdate minus two intervals.
RETENTION = 2 * CRL_INTERVAL
ALERT_EVENT = "jpki.crl_incomplete"


@dataclass(frozen=True)
class PublishedCrl:
    ca_id: str
    partition: int  # 0 = the full CRL
    crl_number: int
    url: str
    entries: int
    this_update: datetime
    next_update: datetime
    der: bytes
    check: CrlCheck | None = None


@dataclass
class CrlCheck:
    """The structured outcome of :func:`check_crl_complete`."""

    ok: bool
    ca_id: str | None
    partition: int | None
    crl_number: int | None
    signature_valid: bool
    expected: int
    listed: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    wrong_reason: list[str] = field(default_factory=list)
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# (serial hex, reason, revocation time, invalidity date, partition); times naive UTC, which is
# what cryptography stores, so no per-entry time-zone conversion is needed.
Entry = tuple[str, str, datetime, datetime | None, int]


def _naive_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):  # SQLite hands back its stored text: UTC, without offset
        parsed = datetime.fromisoformat(value)
        return parsed.astimezone(UTC).replace(tzinfo=None) if parsed.tzinfo else parsed
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
    raise TypeError(f"not a timestamp: {value!r}")


def _revoked_rows(
    session: Session, ca_id: str, this_update: datetime, partition: int | None = None
) -> list[Entry]:
    """The CA's revoked and held certificates listed at ``this_update`` (read raw: no ORM
    objects and no per-value type processing — a CRL may have millions of entries)."""
    query = select(
        Certificate.serial,
        Certificate.reason,
        type_coerce(Certificate.status_changed_at, String),
        type_coerce(Certificate.invalidity_date, String),
        Certificate.partition,
    ).where(
        Certificate.ca_id == ca_id,
        Certificate.status.in_(("revoked", "hold")),
        Certificate.not_after > this_update - RETENTION,
        Certificate.status_changed_at <= this_update,
    )
    if partition:
        query = query.where(Certificate.partition == partition)
    fallback = this_update.astimezone(UTC).replace(tzinfo=None)
    convert = _naive_utc
    return [
        (serial, reason or "unspecified", convert(changed) or fallback, convert(invalid), part)
        for serial, reason, changed, invalid, part in session.connection().execute(query)
    ]


def revoked_entries(entries: Iterable[Entry]) -> list[tuple[int, x509.RevokedCertificate]]:
    """(partition, RevokedCertificate) for each entry: built once, shared by full CRL and partitions.

    Uses the builder's constructor with ready ``Extension`` objects (one per reason, shared):
    the fluent setters re-validate and copy the extension list on every call."""
    reason_ext: dict[str, x509.Extension[x509.ExtensionType]] = {
        name: x509.Extension(x509.CRLReason.oid, False, x509.CRLReason(flag))
        for name, flag in REASONS.items()
    }
    invalidity_oid = x509.InvalidityDate.oid
    make = x509.RevokedCertificateBuilder
    out: list[tuple[int, x509.RevokedCertificate]] = []
    append = out.append
    for serial, reason, changed, invalid, part in entries:
        extensions: list[x509.Extension[x509.ExtensionType]] = [reason_ext[reason]]
        if invalid is not None:
            extensions.append(x509.Extension(invalidity_oid, False, x509.InvalidityDate(invalid)))
        append(
            (
                part,
                make(serial_number=int(serial, 16), revocation_date=changed, extensions=extensions).build(),
            )
        )
    return out


def _builder(
    ca_cert: x509.Certificate,
    number: int,
    this_update: datetime,
    next_update: datetime,
    revoked: list[x509.RevokedCertificate],
    idp_url: str | None,
) -> x509.CertificateRevocationListBuilder:
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    extensions = [
        x509.Extension(
            x509.AuthorityKeyIdentifier.oid,
            False,
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
        ),
        x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(number)),
    ]
    if idp_url is not None:
        extensions.append(
            x509.Extension(
                x509.IssuingDistributionPoint.oid,
                True,
                x509.IssuingDistributionPoint(
                    full_name=[x509.UniformResourceIdentifier(idp_url)],
                    relative_name=None,
                    only_contains_user_certs=True,
                    only_contains_ca_certs=False,
                    only_some_reasons=None,
                    indirect_crl=False,
                    only_contains_attribute_certs=False,
                ),
            )
        )
    # The constructor takes the whole list: add_revoked_certificate copies it each time (quadratic).
    return x509.CertificateRevocationListBuilder(
        issuer_name=ca_cert.subject,
        last_update=this_update,
        next_update=next_update,
        extensions=extensions,
        revoked_certificates=revoked,
    )


def publish_crl(
    session: Session,
    keystore: KeyStore,
    ca: CertificateAuthority | str,
    now: datetime,
    *,
    scope: str = "all",
    check: bool = True,
    actor: str = DEFAULT_ACTOR,
) -> list[PublishedCrl]:
    """Sign and record the CA's CRLs now: ``scope`` "all" (full, plus partitions past the
    threshold), "full" or "partitions". Each is checked complete unless ``check`` is False."""
    if scope not in ("all", "full", "partitions"):
        raise CaError("scope", "crl_scope", "must be 'all', 'full' or 'partitions'")
    if not isinstance(now, datetime) or now.tzinfo is None:
        raise CaError("now", "aware_datetime", "must be a timezone-aware datetime")
    ca_id = ca if isinstance(ca, str) else ca.id
    ca = get_ca(session, ca_id, for_update=True)
    this_update = now.astimezone(UTC).replace(microsecond=0)
    next_update = this_update + CRL_INTERVAL
    ca_cert = ca_certificate(ca)
    entries = revoked_entries(_revoked_rows(session, ca.id, this_update))
    urls = profiles.ca_urls(ca.base_url, ca.id)
    plan: list[tuple[int, str, str | None, list[x509.RevokedCertificate]]] = []
    if scope in ("all", "full"):
        plan.append((0, urls["crl"], None, [r for _, r in entries]))
    partitioned = ca.parent_id is not None and (
        scope == "partitions" or len(entries) > ca.partition_threshold
    )
    if scope in ("all", "partitions") and partitioned and ca.issued_count > 0:
        by_partition: dict[int, list[x509.RevokedCertificate]] = {}
        for partition, entry in entries:
            by_partition.setdefault(partition, []).append(entry)
        for partition in range(1, (ca.issued_count - 1) // ca.partition_size + 2):
            url = profiles.partition_crl_url(ca.base_url, ca.id, partition)
            plan.append((partition, url, url, by_partition.get(partition, [])))
    published: list[PublishedCrl] = []
    for partition, url, idp, listed in plan:
        ca.crl_number += 1
        crl = keystore.sign_crl(
            ca.key_label, _builder(ca_cert, ca.crl_number, this_update, next_update, listed, idp)
        )
        der = crl.public_bytes(Encoding.DER)
        published.append(
            PublishedCrl(ca.id, partition, ca.crl_number, url, len(listed), this_update, next_update, der)
        )
    session.flush()
    results: list[PublishedCrl] = []
    for item in published:
        outcome = check_crl_complete(session, item.der) if check else None
        session.add(
            CrlPublication(
                ca_id=item.ca_id,
                partition=item.partition,
                crl_number=item.crl_number,
                this_update=item.this_update,
                next_update=item.next_update,
                entries=item.entries,
                url=item.url,
                der=item.der,
                complete=outcome.ok if outcome is not None else True,
                published_at=this_update,
            )
        )
        audit.record(
            session,
            actor=actor,
            role=AUDIT_ROLE,
            action="publish",
            purpose=AUDIT_PURPOSE,
            subject="",
            items=["crl"],
            detail={
                "ca": item.ca_id,
                "partition": item.partition,
                "crl_number": item.crl_number,
                "entries": item.entries,
                "complete": outcome.ok if outcome is not None else None,
            },
            occurred_at=this_update,
        )
        results.append(PublishedCrl(**{**item.__dict__, "check": outcome}))
    session.flush()
    return results


def latest_crl(session: Session, ca_id: str, partition: int = 0) -> CrlPublication | None:
    """The newest CRL of a scope: what the CRL endpoint serves (a partition URL falls back to the
    full CRL while the CA publishes no partitions: a CRL without IDP covers every certificate)."""
    row = session.scalar(
        select(CrlPublication)
        .where(CrlPublication.ca_id == ca_id, CrlPublication.partition == partition)
        .order_by(CrlPublication.crl_number.desc())
        .limit(1)
    )
    if row is None and partition:
        return latest_crl(session, ca_id, 0)
    return row


def _partition_of(crl: x509.CertificateRevocationList, ca: CertificateAuthority) -> int | None:
    try:
        idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    except x509.ExtensionNotFound:
        return 0
    prefix = f"{ca.base_url}/crl/{ca.id}/"
    for name in idp.full_name or ():
        value = getattr(name, "value", "")
        if isinstance(value, str) and value.startswith(prefix) and value.endswith(".crl"):
            number = value[len(prefix) : -4]
            if number.isdigit():
                return int(number)
    return None


def check_crl_complete(session: Session, crl_der: bytes) -> CrlCheck:
    """Does this CRL list every revoked/held certificate of its scope, with the right reason?"""
    try:
        crl = x509.load_der_x509_crl(crl_der)
    except ValueError as exc:
        return CrlCheck(False, None, None, None, False, 0, 0, problem=f"unparseable CRL: {exc}")
    ca = next(
        (c for c in session.scalars(select(CertificateAuthority)) if ca_certificate(c).subject == crl.issuer),
        None,
    )
    if ca is None:
        return CrlCheck(False, None, None, None, False, 0, len(crl), problem="unknown issuer")
    number_ext = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    signature_valid = crl.is_signature_valid(ca_certificate(ca).public_key())  # type: ignore[arg-type]
    partition = _partition_of(crl, ca)
    if partition is None:
        return _alert(
            session,
            CrlCheck(
                False,
                ca.id,
                None,
                number_ext,
                signature_valid,
                0,
                len(crl),
                problem="issuingDistributionPoint names no partition of this CA",
            ),
        )
    this_update = crl.last_update_utc
    expected = {e[0]: e[1] for e in _revoked_rows(session, ca.id, this_update, partition or None)}
    listed: dict[str, str] = {}
    for revoked in crl:
        try:
            reason = revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason.value
        except x509.ExtensionNotFound:
            reason = "unspecified"
        listed[profiles.serial_hex(revoked.serial_number)] = reason
    missing = sorted(set(expected) - set(listed))
    extra = set(listed) - set(expected)
    unexpected: list[str] = []
    if extra:
        # Listed but not revoked at thisUpdate: tolerated only if its status changed since.
        rows = dict(
            session.execute(
                select(Certificate.serial, Certificate.status_changed_at).where(
                    Certificate.ca_id == ca.id, Certificate.serial.in_(sorted(extra)[:10_000])
                )
            )
        )
        unexpected = sorted(s for s in extra if rows.get(s) is None or rows[s] <= this_update)  # type: ignore[operator]
    wrong = sorted(s for s in set(expected) & set(listed) if expected[s] != listed[s])
    result = CrlCheck(
        ok=signature_valid and not missing and not unexpected and not wrong,
        ca_id=ca.id,
        partition=partition,
        crl_number=number_ext,
        signature_valid=signature_valid,
        expected=len(expected),
        listed=len(listed),
        missing=missing[:1000],
        unexpected=unexpected[:1000],
        wrong_reason=wrong[:1000],
    )
    return _alert(session, result) if not result.ok else result


def _alert(session: Session, result: CrlCheck) -> CrlCheck:
    log.error("incomplete or invalid CRL: %s", result.to_dict())
    emit(
        session,
        ALERT_EVENT,
        result.ca_id or "unknown",
        {
            "ca_id": result.ca_id,
            "partition": result.partition,
            "crl_number": result.crl_number,
            "signature_valid": result.signature_valid,
            "missing": result.missing[:100],
            "unexpected": result.unexpected[:100],
            "wrong_reason": result.wrong_reason[:100],
            "problem": result.problem,
        },
    )
    return result


def crl_urls(session: Session, ca_ids: Sequence[str] | None = None) -> dict[str, str]:
    """The full-CRL URL of each CA (for the serving layer and the operator UI)."""
    cas = session.scalars(select(CertificateAuthority)).all()
    return {c.id: profiles.ca_urls(c.base_url, c.id)["crl"] for c in cas if ca_ids is None or c.id in ca_ids}
