"""The kiosk centre (証明書交付センター): session protocol, refusals, fees and settlement (SPEC K6).

A session, as the centre sees it:

1. :meth:`Centre.open_session` — a registered kiosk (credential + interface version) gets a
   session id and a 32-byte challenge, usable once, for :data:`CHALLENGE_TTL`.
2. :meth:`Centre.authenticate` — the kiosk sends the card's user-authentication certificate and
   the card's signature over the challenge (the card signs only after its PIN). The centre checks
   the chain (issued by the JPKI user-authentication CA), validity, the CA's own status of the
   serial (what its OCSP responder answers), the card's state, the signature; then resolves the
   holder's 住民票コード (from the CA's issuance record) and current municipality (the national
   copy, 機構保存本人確認情報). The challenge is spent atomically: a replay is refused.
3. :meth:`Centre.request_document` — participation and age limit of the municipality for the
   type, DV restriction, then the request goes to the municipality's issuing function with a
   request id and a hash over every field. The answer must echo both, its data must hash to its
   ledger row, and the person(s) in it must be the authenticated holder (or their household,
   when asked) as the national copy knows them — otherwise nothing is printed.

Every refusal raises :class:`KioskError` (field, rule, a Japanese on-screen message) and is
logged in ``kiosk_refusals`` in its own transaction; nothing else is written.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import unicodedata
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from cryptography import x509
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from kiban.cards import service as cards
from kiban.cards import states as card_states
from kiban.cards.softcard import verify_signature
from kiban.core import audit
from kiban.core.database import utcnow
from kiban.core.documents import content_hash
from kiban.core.identifiers import IdentifierError, validate_municipality_code
from kiban.core.models.documents import IssuedDocument
from kiban.core.wareki import to_wareki
from kiban.jpki import service as jpki
from kiban.jpki.profiles import age_on
from kiban.network import service as network
from kiban.network.operations import current_identity

from .issuing import DOCUMENT_TYPES, HOUSEHOLD_TYPES, LEDGER_TYPES, IssuingFunction, MunicipalRequest, Router
from .models import (
    Kiosk,
    KioskIssuance,
    KioskOperator,
    KioskRefusal,
    KioskSession,
    Participation,
    WithdrawnVersion,
)
from .signing import printed_serial

T = TypeVar("T")
JST = ZoneInfo("Asia/Tokyo")

CHALLENGE_TTL = timedelta(seconds=60)
SESSION_TTL = timedelta(minutes=5)
MAX_CERTIFICATE_BYTES = 4096
MAX_SIGNATURE_BYTES = 512
SUPPORTED_VERSIONS = ("1", "2")
USER_AUTH_CA = jpki.KIND_CA["user_auth"]
KIOSK_PURPOSE = "コンビニ交付"

# What the kiosk screen says for each refusal (the rule is the key; the field is for logs and API).
MESSAGES: dict[str, str] = {
    "kiosk_unknown": "この端末は登録されていません。",
    "credential": "この端末の認証に失敗しました。",
    "kiosk_disabled": "この端末は現在ご利用いただけません。",
    "version_withdrawn": "端末のソフトウェア更新のため、現在ご利用いただけません。店員にお知らせください。",
    "version_unsupported": "この端末のソフトウェアには対応していません。",
    "session_unknown": "セッションが見つかりません。最初からやり直してください。",
    "other_kiosk": "セッションが見つかりません。最初からやり直してください。",
    "session_expired": "一定時間操作がなかったため終了しました。最初からやり直してください。",
    "challenge_used": "この認証はすでに使われています。最初からやり直してください。",
    "challenge_mismatch": "認証情報が一致しません。最初からやり直してください。",
    "not_authenticated": "カードの認証が済んでいません。",
    "session_closed": "このセッションは終了しています。",
    "der": "カードの電子証明書を読み取れませんでした。",
    "issuer": "このカードの電子証明書はご利用いただけません。",
    "certificate_unknown": "このカードの電子証明書はご利用いただけません。",
    "certificate_expired": "電子証明書の有効期限が切れています。市区町村の窓口で更新してください。",
    "certificate_revoked": "電子証明書が失効しています。市区町村の窓口にお問い合わせください。",
    "card_suspended": "このカードは一時停止中です。コールセンターか市区町村の窓口にお問い合わせください。",
    "card_expired": "このカードは有効期限が切れています。",
    "card_not_active": "このカードはご利用いただけません。",
    "signature_invalid": "カードの認証に失敗しました。",
    "pin_wrong": "暗証番号が違います。",
    "pin_locked": "暗証番号がロックされました。市区町村の窓口で再設定してください。",
    "holder_unknown": "お住まいの市区町村を確認できませんでした。",
    "moved_out": "転出等により住民票が消除されているため、この端末では交付できません。",
    "municipality_not_participating": "お住まいの市区町村はコンビニ交付に参加していません。",
    "document_not_offered": "お住まいの市区町村ではこの証明書をコンビニ交付していません。",
    "document_type": "この証明書は選べません。",
    "household_not_offered": "この証明書は世帯全員分を選べません。",
    "age_limit": "この証明書は年齢の制限によりこの端末では交付できません。",
    "dv_restricted": "この端末では交付できません。市区町村の窓口にお越しください。",
    "municipality_refused": "この証明書は交付できません。市区町村の窓口にお問い合わせください。",
    "municipality_unavailable": "市区町村のシステムに接続できません。しばらくしてからやり直してください。",
    "binding": "証明書の照合に失敗したため印刷しません。",
    "oversized": "要求が大きすぎます。",
    "type": "要求の形式が正しくありません。",
}


class KioskError(ValueError):
    """A refusal: ``field`` and ``rule`` for logs and the API, ``message`` for the kiosk screen."""

    def __init__(self, field: str, rule: str, detail: str | None = None, *, status: int = 422) -> None:
        self.field = field
        self.rule = rule
        self.message = MESSAGES.get(rule, "この操作はできません。")
        self.status = status
        self.logged = False
        super().__init__(f"{field}: {detail or self.message} (rule: {rule})")


@dataclass(frozen=True, slots=True)
class KioskCredential:
    """What every kiosk request carries: which kiosk, its secret, the interface version it speaks."""

    kiosk_id: str
    credential: str
    interface_version: str


@dataclass(frozen=True, slots=True)
class Challenge:
    session_id: str
    challenge: bytes
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class MenuItem:
    document_type: str
    name: str
    fee: int
    household: bool


@dataclass(frozen=True, slots=True)
class Menu:
    """What the authenticated holder may pick (no personal data beyond the municipality)."""

    session_id: str
    municipality_code: str
    items: tuple[MenuItem, ...]


@dataclass(frozen=True, slots=True)
class Printable:
    """A document the kiosk may print: checked end to end and bound to its session."""

    session_id: str
    request_id: str
    document_type: str
    serial: str
    pdf: bytes
    pdf_hash: str
    fee: int


# --------------------------------------------------------------------------- registry


def _hash_credential(credential: str) -> str:
    return hashlib.sha256(credential.encode()).hexdigest()


def _short_id(value: object, field: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 32 or not value.isascii():
        raise KioskError(field, "type", "1 to 32 ASCII characters")
    if not all(ch.isalnum() or ch in "-_" for ch in value):
        raise KioskError(field, "type", "letters, digits, - and _ only")
    return value


def register_operator(session: Session, operator_id: str, name: str) -> KioskOperator:
    """登録事業者: a kiosk chain."""
    _short_id(operator_id, "operator_id")
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise KioskError("name", "type", "1 to 100 characters")
    if session.get(KioskOperator, operator_id) is not None:
        raise KioskError("operator_id", "unique", "the operator exists", status=409)
    row = KioskOperator(operator_id=operator_id, name=name.strip(), created_at=utcnow())
    session.add(row)
    session.flush()
    return row


def register_kiosk(
    session: Session, operator_id: str, kiosk_id: str, store_name: str, interface_version: str = "2"
) -> tuple[Kiosk, str]:
    """A terminal of an operator; returns it and its credential (shown once, stored hashed)."""
    _short_id(kiosk_id, "kiosk_id")
    if session.get(KioskOperator, operator_id) is None:
        raise KioskError("operator_id", "kiosk_unknown", "no such operator", status=404)
    if session.get(Kiosk, kiosk_id) is not None:
        raise KioskError("kiosk_id", "unique", "the kiosk exists", status=409)
    if interface_version not in SUPPORTED_VERSIONS:
        raise KioskError("interface_version", "version_unsupported")
    credential = secrets.token_urlsafe(24)
    row = Kiosk(
        kiosk_id=kiosk_id,
        operator_id=operator_id,
        store_name=store_name,
        credential_hash=_hash_credential(credential),
        interface_version=interface_version,
        enabled=True,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row, credential


def withdraw_version(session: Session, interface_version: str, reason: str) -> None:
    """The drill: a kiosk update broke the interface; its requests are refused until restored."""
    if session.get(WithdrawnVersion, interface_version) is None:
        session.add(
            WithdrawnVersion(interface_version=interface_version, reason=reason, withdrawn_at=utcnow())
        )
        session.flush()


def restore_version(session: Session, interface_version: str) -> None:
    row = session.get(WithdrawnVersion, interface_version)
    if row is not None:
        session.delete(row)
        session.flush()


def set_participation(
    session: Session,
    municipality_code: str,
    document_type: str,
    *,
    fee: int,
    min_age: int = 15,
    enabled: bool = True,
) -> Participation:
    """A municipality opts in (or out) for one document type, with its fee and age limit."""
    try:
        validate_municipality_code(municipality_code)
    except IdentifierError as exc:
        raise KioskError("municipality_code", exc.rule, str(exc)) from exc
    if document_type not in DOCUMENT_TYPES:
        raise KioskError("document_type", "document_type", f"one of {sorted(DOCUMENT_TYPES)}")
    if not isinstance(fee, int) or not 0 <= fee <= 10_000:
        raise KioskError("fee", "type", "0 to 10,000 yen")
    if not isinstance(min_age, int) or not 0 <= min_age <= 20:
        raise KioskError("min_age", "type", "0 to 20")
    row = session.scalars(
        select(Participation).where(
            Participation.municipality_code == municipality_code, Participation.document_type == document_type
        )
    ).one_or_none()
    if row is None:
        row = Participation(municipality_code=municipality_code, document_type=document_type)
        session.add(row)
    row.fee, row.min_age, row.enabled = fee, min_age, enabled
    session.flush()
    return row


def participation_of(session: Session, municipality_code: str) -> list[Participation]:
    return list(
        session.scalars(
            select(Participation)
            .where(Participation.municipality_code == municipality_code)
            .order_by(Participation.document_type)
        )
    )


# --------------------------------------------------------------------------- the centre


def _now(now: datetime | None) -> datetime:
    moment = now or datetime.now(UTC)
    if moment.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return moment


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _plain_name(text: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFKC", text) if not ch.isspace())


def _persons(data: Any) -> list[Mapping[str, Any]]:
    """Every person entry (a mapping with 氏名 and 生年月日) anywhere in a document's data."""
    found: list[Mapping[str, Any]] = []
    if isinstance(data, Mapping):
        if "氏名" in data and "生年月日" in data:
            found.append(data)
        for value in data.values():
            if isinstance(value, (Mapping, list)):
                found.extend(_persons(value))
    elif isinstance(data, list):
        for value in data:
            found.extend(_persons(value))
    return found


class Centre:
    """The centre: owns its transactions (the municipal call happens outside any of them)."""

    def __init__(
        self,
        session_maker: sessionmaker[Session],
        router: Router | IssuingFunction,
        *,
        challenge_ttl: timedelta = CHALLENGE_TTL,
        session_ttl: timedelta = SESSION_TTL,
        clock: Callable[[], datetime] | None = None,
        require_signed: bool = False,
    ) -> None:
        self.session_maker = session_maker
        self.router = router if isinstance(router, Router) else Router(router)
        self.challenge_ttl = challenge_ttl
        self.session_ttl = session_ttl
        self.clock = clock or (lambda: datetime.now(UTC))
        self.require_signed = require_signed

    # ----------------------------------------------------------------- plumbing

    @contextmanager
    def _refusals(self, kiosk_id: object, session_id: object) -> Iterator[None]:
        try:
            yield
        except KioskError as exc:
            self.log_refusal(kiosk_id, session_id, exc)
            raise

    def log_refusal(self, kiosk_id: object, session_id: object, exc: KioskError) -> None:
        """Write the refusal in a transaction of its own (once per error)."""
        if exc.logged:
            return
        exc.logged = True
        kid = kiosk_id[:32] if isinstance(kiosk_id, str) else None
        sid = session_id[:32] if isinstance(session_id, str) else None
        with self.session_maker.begin() as s:
            s.add(
                KioskRefusal(
                    kiosk_id=kid,
                    session_id=sid,
                    field=exc.field[:64],
                    rule=exc.rule[:64],
                    message=str(exc)[:500],
                    at=utcnow(),
                )
            )

    def _kiosk(self, s: Session, cred: KioskCredential) -> Kiosk:
        if not isinstance(cred, KioskCredential):
            raise KioskError("credential", "type")
        if not isinstance(cred.kiosk_id, str) or len(cred.kiosk_id) > 32:
            raise KioskError("kiosk_id", "kiosk_unknown", status=403)
        kiosk = s.get(Kiosk, cred.kiosk_id)
        if kiosk is None:
            raise KioskError("kiosk_id", "kiosk_unknown", status=403)
        given = cred.credential if isinstance(cred.credential, str) else ""
        if not hmac.compare_digest(_hash_credential(given[:200]), kiosk.credential_hash):
            raise KioskError("credential", "credential", status=403)
        if not kiosk.enabled:
            raise KioskError("kiosk_id", "kiosk_disabled", status=403)
        version = cred.interface_version
        if not isinstance(version, str) or version not in SUPPORTED_VERSIONS:
            raise KioskError("interface_version", "version_unsupported", status=409)
        withdrawn = s.get(WithdrawnVersion, version)
        if withdrawn is not None:
            raise KioskError("interface_version", "version_withdrawn", withdrawn.reason, status=409)
        kiosk.interface_version = version
        kiosk.last_seen_at = utcnow()
        return kiosk

    def _session(self, s: Session, kiosk: Kiosk, session_id: object, moment: datetime) -> KioskSession:
        if not isinstance(session_id, str) or len(session_id) != 32:
            raise KioskError("session_id", "session_unknown", status=404)
        row = s.get(KioskSession, session_id)
        if row is None:
            raise KioskError("session_id", "session_unknown", status=404)
        if row.kiosk_id != kiosk.kiosk_id:  # a session id swapped in from another kiosk
            raise KioskError("session_id", "other_kiosk", status=404)
        if row.state in ("closed", "refused"):
            raise KioskError("session_id", "session_closed", status=409)
        if _aware(row.expires_at) <= moment:
            raise KioskError("session_id", "session_expired", status=409)
        return row

    # ----------------------------------------------------------------- 1. challenge

    def open_session(self, cred: KioskCredential) -> Challenge:
        with self._refusals(getattr(cred, "kiosk_id", None), None):
            moment = _now(self.clock())
            challenge = secrets.token_bytes(32)
            session_id = uuid.uuid4().hex
            with self.session_maker.begin() as s:
                kiosk = self._kiosk(s, cred)
                s.add(
                    KioskSession(
                        session_id=session_id,
                        kiosk_id=kiosk.kiosk_id,
                        challenge=challenge.hex(),
                        state="challenged",
                        created_at=moment,
                        expires_at=moment + self.challenge_ttl,
                        version=1,
                    )
                )
            return Challenge(session_id, challenge, moment + self.challenge_ttl)

    # ----------------------------------------------------------------- 2. card authentication

    def authenticate(
        self,
        cred: KioskCredential,
        session_id: str,
        challenge: bytes,
        certificate_der: bytes,
        signature: bytes,
    ) -> Menu:
        with self._refusals(getattr(cred, "kiosk_id", None), session_id):
            return self._authenticate(cred, session_id, challenge, certificate_der, signature)

    def _authenticate(
        self,
        cred: KioskCredential,
        session_id: str,
        challenge: bytes,
        certificate_der: bytes,
        signature: bytes,
    ) -> Menu:
        moment = _now(self.clock())
        for name, value, limit in (
            ("challenge", challenge, 64),
            ("certificate", certificate_der, MAX_CERTIFICATE_BYTES),
            ("signature", signature, MAX_SIGNATURE_BYTES),
        ):
            if not isinstance(value, bytes):
                raise KioskError(name, "type", "bytes expected")
            if len(value) > limit:
                raise KioskError(name, "oversized", f"at most {limit} bytes", status=413)
        with self.session_maker.begin() as s:
            kiosk = self._kiosk(s, cred)
            row = self._session(s, kiosk, session_id, moment)
            if row.state != "challenged":
                raise KioskError("session_id", "challenge_used", status=409)
            if not hmac.compare_digest(bytes.fromhex(row.challenge), challenge):
                raise KioskError("challenge", "challenge_mismatch", "not the challenge of this session")
            version = row.version
            holder = self._check_card(s, challenge, certificate_der, signature, moment)
            card_id, serial, resident_code = holder
            identity = current_identity(s, resident_code)
            if identity is None:
                raise KioskError(
                    "resident_code", "holder_unknown", "the national copy does not know the holder"
                )
            if identity.status != "active":
                raise KioskError("resident_code", "moved_out", "the holder's record is removed")
            # Spend the challenge atomically: of two concurrent uses of it only one succeeds.
            spent = s.execute(
                update(KioskSession)
                .where(
                    KioskSession.session_id == row.session_id,
                    KioskSession.state == "challenged",
                    KioskSession.version == version,
                )
                .values(
                    state="authenticated",
                    version=version + 1,
                    authenticated_at=moment,
                    expires_at=moment + self.session_ttl,
                    certificate_serial=serial,
                    card_id=card_id,
                    resident_code=resident_code,
                    municipality_code=identity.municipality_code,
                )
                .execution_options(synchronize_session=False)
            )
            if getattr(spent, "rowcount", 0) != 1:
                raise KioskError("session_id", "challenge_used", status=409)
            # The centre read the holder's municipality and status from the national copy.
            audit.record(
                s,
                actor=kiosk.kiosk_id,
                role="kiosk",
                action="read",
                purpose=KIOSK_PURPOSE,
                subject=resident_code,
                items=["住所地市区町村", "状態"],
                organisation=identity.municipality_code,
                detail={"session": row.session_id, "operator": kiosk.operator_id},
            )
            items = tuple(
                MenuItem(
                    p.document_type,
                    DOCUMENT_TYPES[p.document_type],
                    p.fee,
                    p.document_type in HOUSEHOLD_TYPES,
                )
                for p in participation_of(s, identity.municipality_code)
                if p.enabled and p.document_type in DOCUMENT_TYPES
            )
            if not items:
                raise KioskError("municipality_code", "municipality_not_participating")
            return Menu(row.session_id, identity.municipality_code, items)

    def _check_card(
        self, s: Session, challenge: bytes, certificate_der: bytes, signature: bytes, moment: datetime
    ) -> tuple[str, str, str]:
        """(card id, serial, 住民票コード) of a good user-authentication certificate that signed."""
        try:
            cert = x509.load_der_x509_certificate(certificate_der)
        except ValueError:
            raise KioskError("certificate", "der", "not a DER certificate") from None
        ca_cert = jpki.ca_certificate(jpki.get_ca(s, USER_AUTH_CA))
        try:
            cert.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, Exception) as exc:  # InvalidSignature is not a ValueError
            raise KioskError(
                "certificate", "issuer", f"not issued by the user-authentication CA: {exc}"
            ) from None
        if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
            raise KioskError("certificate", "certificate_expired")
        try:
            row = jpki.find_certificate(s, cert.serial_number, ca_id=USER_AUTH_CA)
        except jpki.CaError:
            raise KioskError("certificate", "certificate_unknown", "the CA has no such serial") from None
        if row.der != certificate_der or row.kind != "user_auth" or not row.card_id or not row.resident_code:
            raise KioskError("certificate", "certificate_unknown", "not the certificate the CA issued")
        if row.status == "hold":
            raise KioskError("certificate", "card_suspended")
        if row.status != "good":
            raise KioskError("certificate", "certificate_revoked")
        if _aware(row.not_after) < moment:
            raise KioskError("certificate", "certificate_expired")
        if not verify_signature(cert.public_key(), signature, challenge):
            raise KioskError("signature", "signature_invalid", "the signature does not verify")
        try:
            card = cards.get_card(s, row.card_id)
        except cards.CardsError:
            raise KioskError("certificate", "card_not_active", "no card for the certificate") from None
        if card.state == card_states.SUSPENDED:
            raise KioskError("card", "card_suspended")
        if card.state == card_states.EXPIRED or (
            card.expires_on is not None and card.expires_on < cards.today_jst(moment)
        ):
            raise KioskError("card", "card_expired")
        if card.state != card_states.ACTIVE or card.user_auth_serial != row.serial:
            raise KioskError("card", "card_not_active")
        return row.card_id, row.serial, row.resident_code

    # ----------------------------------------------------------------- 3. a document

    def request_document(
        self,
        cred: KioskCredential,
        session_id: str,
        document_type: str,
        *,
        household: bool = False,
        fiscal_year: int | None = None,
    ) -> Printable:
        with self._refusals(getattr(cred, "kiosk_id", None), session_id):
            return self._request_document(cred, session_id, document_type, household, fiscal_year)

    def _request_document(
        self,
        cred: KioskCredential,
        session_id: str,
        document_type: str,
        household: bool,
        fiscal_year: int | None,
    ) -> Printable:
        moment = _now(self.clock())
        if not isinstance(document_type, str) or len(document_type) > 32:
            raise KioskError("document_type", "document_type")
        if not isinstance(household, bool):
            raise KioskError("household", "type", "true or false")
        if fiscal_year is not None and (
            not isinstance(fiscal_year, int)
            or isinstance(fiscal_year, bool)
            or not 2000 <= fiscal_year <= 2100
        ):
            raise KioskError("fiscal_year", "type", "a year 2000-2100")
        with self.session_maker.begin() as s:
            kiosk = self._kiosk(s, cred)
            row = self._session(s, kiosk, session_id, moment)
            if row.state != "authenticated" or not row.resident_code or not row.municipality_code:
                raise KioskError("session_id", "not_authenticated", status=409)
            if document_type not in DOCUMENT_TYPES:
                raise KioskError("document_type", "document_type")
            if household and document_type not in HOUSEHOLD_TYPES:
                raise KioskError("household", "household_not_offered")
            municipality, holder = row.municipality_code, row.resident_code
            offered = {p.document_type: p for p in participation_of(s, municipality) if p.enabled}
            if not offered:
                raise KioskError("municipality_code", "municipality_not_participating")
            participation = offered.get(document_type)
            if participation is None:
                raise KioskError("document_type", "document_not_offered")
            identity = current_identity(s, holder)
            if identity is None or identity.status != "active" or identity.municipality_code != municipality:
                raise KioskError("resident_code", "moved_out", "the holder moved since the card was read")
            if age_on(identity.birth_date, cards.today_jst(moment)) < participation.min_age:
                raise KioskError("document_type", "age_limit")
            # 支援措置: a restricted person is sent to the counter (the kiosk cannot check who is
            # standing there beyond the card, and a print left in the tray would be a disclosure).
            if network.is_restricted(s, holder, cards.today_jst(moment)):
                audit.record(
                    s,
                    actor=kiosk.kiosk_id,
                    role="kiosk",
                    action="refuse",
                    purpose=KIOSK_PURPOSE,
                    subject=holder,
                    items=["支援措置"],
                    organisation=municipality,
                    detail={"document_type": document_type},
                    flags=["dv_restricted"],
                )
                raise KioskError("resident_code", "dv_restricted")
            request = MunicipalRequest(
                request_id=uuid.uuid4().hex,
                session_id=row.session_id,
                municipality_code=municipality,
                resident_code=holder,
                document_type=document_type,
                household=household,
                fiscal_year=fiscal_year,
            )
            expected = (identity.family_name + identity.given_name, to_wareki(identity.birth_date))
            fee, operator_id = participation.fee, kiosk.operator_id
        function = self.router.route(municipality, document_type)
        if function is None:
            raise KioskError("municipality_code", "municipality_not_participating", "no issuing function")
        try:
            response = function(request)
        except Exception as exc:  # the municipality's node is down or broke: nothing is printed
            raise KioskError("municipality", "municipality_unavailable", f"{type(exc).__name__}") from None
        if response.refusal is not None:
            rule = response.refusal[1]
            if rule == "dv_restricted":
                raise KioskError("resident_code", "dv_restricted")
            if rule in ("dead_or_removed", "own_municipality", "not_found"):
                raise KioskError("resident_code", "moved_out", response.refusal[2])
            raise KioskError(response.refusal[0], "municipality_refused", response.refusal[2])
        # Binding: the answer is to this request of this session, unchanged.
        if (
            response.request_id != request.request_id
            or response.session_id != request.session_id
            or response.request_hash != request.request_hash
        ):
            raise KioskError("response", "binding", "the answer is bound to another request or session")
        if self.require_signed:
            # The signed PDF names its serial in the Info dictionary the signature covers.
            try:
                signed = printed_serial(response.pdf)
            except Exception:  # an unreadable PDF is not printed
                signed = None
            if signed != response.serial:
                raise KioskError("response", "binding", "the PDF is not the signed document answered")
        pdf_hash = hashlib.sha256(response.pdf).hexdigest()
        with self.session_maker.begin() as s:
            self._check_answer(s, request, response.serial, response.data, response.content_hash, expected)
            kiosk = self._kiosk(s, cred)
            row = self._session(s, kiosk, session_id, moment)
            if row.resident_code != holder or row.state != "authenticated":
                raise KioskError("session_id", "binding", "the session changed while the document was made")
            assert response.serial is not None
            s.add(
                KioskIssuance(
                    request_id=request.request_id,
                    session_id=row.session_id,
                    kiosk_id=kiosk.kiosk_id,
                    operator_id=operator_id,
                    municipality_code=municipality,
                    document_type=document_type,
                    household=household,
                    holder_resident_code=holder,
                    serial=response.serial,
                    request_hash=request.request_hash,
                    pdf_hash=pdf_hash,
                    fee=fee,
                    issued_at=moment,
                )
            )
            audit.record(
                s,
                actor=kiosk.kiosk_id,
                role="kiosk",
                action="print",
                purpose=KIOSK_PURPOSE,
                subject=holder,
                items=[DOCUMENT_TYPES[document_type]],
                organisation=municipality,
                detail={"serial": response.serial, "operator": operator_id, "household": household},
            )
        return Printable(
            request.session_id,
            request.request_id,
            document_type,
            response.serial,
            response.pdf,
            pdf_hash,
            fee,
        )

    def _check_answer(
        self,
        s: Session,
        request: MunicipalRequest,
        serial: str | None,
        data: Mapping[str, Any],
        digest: str | None,
        expected: tuple[str, str],
    ) -> None:
        """End to end: the ledger has the document, unchanged, about the holder (or their household)."""
        if not serial or not digest or content_hash(data) != digest:
            raise KioskError("response", "binding", "the document data does not match its hash")
        ledger = s.scalars(select(IssuedDocument).where(IssuedDocument.serial == serial)).one_or_none()
        if (
            ledger is None
            or ledger.content_hash != digest
            or ledger.municipality_code != request.municipality_code
            or ledger.document_type != LEDGER_TYPES[request.document_type]
        ):
            raise KioskError("response", "binding", "the ledger does not know this document")
        persons = [(_plain_name(str(p["氏名"])), str(p["生年月日"])) for p in _persons(data)]
        holder = (_plain_name(expected[0]), expected[1])
        if request.household:
            if holder not in persons:
                raise KioskError("response", "binding", "the holder is not in the household printed")
        elif persons != [holder] or ledger.subject_resident_code != request.resident_code:
            raise KioskError("response", "binding", "the document is about someone else")

    # ----------------------------------------------------------------- 4. end

    def close(self, cred: KioskCredential, session_id: str) -> None:
        """The card was taken out (or the screen timed out): the session is wiped."""
        with self._refusals(getattr(cred, "kiosk_id", None), session_id), self.session_maker.begin() as s:
            kiosk = self._kiosk(s, cred)
            row = s.get(KioskSession, session_id) if isinstance(session_id, str) else None
            if row is None or row.kiosk_id != kiosk.kiosk_id:
                raise KioskError("session_id", "session_unknown", status=404)
            row.state = "closed"
            row.version += 1


# --------------------------------------------------------------------------- settlement


@dataclass(frozen=True, slots=True)
class SettlementLine:
    municipality_code: str
    document_type: str
    operator_id: str
    count: int
    fees: int


def _month_bounds(year: int, month: int) -> tuple[datetime, datetime]:
    if not 1 <= month <= 12:
        raise KioskError("month", "type", "1 to 12")
    start = datetime(year, month, 1, tzinfo=JST)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=JST)
    return start.astimezone(UTC), end.astimezone(UTC)


def settlement(session: Session, year: int, month: int) -> list[SettlementLine]:
    """月次精算: documents and fees per municipality, document type and operator in a JST month."""
    start, end = _month_bounds(year, month)
    rows = session.execute(
        select(
            KioskIssuance.municipality_code,
            KioskIssuance.document_type,
            KioskIssuance.operator_id,
            func.count(),
            func.sum(KioskIssuance.fee),
        )
        .where(KioskIssuance.issued_at >= start, KioskIssuance.issued_at < end)
        .group_by(KioskIssuance.municipality_code, KioskIssuance.document_type, KioskIssuance.operator_id)
        .order_by(KioskIssuance.municipality_code, KioskIssuance.document_type, KioskIssuance.operator_id)
    )
    return [SettlementLine(m, d, o, int(c), int(f or 0)) for m, d, o, c, f in rows]


def settlement_markdown(lines: Sequence[SettlementLine], year: int, month: int) -> str:
    out = [
        f"# コンビニ交付 月次精算 {year}年{month}月",
        "",
        "| 市区町村 | 証明書 | 事業者 | 件数 | 手数料 |",
        "|---|---|---|---:|---:|",
    ]
    for line in lines:
        out.append(
            f"| {line.municipality_code} | {DOCUMENT_TYPES.get(line.document_type, line.document_type)} "
            f"| {line.operator_id} | {line.count} | {line.fees:,}円 |"
        )
    out.append(f"| 合計 | | | {sum(x.count for x in lines)} | {sum(x.fees for x in lines):,}円 |")
    return "\n".join(out) + "\n"


def refusal_counts(session: Session) -> dict[str, int]:
    return {
        rule: int(n)
        for rule, n in session.execute(select(KioskRefusal.rule, func.count()).group_by(KioskRefusal.rule))
    }


def today(moment: datetime | None = None) -> date:
    return cards.today_jst(moment)
