"""Verifier services (検証者向けサービス): the rules, no HTTP.

The registry of verifiers and their credentials, usage counts, 新旧紐付け, 基本4情報 provision with
the holder's consent (本人同意), the 発行記録 query and the CA operator's status views. Every
function works in the caller's session and transaction; nothing commits by itself. Changes and
reads of personal data are audit entries in the same transaction. docs/jpki-verifiers.md has the
reasons for each rule.

For the OCSP responder: :func:`identify_token` (Bearer token → :class:`VerifierIdentity` or
None) and :func:`record_usage` (count requests per verifier, service and JST day).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

from sqlalchemy import and_, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from kiban.core import audit
from kiban.core.database import utcnow
from kiban.jpki import profiles
from kiban.jpki import service as ca
from kiban.jpki.models import Certificate, CertificateAuthority, CrlPublication, IssuanceRecord
from kiban.jpki.verifiers import schemas
from kiban.jpki.verifiers.models import (
    CATEGORIES,
    CONSENT_METHODS,
    Verifier,
    VerifierConsent,
    VerifierToken,
    VerifierUsage,
)

log = logging.getLogger(__name__)

JST = ZoneInfo("Asia/Tokyo")
SERVICES = ("revocation", "links", "basic_info")
USAGE_SERVICES = ("ocsp", "crl", "links", "basic_info")
SERVICE_OF_USAGE = {"ocsp": "revocation", "crl": "revocation", "links": "links", "basic_info": "basic_info"}
CATEGORY_JA = {
    "national_body": "国の機関等",
    "local_government": "地方公共団体",
    "certified_business": "認定事業者",
    "delegate": "委託先",
}
SERVICE_JA = {"revocation": "失効情報（OCSP・CRL）", "links": "新旧紐付け", "basic_info": "基本4情報の提供"}
METHOD_JA = {"signed": "電子署名", "online": "オンライン", "written": "書面", "counter": "窓口"}
DEFAULT_OCSP_RATE = 50.0
MAX_OCSP_RATE = schemas.MAX_OCSP_RATE
TOKEN_PREFIX = "kbv_"
TOKEN_MAX_LENGTH = 200
MAX_CHAIN = 50
MAX_PAGE_SIZE = 100
MAX_COUNT = 1_000_000_000
AUDIT_PURPOSE = "公的個人認証 検証者サービス"
ROLE_OPERATOR = "national_operator"
ROLE_VERIFIER = "verifier"
_CODE = re.compile(schemas.CODE_PATTERN)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class VerifierError(ValueError):
    """A verifier-service request refused: ``field`` broke ``rule``; ``status`` 403/404/409/422."""

    def __init__(self, field: str, rule: str, message: str, *, status: int = 422) -> None:
        super().__init__(f"{field}: {message} (rule: {rule})")
        self.field = field
        self.rule = rule
        self.message = message
        self.status = status
        self.logged = False  # True once the refusal is in the audit log (commit it, then raise)


@dataclass(frozen=True)
class VerifierIdentity:
    """Who is asking: a registered, active verifier (its principal active too, for a delegate)."""

    code: str
    name: str
    category: str
    principal_code: str | None
    services: frozenset[str]
    ocsp_rate_per_second: float
    token_id: int | None = None

    def may(self, service: str) -> bool:
        return service in self.services

    def view(self) -> schemas.VerifierIdentityView:
        return schemas.VerifierIdentityView(
            code=self.code,
            name=self.name,
            category=cast(Any, self.category),
            principal_code=self.principal_code,
            services=[s for s in SERVICES if s in self.services],  # type: ignore[misc]
            ocsp_rate_per_second=self.ocsp_rate_per_second,
        )


def today_jst(now: datetime | None = None) -> date:
    return (now or utcnow()).astimezone(JST).date()


def _aware(name: str, value: datetime | None) -> datetime:
    if value is None:
        return utcnow()
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise VerifierError(name, "aware_datetime", "must be a timezone-aware datetime")
    return value


def _text(field: str, value: object, max_len: int, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise VerifierError(field, "string_type", "must be a string")
    value = value.strip()
    if not value and not allow_empty:
        raise VerifierError(field, "required", "must not be empty")
    if len(value) > max_len:
        raise VerifierError(field, "max_length", f"at most {max_len} characters")
    if _CONTROL.search(value):
        raise VerifierError(field, "control_characters", "control characters are not allowed")
    return value


def _services(value: object) -> set[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise VerifierError("services", "list", "a list of services")
    found = set()
    for item in value:
        if item not in SERVICES:
            raise VerifierError("services", "enum", f"each service is one of {SERVICES}")
        found.add(str(item))
    if not found:
        raise VerifierError("services", "too_short", "at least one service")
    return found


def _rate(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise VerifierError("ocsp_rate_per_second", "float_type", "must be a number")
    rate = float(value)
    if not (0 < rate <= MAX_OCSP_RATE):  # also refuses NaN
        raise VerifierError("ocsp_rate_per_second", "range", f"more than 0, at most {MAX_OCSP_RATE:g}")
    return rate


def services_of(verifier: Verifier) -> set[str]:
    flags = {
        "revocation": verifier.may_revocation,
        "links": verifier.may_links,
        "basic_info": verifier.may_basic_info,
    }
    return {name for name, on in flags.items() if on}


def _set_services(verifier: Verifier, services: set[str]) -> None:
    verifier.may_revocation = "revocation" in services
    verifier.may_links = "links" in services
    verifier.may_basic_info = "basic_info" in services


def _operator_audit(
    session: Session, actor: str, action: str, verifier: str, now: datetime, **detail: Any
) -> None:
    audit.record(
        session,
        actor=actor,
        role=ROLE_OPERATOR,
        action=action,
        purpose=AUDIT_PURPOSE,
        subject="",
        items=["verifier_registry"],
        detail={"verifier": verifier, **detail},
        occurred_at=now,
    )


# --- registry -------------------------------------------------------------------------------------


def get_verifier(session: Session, code: str, *, for_update: bool = False) -> Verifier:
    if not isinstance(code, str) or not _CODE.fullmatch(code):
        raise VerifierError("code", "pattern", "a verifier code is 2-32 of a-z, 0-9, '_' and '-'")
    query = select(Verifier).where(Verifier.code == code)
    if for_update:
        query = query.with_for_update()
    found = session.scalar(query)
    if found is None:
        raise VerifierError("code", "unknown_verifier", f"no verifier {code}", status=404)
    return found


def create_verifier(
    session: Session,
    *,
    code: str,
    name: str,
    category: str,
    services: Iterable[str],
    actor: str,
    ocsp_rate_per_second: float = DEFAULT_OCSP_RATE,
    principal_code: str | None = None,
    now: datetime | None = None,
) -> Verifier:
    """登録: a verifier and the services it may use. A delegate (委託先) names its principal and
    may use only services its principal may."""
    now = _aware("now", now)
    if not isinstance(code, str) or not _CODE.fullmatch(code):
        raise VerifierError("code", "pattern", "a verifier code is 2-32 of a-z, 0-9, '_' and '-'")
    name = _text("name", name, 200)
    if category not in CATEGORIES:
        raise VerifierError("category", "enum", f"one of {CATEGORIES}")
    wanted = _services(services)
    rate = _rate(ocsp_rate_per_second)
    if category == "delegate":
        if principal_code is None:
            raise VerifierError("principal_code", "required", "a delegate names the verifier it acts for")
        try:
            principal = get_verifier(session, principal_code)
        except VerifierError as exc:
            raise VerifierError("principal_code", exc.rule, exc.message) from None
        if principal.category == "delegate":
            raise VerifierError("principal_code", "not_a_delegate", "a delegate cannot have delegates")
        if not wanted <= services_of(principal):
            raise VerifierError(
                "services", "principal_services", "a delegate may only use its principal's services"
            )
    elif principal_code is not None:
        raise VerifierError("principal_code", "delegates_only", "only a delegate names a principal")
    if session.get(Verifier, code) is not None:
        raise VerifierError("code", "unique", f"verifier {code} exists already", status=409)
    verifier = Verifier(
        code=code,
        name=name,
        category=category,
        principal_code=principal_code,
        status="active",
        ocsp_rate_per_second=rate,
        created_at=now,
        updated_at=now,
    )
    _set_services(verifier, wanted)
    session.add(verifier)
    session.flush()
    _operator_audit(session, actor, "create", code, now, category=category, services=",".join(sorted(wanted)))
    return verifier


def update_verifier(
    session: Session,
    code: str,
    *,
    actor: str,
    name: str | None = None,
    services: Iterable[str] | None = None,
    ocsp_rate_per_second: float | None = None,
    now: datetime | None = None,
) -> Verifier:
    """Change name, services or OCSP rate. Narrowing a principal's services narrows what its
    delegates may do at once (a delegate's effective services are the intersection)."""
    now = _aware("now", now)
    verifier = get_verifier(session, code, for_update=True)
    changed: dict[str, Any] = {}
    if name is not None:
        verifier.name = _text("name", name, 200)
        changed["name"] = True
    if services is not None:
        wanted = _services(services)
        if verifier.principal_code is not None:
            principal = get_verifier(session, verifier.principal_code)
            if not wanted <= services_of(principal):
                raise VerifierError(
                    "services", "principal_services", "a delegate may only use its principal's services"
                )
        _set_services(verifier, wanted)
        changed["services"] = ",".join(sorted(wanted))
    if ocsp_rate_per_second is not None:
        verifier.ocsp_rate_per_second = _rate(ocsp_rate_per_second)
        changed["ocsp_rate_per_second"] = str(verifier.ocsp_rate_per_second)
    if not changed:
        raise VerifierError("request", "no_change", "name, services or ocsp_rate_per_second")
    verifier.updated_at = now
    session.flush()
    _operator_audit(session, actor, "update", code, now, **changed)
    return verifier


def suspend_verifier(
    session: Session, code: str, *, reason: str, actor: str, now: datetime | None = None
) -> Verifier:
    """利用停止: every credential of the verifier (and of its delegates) stops working at once."""
    now = _aware("now", now)
    reason = _text("reason", reason, 200)
    verifier = get_verifier(session, code, for_update=True)
    if verifier.status == "suspended":
        raise VerifierError("code", "active", f"verifier {code} is suspended already", status=409)
    verifier.status = "suspended"
    verifier.suspension_reason = reason
    verifier.updated_at = now
    session.flush()
    _operator_audit(session, actor, "suspend", code, now, reason=reason)
    return verifier


def resume_verifier(session: Session, code: str, *, actor: str, now: datetime | None = None) -> Verifier:
    now = _aware("now", now)
    verifier = get_verifier(session, code, for_update=True)
    if verifier.status == "active":
        raise VerifierError("code", "suspended", f"verifier {code} is not suspended", status=409)
    verifier.status = "active"
    verifier.suspension_reason = None
    verifier.updated_at = now
    session.flush()
    _operator_audit(session, actor, "resume", code, now)
    return verifier


def _view(verifier: Verifier, usage: dict[str, tuple[int, int]] | None = None) -> schemas.VerifierView:
    today, month = (usage or {}).get(verifier.code, (0, 0))
    return schemas.VerifierView(
        code=verifier.code,
        name=verifier.name,
        category=cast(Any, verifier.category),
        category_ja=CATEGORY_JA[verifier.category],
        principal_code=verifier.principal_code,
        services=[s for s in SERVICES if s in services_of(verifier)],  # type: ignore[misc]
        status=cast(Any, verifier.status),
        suspension_reason=verifier.suspension_reason,
        ocsp_rate_per_second=verifier.ocsp_rate_per_second,
        created_at=verifier.created_at,
        updated_at=verifier.updated_at,
        requests_today=today,
        requests_30_days=month,
    )


def list_verifiers(session: Session, *, now: datetime | None = None) -> list[schemas.VerifierView]:
    """The registry with each verifier's requests today and over the last 30 days (JST)."""
    today = today_jst(_aware("now", now))
    start = today - timedelta(days=29)
    totals: dict[str, tuple[int, int]] = {}
    rows = session.execute(
        select(VerifierUsage.verifier_code, VerifierUsage.day, func.sum(VerifierUsage.requests))
        .where(VerifierUsage.day >= start)
        .group_by(VerifierUsage.verifier_code, VerifierUsage.day)
    )
    for code, day, total in rows:
        on_day, month = totals.get(code, (0, 0))
        totals[code] = (on_day + (int(total) if day == today else 0), month + int(total))
    return [_view(v, totals) for v in session.scalars(select(Verifier).order_by(Verifier.code))]


def verifier_detail(session: Session, code: str, *, now: datetime | None = None) -> schemas.VerifierDetail:
    now = _aware("now", now)
    verifier = get_verifier(session, code)
    views = {v.code: v for v in list_verifiers(session, now=now)}
    tokens = session.scalars(
        select(VerifierToken).where(VerifierToken.verifier_code == code).order_by(VerifierToken.id)
    )
    delegates = session.scalars(
        select(Verifier.code).where(Verifier.principal_code == code).order_by(Verifier.code)
    )
    return schemas.VerifierDetail(
        verifier=views.get(code) or _view(verifier),
        tokens=[_token_view(t, now) for t in tokens],
        usage=usage(session, code, since=today_jst(now) - timedelta(days=29)),
        delegates=list(delegates),
    )


# --- credentials ----------------------------------------------------------------------------------


def hash_token(token: str) -> str:
    """SHA-256 of a token. Tokens are 256 random bits, so a fast hash is as safe as a slow one
    (nothing to brute-force) and keeps every OCSP request's look-up cheap."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _token_active(token: VerifierToken, now: datetime) -> bool:
    return token.revoked_at is None and (token.expires_at is None or token.expires_at > now)


def _token_view(token: VerifierToken, now: datetime) -> schemas.TokenView:
    return schemas.TokenView(
        id=token.id,
        hint=token.hint,
        label=token.label,
        created_at=token.created_at,
        created_by=token.created_by,
        expires_at=token.expires_at,
        revoked_at=token.revoked_at,
        replaced_by=token.replaced_by,
        active=_token_active(token, now),
    )


def issue_token(
    session: Session,
    code: str,
    *,
    actor: str,
    label: str = "",
    expires_at: datetime | None = None,
    now: datetime | None = None,
) -> schemas.IssuedToken:
    """A new API token for the verifier. The answer is the only place the token ever appears."""
    now = _aware("now", now)
    label = _text("label", label, 100, allow_empty=True)
    if expires_at is not None and _aware("expires_at", expires_at) <= now:
        raise VerifierError("expires_at", "future", "a token's expiry must be in the future")
    verifier = get_verifier(session, code)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = VerifierToken(
        verifier_code=verifier.code,
        token_hash=hash_token(token),
        hint=token[:10],
        label=label,
        created_at=now,
        created_by=actor,
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    _operator_audit(session, actor, "issue_token", code, now, handle=row.id)
    return schemas.IssuedToken(
        id=row.id, verifier_code=code, token=token, hint=row.hint, expires_at=row.expires_at
    )


def _token(session: Session, code: str, token_id: int) -> VerifierToken:
    get_verifier(session, code)
    row = session.get(VerifierToken, token_id) if isinstance(token_id, int) else None
    if row is None or row.verifier_code != code:
        raise VerifierError(
            "token_id", "unknown_token", f"verifier {code} has no token {token_id}", status=404
        )
    return row


def revoke_token(
    session: Session, code: str, token_id: int, *, actor: str, now: datetime | None = None
) -> schemas.TokenView:
    now = _aware("now", now)
    row = _token(session, code, token_id)
    if row.revoked_at is not None:
        raise VerifierError("token_id", "not_revoked", "the token is revoked already", status=409)
    row.revoked_at = now
    row.revoked_by = actor
    session.flush()
    _operator_audit(session, actor, "revoke_token", code, now, handle=row.id)
    return _token_view(row, now)


def rotate_token(
    session: Session,
    code: str,
    token_id: int,
    *,
    actor: str,
    overlap: timedelta = timedelta(hours=24),
    now: datetime | None = None,
) -> schemas.IssuedToken:
    """A new token replacing ``token_id``; the old one keeps working for ``overlap`` (0: stops now),
    so the verifier can deploy the new one without an outage."""
    now = _aware("now", now)
    if not isinstance(overlap, timedelta) or overlap < timedelta(0) or overlap > timedelta(days=7):
        raise VerifierError("overlap_hours", "range", "0 to 168 hours")
    old = _token(session, code, token_id)
    if not _token_active(old, now):
        raise VerifierError("token_id", "active_token", "only an active token is rotated", status=409)
    issued = issue_token(session, code, actor=actor, label=old.label, expires_at=old.expires_at, now=now)
    end = now + overlap
    if overlap == timedelta(0):
        old.revoked_at = now
        old.revoked_by = actor
    elif old.expires_at is None or old.expires_at > end:
        old.expires_at = end
    old.replaced_by = issued.id
    session.flush()
    _operator_audit(
        session,
        actor,
        "rotate_token",
        code,
        now,
        handle=old.id,
        new_handle=issued.id,
        overlap_hours=int(overlap.total_seconds() // 3600),
    )
    return issued


def _identity(session: Session, verifier: Verifier, token_id: int | None) -> VerifierIdentity | None:
    if verifier.status != "active":
        return None
    services = services_of(verifier)
    if verifier.principal_code is not None:
        principal = session.get(Verifier, verifier.principal_code)
        if principal is None or principal.status != "active":
            return None
        services &= services_of(principal)
    return VerifierIdentity(
        code=verifier.code,
        name=verifier.name,
        category=verifier.category,
        principal_code=verifier.principal_code,
        services=frozenset(services),
        ocsp_rate_per_second=verifier.ocsp_rate_per_second,
        token_id=token_id,
    )


def identify_token(session: Session, token: str, *, now: datetime | None = None) -> VerifierIdentity | None:
    """The verifier holding API token ``token``, or None (unknown, revoked or expired token,
    suspended verifier, or a delegate whose principal is suspended). Never raises for bad input."""
    if not isinstance(token, str) or not token or len(token) > TOKEN_MAX_LENGTH or not token.isascii():
        return None
    now = now if isinstance(now, datetime) and now.tzinfo is not None else utcnow()
    found = session.execute(
        select(VerifierToken, Verifier)
        .join(Verifier, Verifier.code == VerifierToken.verifier_code)
        .where(VerifierToken.token_hash == hash_token(token))
    ).first()
    if found is None:
        return None
    row, verifier = found
    if not _token_active(row, now):
        return None
    return _identity(session, verifier, row.id)


def identify_account(session: Session, organisation: str | None) -> VerifierIdentity:
    """The verifier a staff account with role ``verifier`` works for: its ``organisation`` is the
    verifier code. 403 when there is no such verifier or it is suspended."""
    if not organisation or not _CODE.fullmatch(organisation):
        raise VerifierError("organisation", "unknown_verifier", "the account names no verifier", status=403)
    verifier = session.get(Verifier, organisation)
    if verifier is None:
        raise VerifierError("organisation", "unknown_verifier", "the account names no verifier", status=403)
    identity = _identity(session, verifier, None)
    if identity is None:
        raise VerifierError("organisation", "verifier_suspended", "the verifier is suspended", status=403)
    return identity


# --- usage -----------------------------------------------------------------------------------------


def record_usage(
    session: Session, code: str, service: str, count: int = 1, *, on: date | None = None
) -> None:
    """Count ``count`` requests of ``service`` (ocsp, crl, links, basic_info) by verifier ``code``
    on JST day ``on`` (today). One upsert: safe under concurrent requests on both databases."""
    if service not in USAGE_SERVICES:
        raise VerifierError("service", "enum", f"one of {USAGE_SERVICES}")
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
        raise VerifierError("count", "range", f"an integer from 1 to {MAX_COUNT}")
    if session.get(Verifier, code) is None:
        raise VerifierError("code", "unknown_verifier", f"no verifier {code}", status=404)
    day = on or today_jst()
    values = {"verifier_code": code, "service": service, "day": day, "requests": count}
    keys = ["verifier_code", "service", "day"]
    if session.get_bind().dialect.name == "postgresql":
        pg = pg_insert(VerifierUsage).values(**values)
        statement: Any = pg.on_conflict_do_update(
            index_elements=keys, set_={"requests": VerifierUsage.requests + pg.excluded.requests}
        )
    else:
        lite = sqlite_insert(VerifierUsage).values(**values)
        statement = lite.on_conflict_do_update(
            index_elements=keys, set_={"requests": VerifierUsage.requests + lite.excluded.requests}
        )
    session.execute(statement)


def usage(
    session: Session, code: str, *, since: date | None = None, until: date | None = None
) -> list[schemas.UsageRow]:
    """A verifier's usage per day and service, newest day first."""
    query = select(VerifierUsage).where(VerifierUsage.verifier_code == code)
    if since is not None:
        query = query.where(VerifierUsage.day >= since)
    if until is not None:
        query = query.where(VerifierUsage.day <= until)
    rows = session.scalars(query.order_by(VerifierUsage.day.desc(), VerifierUsage.service))
    return [schemas.UsageRow(day=r.day, service=cast(Any, r.service), requests=r.requests) for r in rows]


# --- what verifiers ask ------------------------------------------------------------------------------


def _verifier_audit(
    session: Session,
    identity: VerifierIdentity,
    actor: str,
    action: str,
    subject: str,
    items: Sequence[str],
    now: datetime,
    *,
    flags: Iterable[str] = (),
    **detail: Any,
) -> None:
    audit.record(
        session,
        actor=actor,
        role=ROLE_VERIFIER,
        organisation=identity.code,
        action=action,
        purpose=AUDIT_PURPOSE,
        subject=subject,
        items=list(items),
        detail=detail,
        flags=flags,
        occurred_at=now,
    )


def _refuse(
    session: Session,
    identity: VerifierIdentity,
    actor: str,
    service: str,
    now: datetime,
    error: VerifierError,
    *,
    subject: str = "",
    serial: str = "",
) -> VerifierError:
    """Log a refusal (audit ``refuse`` with the rule) and hand the error back to raise."""
    log.info("verifier %s refused %s: %s", identity.code, service, error.rule)
    _verifier_audit(
        session, identity, actor, "refuse", subject, [service], now, rule=error.rule, serial=serial
    )
    error.logged = True
    return error


def _require(session: Session, identity: VerifierIdentity, actor: str, service: str, now: datetime) -> None:
    if not identity.may(service):
        raise _refuse(
            session,
            identity,
            actor,
            service,
            now,
            VerifierError("verifier", "service_not_registered", f"not registered for {service}", status=403),
        )


def parse_serial(value: object) -> str:
    """A serial as verifiers send it (hex, any case, optional colons; or an int) → 40 hex digits."""
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise VerifierError("serial", "string_type", "a serial is hexadecimal text")
    if isinstance(value, str) and (len(value) > 59 or not re.fullmatch(schemas.SERIAL_PATTERN, value)):
        raise VerifierError("serial", "hex", "a serial is up to 40 hexadecimal digits")
    try:
        return ca.normalise_serial(value)
    except ca.CaError as exc:
        raise VerifierError(
            "serial", exc.rule, "a serial is a positive integer of at most 20 octets"
        ) from None


def _find(session: Session, serial: str) -> Certificate:
    rows = list(
        session.scalars(select(Certificate).where(Certificate.serial == serial).order_by(Certificate.id))
    )
    if not rows:
        raise VerifierError("serial", "known_certificate", "no such certificate", status=404)
    # Serials are 159 random bits: two CAs sharing one is not expected; the oldest row answers.
    return rows[0]


def _status(cert: Certificate, now: datetime) -> schemas.CertificateStatus:
    return schemas.CertificateStatus(
        serial=cert.serial,
        ca_id=cert.ca_id,
        kind=cert.kind,
        status=cast(Any, cert.status),
        reason=cert.reason,
        status_changed_at=cert.status_changed_at,
        invalidity_date=cert.invalidity_date,
        not_before=cert.not_before,
        not_after=cert.not_after,
        expired=cert.not_after <= now,
    )


def certificate_status(
    session: Session, identity: VerifierIdentity, serial: str, *, actor: str, now: datetime | None = None
) -> schemas.CertificateStatus:
    """The status the OCSP responder would give, for the verifier's web page; counted as ``ocsp``.
    Not an audit entry (as OCSP answers are not): it names no person and the count is the record."""
    now = _aware("now", now)
    _require(session, identity, actor, "revocation", now)
    cert = _find(session, parse_serial(serial))
    record_usage(session, identity.code, "ocsp", on=today_jst(now))
    return _status(cert, now)


def _successor(session: Session, cert: Certificate, now: datetime) -> tuple[Certificate | None, str | None]:
    if cert.replaced_by:
        nxt = session.scalar(
            select(Certificate).where(Certificate.ca_id == cert.ca_id, Certificate.serial == cert.replaced_by)
        )
        if nxt is not None:
            return nxt, "renewal"
    if cert.resident_code and (cert.status != "good" or cert.not_after <= now):
        nxt = session.scalar(
            select(Certificate)
            .where(
                Certificate.resident_code == cert.resident_code,
                Certificate.kind == cert.kind,
                Certificate.id > cert.id,
            )
            .order_by(Certificate.id)
            .limit(1)
        )
        if nxt is not None:
            return nxt, "reissue"
    return None, None


def links(
    session: Session, identity: VerifierIdentity, serial: str, *, actor: str, now: datetime | None = None
) -> schemas.LinkChain:
    """新旧紐付け: the chain from ``serial`` to the newest certificate that replaced it."""
    now = _aware("now", now)
    _require(session, identity, actor, "links", now)
    try:
        cert = _find(session, parse_serial(serial))
    except VerifierError as exc:
        if exc.status == 404:
            raise _refuse(session, identity, actor, "links", now, exc) from None
        raise
    chain = [schemas.LinkStep(certificate=_status(cert, now), link=None)]
    seen = {cert.id}
    current = cert
    while len(chain) < MAX_CHAIN:
        nxt, how = _successor(session, current, now)
        if nxt is None or nxt.id in seen:
            break
        chain.append(schemas.LinkStep(certificate=_status(nxt, now), link=cast(Any, how)))
        seen.add(nxt.id)
        current = nxt
    last = chain[-1].certificate
    result = schemas.LinkChain(
        serial=cert.serial,
        chain=chain,
        current_serial=last.serial if last.status == "good" and not last.expired else None,
    )
    _verifier_audit(
        session,
        identity,
        actor,
        "read",
        cert.resident_code or "",
        ["新旧紐付け"],
        now,
        serial=cert.serial,
        ca=cert.ca_id,
        links=len(chain) - 1,
    )
    record_usage(session, identity.code, "links", on=today_jst(now))
    return result


# --- consent and 基本4情報 ---------------------------------------------------------------------------


def _consent_owner(identity: VerifierIdentity) -> str:
    # A delegate (委託先) acts for its principal: the holder consented to the principal.
    return identity.principal_code or identity.code


def _consent_active(consent: VerifierConsent, now: datetime) -> bool:
    return (
        consent.withdrawn_at is None
        and consent.given_at <= now
        and (consent.expires_at is None or consent.expires_at > now)
    )


def _consent_view(consent: VerifierConsent, now: datetime) -> schemas.Consent:
    return schemas.Consent(
        id=consent.id,
        verifier_code=consent.verifier_code,
        ca_id=consent.ca_id,
        serial=consent.serial,
        method=cast(Any, consent.method),
        evidence_sha256=consent.evidence_sha256,
        given_at=consent.given_at,
        expires_at=consent.expires_at,
        recorded_at=consent.recorded_at,
        recorded_by=consent.recorded_by,
        withdrawn_at=consent.withdrawn_at,
        withdrawn_by=consent.withdrawn_by,
        withdrawal_channel=consent.withdrawal_channel,
        active=_consent_active(consent, now),
    )


def record_consent(
    session: Session,
    identity: VerifierIdentity,
    serial: str,
    *,
    method: str,
    given_at: datetime,
    actor: str,
    expires_at: datetime | None = None,
    evidence_sha256: str | None = None,
    now: datetime | None = None,
) -> schemas.Consent:
    """本人同意を記録: the holder of ``serial`` consented (how, when, until when) that the verifier
    receive their current 基本4情報. The certificate must have been valid when they consented
    (they proved who they are with it)."""
    now = _aware("now", now)
    _require(session, identity, actor, "basic_info", now)
    if method not in CONSENT_METHODS:
        raise VerifierError("method", "enum", f"one of {CONSENT_METHODS}")
    given_at = _aware("given_at", given_at)
    if given_at > now + timedelta(minutes=5):
        raise VerifierError("given_at", "not_future", "a consent cannot be given in the future")
    if expires_at is not None and _aware("expires_at", expires_at) <= given_at:
        raise VerifierError("expires_at", "after_given", "must be later than given_at")
    if evidence_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", str(evidence_sha256)):
        raise VerifierError("evidence_sha256", "hex64", "64 lower-case hexadecimal digits")
    cert = _find(session, parse_serial(serial))
    if cert.resident_code is None or cert.kind not in profiles.PERSONAL_KINDS:
        raise VerifierError("serial", "personal_certificate", "consent is given with a personal certificate")
    ended = cert.status_changed_at if cert.status != "good" else None
    if not (cert.not_before <= given_at < cert.not_after) or (ended is not None and ended <= given_at):
        raise VerifierError(
            "given_at", "certificate_valid_at_consent", "the certificate was not valid when consent was given"
        )
    owner = _consent_owner(identity)
    existing = session.scalars(
        select(VerifierConsent).where(
            VerifierConsent.verifier_code == owner, VerifierConsent.serial == cert.serial
        )
    )
    if any(_consent_active(c, now) for c in existing):
        raise VerifierError(
            "serial", "consent_exists", "an active consent exists for this certificate", status=409
        )
    consent = VerifierConsent(
        verifier_code=owner,
        ca_id=cert.ca_id,
        serial=cert.serial,
        method=method,
        evidence_sha256=evidence_sha256,
        given_at=given_at,
        expires_at=expires_at,
        recorded_at=now,
        recorded_by=actor,
    )
    session.add(consent)
    session.flush()
    _verifier_audit(
        session,
        identity,
        actor,
        "create",
        cert.resident_code,
        ["本人同意"],
        now,
        consent=consent.id,
        serial=cert.serial,
        method=method,
    )
    return _consent_view(consent, now)


def consents(
    session: Session, identity: VerifierIdentity, *, serial: str | None = None, now: datetime | None = None
) -> list[schemas.Consent]:
    """The consents the verifier (or its principal) holds, newest first."""
    now = _aware("now", now)
    query = select(VerifierConsent).where(VerifierConsent.verifier_code == _consent_owner(identity))
    if serial is not None:
        query = query.where(VerifierConsent.serial == parse_serial(serial))
    rows = session.scalars(query.order_by(VerifierConsent.id.desc()).limit(200))
    return [_consent_view(c, now) for c in rows]


def withdraw_consent(
    session: Session,
    consent_id: int,
    *,
    channel: str,
    actor: str,
    identity: VerifierIdentity | None = None,
    resident_code: str | None = None,
    now: datetime | None = None,
) -> schemas.Consent:
    """同意の撤回: by the verifier (told by the holder; ``identity``), the holder themselves
    (``resident_code``: the portal), or the operator. Later provisions are refused."""
    now = _aware("now", now)
    if channel not in ("verifier", "holder", "operator"):
        raise VerifierError("channel", "enum", "verifier, holder or operator")
    consent = session.get(VerifierConsent, consent_id) if isinstance(consent_id, int) else None
    cert = (
        None
        if consent is None
        else session.scalar(
            select(Certificate).where(
                Certificate.ca_id == consent.ca_id, Certificate.serial == consent.serial
            )
        )
    )
    if consent is None or cert is None:
        raise VerifierError("consent_id", "unknown_consent", "no such consent", status=404)
    if channel == "verifier" and (identity is None or consent.verifier_code != _consent_owner(identity)):
        raise VerifierError("consent_id", "unknown_consent", "no such consent", status=404)
    if channel == "holder" and (resident_code is None or cert.resident_code != resident_code):
        raise VerifierError("consent_id", "unknown_consent", "no such consent", status=404)
    if consent.withdrawn_at is not None:
        raise VerifierError("consent_id", "not_withdrawn", "the consent is withdrawn already", status=409)
    consent.withdrawn_at = now
    consent.withdrawn_by = actor
    consent.withdrawal_channel = channel
    session.flush()
    audit.record(
        session,
        actor=actor,
        role={"verifier": ROLE_VERIFIER, "holder": "resident", "operator": ROLE_OPERATOR}[channel],
        organisation=identity.code if identity is not None else None,
        action="withdraw",
        purpose=AUDIT_PURPOSE,
        subject=cert.resident_code or "",
        items=["本人同意"],
        detail={"consent": consent.id, "serial": consent.serial, "verifier": consent.verifier_code},
        occurred_at=now,
    )
    return _consent_view(consent, now)


def _is_restricted(session: Session, resident_code: str, on: date) -> bool:
    # DV等支援措置, from the network's own copy of the measures (its public function).
    from kiban.network import service as network

    return network.is_restricted(session, resident_code, on)


def provide_basic_info(
    session: Session, identity: VerifierIdentity, serial: str, *, actor: str, now: datetime | None = None
) -> schemas.BasicInfo:
    """基本4情報の提供: the current 基本4情報 of the holder of ``serial`` — even when the certificate
    was revoked by a move — from the national copy, only with the holder's active consent to this
    verifier (or its principal). Refusals are logged; every provision is an audit entry."""
    now = _aware("now", now)
    _require(session, identity, actor, "basic_info", now)
    try:
        cert = _find(session, parse_serial(serial))
    except VerifierError as exc:
        if exc.status == 404:
            raise _refuse(session, identity, actor, "basic_info", now, exc) from None
        raise
    subject = cert.resident_code or ""
    if not cert.resident_code or cert.kind not in profiles.PERSONAL_KINDS:
        raise _refuse(
            session,
            identity,
            actor,
            "basic_info",
            now,
            VerifierError("serial", "personal_certificate", "not a personal certificate", status=404),
            serial=cert.serial,
        )
    owner = _consent_owner(identity)
    held = [
        c
        for c in session.scalars(
            select(VerifierConsent)
            .where(
                VerifierConsent.verifier_code == owner,
                VerifierConsent.ca_id == cert.ca_id,
                VerifierConsent.serial == cert.serial,
            )
            .order_by(VerifierConsent.id.desc())
        )
        if _consent_active(c, now)
    ]
    if not held:
        raise _refuse(
            session,
            identity,
            actor,
            "basic_info",
            now,
            VerifierError("serial", "consent_required", "the holder has not consented", status=403),
            subject=subject,
            serial=cert.serial,
        )
    current = _national_current(session, cert.resident_code)
    if current is None:
        raise _refuse(
            session,
            identity,
            actor,
            "basic_info",
            now,
            VerifierError(
                "serial", "not_in_national_copy", "the holder is not in the national copy", status=404
            ),
            subject=subject,
            serial=cert.serial,
        )
    restricted = _is_restricted(session, current.resident_code, today_jst(now))
    answer = schemas.BasicInfo(
        serial=cert.serial,
        certificate_status=cast(Any, cert.status),
        certificate_reason=cert.reason,
        name=f"{current.family_name}　{current.given_name}",
        name_kana=f"{current.family_name_kana}　{current.given_name_kana}",
        former_name=current.old_family_name,
        birth_date=current.birth_date,
        sex=cast(Any, current.sex),
        address=None if restricted else current.address,
        address_withheld=restricted,
        holder_status=cast(Any, current.status),
        holder_status_reason=current.reason_ja if current.status != "active" else None,
        as_of=current.effective_on,
        consent_id=held[0].id,
    )
    items = ["name", "name_kana", "old_name", "birth_date", "sex"] + ([] if restricted else ["address"])
    _verifier_audit(
        session,
        identity,
        actor,
        "provide",
        current.resident_code,
        items,
        now,
        flags=["dv_restricted"] if restricted else [],
        serial=cert.serial,
        ca=cert.ca_id,
        consent=held[0].id,
    )
    record_usage(session, identity.code, "basic_info", on=today_jst(now))
    return answer


def _national_current(session: Session, resident_code: str) -> Any:
    """The current version of the person's 機構保存本人確認情報, through the network's public API
    (``national_history``; a ``current_identity(code)`` there would read one row instead)."""
    from kiban.network import service as network

    versions = network.national_history(session, resident_code)
    current = [v for v in versions if v.is_current]
    return current[-1] if current else (versions[-1] if versions else None)


# --- 発行記録 ---------------------------------------------------------------------------------------


def issuance_records(
    session: Session,
    *,
    actor: str,
    role: str = ROLE_OPERATOR,
    serial: str | None = None,
    resident_code: str | None = None,
    ca_id: str | None = None,
    kind: str | None = None,
    since: date | None = None,
    until: date | None = None,
    page: int = 1,
    page_size: int = 50,
) -> schemas.IssuanceRecordPage:
    """発行記録: issuance records by serial, holder, CA, kind and JST date range, newest first.
    The holder's own view passes ``role="resident"`` and their ``resident_code``. Audited."""
    if role == "resident" and not resident_code:
        raise VerifierError("resident_code", "required", "a holder sees only their own records")
    if isinstance(page, bool) or not isinstance(page, int) or page < 1 or page > 100_000:
        raise VerifierError("page", "range", "1 to 100000")
    if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise VerifierError("page_size", "range", f"1 to {MAX_PAGE_SIZE}")
    where: list[Any] = []
    if serial:
        where.append(IssuanceRecord.serial == parse_serial(serial))
    if resident_code:
        if not re.fullmatch(r"\d{11}", resident_code):
            raise VerifierError("resident_code", "pattern", "11 digits")
        where.append(IssuanceRecord.resident_code == resident_code)
    if ca_id:
        if ca_id not in {d.id for d in ca.CA_DEFINITIONS}:
            raise VerifierError("ca_id", "enum", "an existing CA id")
        where.append(IssuanceRecord.ca_id == ca_id)
    if kind:
        if kind not in profiles.KINDS:
            raise VerifierError("kind", "enum", f"one of {profiles.KINDS}")
        where.append(IssuanceRecord.kind == kind)
    if since and until and since > until:
        raise VerifierError("until", "period_order", "until is before since")
    if since:
        where.append(IssuanceRecord.recorded_at >= _jst_midnight(since))
    if until:
        where.append(IssuanceRecord.recorded_at < _jst_midnight(until + timedelta(days=1)))
    total = session.scalar(select(func.count()).select_from(IssuanceRecord).where(*where)) or 0
    rows = session.scalars(
        select(IssuanceRecord)
        .where(*where)
        .order_by(IssuanceRecord.recorded_at.desc(), IssuanceRecord.id.desc())
        .offset((page - 1) * page_size)
        .limit(page_size)
    )
    records = [
        schemas.IssuanceRecordView(
            id=r.id,
            ca_id=r.ca_id,
            serial=r.serial,
            kind=r.kind,
            resident_code=r.resident_code,
            action=r.action,
            renewal_of=r.renewal_of,
            actor=r.actor,
            recorded_at=r.recorded_at,
        )
        for r in rows
    ]
    holders = sorted({r.resident_code for r in records if r.resident_code})
    audit.record(
        session,
        actor=actor,
        role=role,
        action="read",
        purpose=AUDIT_PURPOSE,
        # The holder when one is asked about (or when all rows are one holder's).
        subject=resident_code or (holders[0] if len(holders) == 1 else ""),
        items=["発行記録"],
        detail={
            "serial": serial or "",
            "ca": ca_id or "",
            "kind": kind or "",
            "rows": len(records),
            "page": page,
        },
    )
    return schemas.IssuanceRecordPage(records=records, total=total, page=page, page_size=page_size)


def _jst_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=JST).astimezone(UTC)


# --- the operator's views ------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyStoreInfo:
    kind: str  # file / pkcs11
    has_key: Callable[[str], bool] | None  # None: not looked at (a token is not opened for this)


def keystore_info(keys_dir: Path | None) -> KeyStoreInfo:
    """Which key store the CA uses (the same rule as ``keys.keystore_from_settings``), without
    opening a token."""
    if os.environ.get("KIBAN_PKCS11_LIBRARY"):
        return KeyStoreInfo("pkcs11", None)
    if keys_dir is None:
        return KeyStoreInfo("file", None)
    from kiban.jpki.keys import FileKeyStore

    return KeyStoreInfo("file", FileKeyStore(keys_dir).has_key)


def ca_status(
    session: Session, *, keystore: KeyStoreInfo, now: datetime | None = None
) -> list[schemas.CaStatus]:
    """Each CA: its key store, validity, certificates by status and CRL counter."""
    now = _aware("now", now)
    counts: dict[tuple[str, str], int] = {
        (ca_id, status): n
        for ca_id, status, n in session.execute(
            select(Certificate.ca_id, Certificate.status, func.count()).group_by(
                Certificate.ca_id, Certificate.status
            )
        )
    }
    out = []
    for c in session.scalars(
        select(CertificateAuthority).order_by(CertificateAuthority.hierarchy, CertificateAuthority.id)
    ):
        present = None
        if keystore.has_key is not None:
            try:
                present = keystore.has_key(c.key_label)
            except ValueError:
                present = False
        out.append(
            schemas.CaStatus(
                id=c.id,
                hierarchy=c.hierarchy,
                role=c.role,
                parent_id=c.parent_id,
                subject=c.subject,
                key_algorithm=c.key_algorithm,
                key_label=c.key_label,
                key_store=keystore.kind,
                key_present=present,
                not_before=c.not_before,
                not_after=c.not_after,
                valid=c.not_before <= now < c.not_after,
                days_left=max(0, (c.not_after - now).days),
                issued_count=c.issued_count,
                good=counts.get((c.id, "good"), 0),
                revoked=counts.get((c.id, "revoked"), 0),
                hold=counts.get((c.id, "hold"), 0),
                crl_number=c.crl_number,
            )
        )
    return out


def _month(session: Session, column: Any) -> Any:
    """YYYY-MM of a UTC timestamp column, in JST, on either database."""
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("Asia/Tokyo", column), "YYYY-MM")
    return func.strftime("%Y-%m", column, "+9 hours")


def statistics(session: Session, *, months: int = 12, now: datetime | None = None) -> schemas.Statistics:
    """Issuance (issue/renew) and revocations (by reason) per JST month and kind, for the last
    ``months`` months; and all certificates by kind and status."""
    now = _aware("now", now)
    if isinstance(months, bool) or not isinstance(months, int) or not 1 <= months <= 120:
        raise VerifierError("months", "range", "1 to 120")
    local = now.astimezone(JST)
    year, month = local.year, local.month - (months - 1)
    while month < 1:
        year, month = year - 1, month + 12
    start = datetime(year, month, 1, tzinfo=JST).astimezone(UTC)
    issued_month = _month(session, IssuanceRecord.recorded_at)
    issued = [
        schemas.CountRow(month=m, key=action, kind=kind, count=n)
        for m, action, kind, n in session.execute(
            select(issued_month, IssuanceRecord.action, IssuanceRecord.kind, func.count())
            .where(IssuanceRecord.recorded_at >= start)
            .group_by(issued_month, IssuanceRecord.action, IssuanceRecord.kind)
            .order_by(issued_month, IssuanceRecord.kind, IssuanceRecord.action)
        )
    ]
    revoked_month = _month(session, Certificate.status_changed_at)
    revoked = [
        schemas.CountRow(month=m, key=reason or "", kind=kind, count=n)
        for m, reason, kind, n in session.execute(
            select(revoked_month, Certificate.reason, Certificate.kind, func.count())
            .where(Certificate.status != "good", Certificate.status_changed_at >= start)
            .group_by(revoked_month, Certificate.reason, Certificate.kind)
            .order_by(revoked_month, Certificate.kind, Certificate.reason)
        )
    ]
    by_status: dict[str, dict[str, int]] = {}
    for kind, status, n in session.execute(
        select(Certificate.kind, Certificate.status, func.count()).group_by(
            Certificate.kind, Certificate.status
        )
    ):
        by_status.setdefault(kind, {"good": 0, "revoked": 0, "hold": 0})[status] = n
    return schemas.Statistics(
        since=f"{year:04d}-{month:02d}", issued=issued, revoked=revoked, by_status=by_status
    )


def crl_status(session: Session, *, now: datetime | None = None) -> list[schemas.CrlStatus]:
    """The newest CRL of each CA and partition: next update, completeness, and an alert when a CA
    (or, once it partitions, one of its issuance batches) has none (``missing``), its next update
    has passed (``overdue``) or the check failed (``incomplete``)."""
    now = _aware("now", now)
    newest = (
        select(CrlPublication.ca_id, CrlPublication.partition, func.max(CrlPublication.crl_number).label("n"))
        .group_by(CrlPublication.ca_id, CrlPublication.partition)
        .subquery()
    )
    rows = session.scalars(
        select(CrlPublication)
        .join(
            newest,
            and_(
                CrlPublication.ca_id == newest.c.ca_id,
                CrlPublication.partition == newest.c.partition,
                CrlPublication.crl_number == newest.c.n,
            ),
        )
        .order_by(CrlPublication.ca_id, CrlPublication.partition)
    ).all()
    published = {(r.ca_id, r.partition) for r in rows}
    out: list[schemas.CrlStatus] = []
    for c in session.scalars(select(CertificateAuthority).order_by(CertificateAuthority.id)):
        expected = [0]
        # Once a CA publishes partitions, every issuance batch so far must have its CRL: a batch
        # that started since the last publication is missing until the next one.
        if any(ca_id == c.id and part > 0 for ca_id, part in published) and c.issued_count > 0:
            expected += list(range(1, (c.issued_count - 1) // c.partition_size + 2))
        for part in expected:
            if (c.id, part) not in published:
                out.append(
                    schemas.CrlStatus(
                        ca_id=c.id,
                        partition=part,
                        crl_number=None,
                        this_update=None,
                        next_update=None,
                        entries=None,
                        url=None,
                        complete=None,
                        overdue=True,
                        alert="missing",
                    )
                )
    for r in rows:
        overdue = r.next_update <= now
        alert = "incomplete" if not r.complete else ("overdue" if overdue else None)
        out.append(
            schemas.CrlStatus(
                ca_id=r.ca_id,
                partition=r.partition,
                crl_number=r.crl_number,
                this_update=r.this_update,
                next_update=r.next_update,
                entries=r.entries,
                url=r.url,
                complete=r.complete,
                overdue=overdue,
                alert=alert,
            )
        )
    out.sort(key=lambda s: (s.ca_id, s.partition))
    return out


ALERT_JA = {
    "missing": "CRL が発行されていません",
    "overdue": "次回更新予定日時を過ぎています",
    "incomplete": "完全性検査で漏れが見つかりました",
}


def dashboard(
    session: Session, *, keystore: KeyStoreInfo, months: int = 12, now: datetime | None = None
) -> schemas.Dashboard:
    """Everything the operator's /jpki screen shows, with the alerts in Japanese."""
    now = _aware("now", now)
    cas = ca_status(session, keystore=keystore, now=now)
    crls = crl_status(session, now=now)
    alerts = [
        f"{s.ca_id}" + (f"（分割 {s.partition}）" if s.partition else "") + f": {ALERT_JA[s.alert]}"
        for s in crls
        if s.alert
    ]
    alerts += [f"{c.id}: 認証局証明書の有効期間外です" for c in cas if not c.valid]
    alerts += [f"{c.id}: 認証局の鍵が鍵保管庫にありません" for c in cas if c.key_present is False]
    return schemas.Dashboard(
        cas=cas,
        statistics=statistics(session, months=months, now=now),
        crls=crls,
        alerts=alerts,
        verifiers=list_verifiers(session, now=now),
    )


def holders_consents(
    session: Session, resident_code: str, *, now: datetime | None = None
) -> list[schemas.Consent]:
    """The consents a holder gave, through any of their certificates (for the resident portal)."""
    now = _aware("now", now)
    serials = select(Certificate.serial).where(Certificate.resident_code == resident_code)
    rows = session.scalars(
        select(VerifierConsent).where(VerifierConsent.serial.in_(serials)).order_by(VerifierConsent.id.desc())
    )
    return [_consent_view(c, now) for c in rows]
