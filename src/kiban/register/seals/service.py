"""Seal registration service (印鑑登録事務): register, abolish, look up; every access audited.

The rules come from the 印鑑登録証明事務処理要領 (昭和49年自治省通知, the model every municipal
印鑑条例 follows), not from the 住民基本台帳法: a registrant is a resident of the municipality, 15
or older, not a 成年被後見人, with one seal at a time. Every function takes a session and leaves
the transaction to the caller. Bad input raises :class:`SealError` before anything is written.
docs/seals-and-taxes.md records the choices (image limits, 印鑑登録証 numbers, abolition causes).
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import secrets
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from PIL import Image, ImageDraw, ImageFont, ImageOps
from sqlalchemy import case, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kiban.core import audit
from kiban.core.database import utcnow
from kiban.core.identifiers import IdentifierError, validate_resident_code
from kiban.register.models import Resident, ResidentStatus
from kiban.register.rules import RegisterError, StaffMember
from kiban.register.seals.models import AbolitionCause, SealRegistration, SealStatus

JST = ZoneInfo("Asia/Tokyo")
MIN_AGE = 15  # 要領: 15歳未満の者は登録できない
REASON_MAX = 200
SYSTEM_ACTOR = "kiban.register"

# Image limits (docs/seals-and-taxes.md): a seal is an 8-25 mm square; 64 px is 8 mm at about 200
# dpi (the least that still shows the strokes), 1200 px is 25 mm at about 1200 dpi.
DEFAULT_MAX_BYTES = 1024 * 1024
DEFAULT_MIN_SIDE = 64
DEFAULT_MAX_SIDE = 1200
DEFAULT_MAX_ASPECT = 2.0  # 小判型 (oval) seals are not square; a scan wider than 2:1 is not a seal
MAX_BYTES_ENV = "KIBAN_SEAL_MAX_BYTES"

# Pillow refuses (DecompressionBombError) any image over twice this many pixels while reading its
# header, before decoding. Process-wide, so lowered only to a bound no legitimate image reaches.
PILLOW_PIXEL_CEILING = 4096 * 4096
if Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS > PILLOW_PIXEL_CEILING:
    Image.MAX_IMAGE_PIXELS = PILLOW_PIXEL_CEILING

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_CONTENT_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/pjpeg": "JPEG"}

# 印鑑登録証番号: Crockford's base32 (no I, L, O, U), 11 random symbols and a Luhn mod 32 check.
CARD_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CARD_RANDOM_SYMBOLS = 11
CARD_LENGTH = CARD_RANDOM_SYMBOLS + 1
_CARD_ALIASES = str.maketrans({"O": "0", "I": "1", "L": "1"})
_CARD_SEPARATORS = re.compile(r"[\s\-‐‑–—−ー]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_ITEMS = ["seal_image", "seal_card_number", "seal_status"]

# Words the register service may pass to abolish_for_resident, and the cause they mean.
_CAUSE_WORDS: dict[str, AbolitionCause] = {
    "死亡": AbolitionCause.DEATH,
    "失踪宣告": AbolitionCause.DEATH,
    "転出": AbolitionCause.MOVE_OUT,
    "国外転出": AbolitionCause.MOVE_OUT,
    "氏名変更": AbolitionCause.NAME_CHANGE,
    "成年被後見人": AbolitionCause.ADULT_GUARDIANSHIP,
}


class SealError(RegisterError):
    """A seal request broke a rule: ``field`` which input, ``rule`` a stable id, ``message`` why.

    Nothing was written. The message never quotes the offending value (it may be personal data).
    """


Actor = StaffMember


@dataclass(frozen=True)
class SealImagePolicy:
    """Limits on an uploaded seal image; ``max_bytes`` also from ``KIBAN_SEAL_MAX_BYTES``."""

    max_bytes: int = DEFAULT_MAX_BYTES
    min_side: int = DEFAULT_MIN_SIDE
    max_side: int = DEFAULT_MAX_SIDE
    max_aspect: float = DEFAULT_MAX_ASPECT

    @classmethod
    def from_env(cls) -> SealImagePolicy:
        raw = os.environ.get(MAX_BYTES_ENV, "").strip()
        if not raw:
            return cls()
        if not raw.isascii() or not raw.isdigit() or int(raw) <= 0:
            raise ValueError(f"{MAX_BYTES_ENV} must be a positive number of bytes")
        return cls(max_bytes=int(raw))


@dataclass(frozen=True)
class NormalisedSeal:
    """A validated seal image, re-encoded as PNG (RGB, no metadata)."""

    png: bytes
    width: int
    height: int
    source_format: str
    sha256: str


# --- image --------------------------------------------------------------------------------------


_ACTIVE_FIRST = case((Resident.status == ResidentStatus.ACTIVE.value, 0), else_=1)


def _sniff(data: bytes) -> str | None:
    if data.startswith(_PNG_MAGIC):
        return "PNG"
    if data.startswith(_JPEG_MAGIC):
        return "JPEG"
    return None


def _declared_format(content_type: str) -> str | None:
    if not isinstance(content_type, str):
        return None
    return _CONTENT_TYPES.get(content_type.split(";", 1)[0].strip().lower())


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "I" or img.mode.startswith("I;16"):
        # 16-bit greyscale scans: scale to 8 bits (a plain convert would clip, not scale).
        img = img.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    # Transparent pixels become paper white, as the impression would look on a certificate.
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def validate_seal_image(
    image: bytes, content_type: str, policy: SealImagePolicy | None = None
) -> NormalisedSeal:
    """Check an uploaded 印影 and return it normalised; raise :class:`SealError` otherwise.

    The format is decided by the file's magic bytes; the declared ``content_type`` must agree.
    Dimensions are checked from the header before any pixel is decoded.
    """
    policy = policy or SealImagePolicy.from_env()
    if not isinstance(image, bytes | bytearray | memoryview):
        raise SealError("image", "type", "the seal image must be the bytes of a PNG or JPEG file")
    data = bytes(image)
    if not data:
        raise SealError("image", "empty", "the seal image is empty (0 bytes)")
    if len(data) > policy.max_bytes:
        raise SealError(
            "image", "too_large", f"the seal image has {len(data)} bytes, at most {policy.max_bytes}"
        )
    detected = _sniff(data)
    if detected is None:
        raise SealError("image", "format", "the seal image must be a PNG or JPEG file")
    declared = _declared_format(content_type)
    if declared is None:
        raise SealError("content_type", "format", "the declared type must be image/png or image/jpeg")
    if declared != detected:
        raise SealError(
            "content_type",
            "mismatch",
            f"the file is a {detected} image but was declared as {declared}",
        )
    try:
        with Image.open(io.BytesIO(data), formats=[detected]) as img:
            width, height = img.size
            _check_dimensions(width, height, policy)
            if getattr(img, "n_frames", 1) != 1:
                raise SealError("image", "animated", "the seal image must be a single still image")
            img.load()
            upright = ImageOps.exif_transpose(img)
            rgb = _to_rgb(upright)
    except SealError:
        raise
    except Image.DecompressionBombError as exc:
        raise SealError("image", "dimensions", "the seal image declares far too many pixels") from exc
    except Exception as exc:  # noqa: BLE001 - a decoder meeting hostile bytes may raise anything
        raise SealError("image", "decode", "the seal image is damaged or truncated") from exc
    rgb.info = {}  # drop ICC profiles, EXIF, text chunks: nothing but pixels is stored
    out = io.BytesIO()
    rgb.save(out, format="PNG", compress_level=6)
    png = out.getvalue()
    return NormalisedSeal(
        png=png,
        width=rgb.width,
        height=rgb.height,
        source_format=detected,
        sha256=hashlib.sha256(png).hexdigest(),
    )


def _check_dimensions(width: int, height: int, policy: SealImagePolicy) -> None:
    if min(width, height) < policy.min_side or max(width, height) > policy.max_side:
        raise SealError(
            "image",
            "dimensions",
            f"the seal image is {width}×{height} pixels; each side must be "
            f"{policy.min_side}–{policy.max_side} pixels",
        )
    if max(width, height) > policy.max_aspect * min(width, height):
        raise SealError(
            "image",
            "aspect_ratio",
            f"the seal image is {width}×{height} pixels; a seal is at most {policy.max_aspect:g}:1",
        )


# --- 印鑑登録証 numbers -----------------------------------------------------------------------


def _luhn_sum(symbols: str, double_first: bool) -> int:
    total, double = 0, double_first
    for char in reversed(symbols):
        value = CARD_ALPHABET.index(char) * (2 if double else 1)
        total += value // 32 + value % 32
        double = not double
    return total


def _check_symbol(payload: str) -> str:
    return CARD_ALPHABET[(32 - _luhn_sum(payload, True) % 32) % 32]


def new_card_number() -> str:
    """A fresh random 印鑑登録証番号 (canonical form, 12 symbols, at least one letter)."""
    while True:
        payload = "".join(secrets.choice(CARD_ALPHABET) for _ in range(CARD_RANDOM_SYMBOLS))
        # All digits would look like a 個人番号 to the log redaction and the audit log.
        if not payload.isdigit():
            return payload + _check_symbol(payload)


def normalise_card_number(value: str) -> str:
    """The canonical form of a typed 印鑑登録証番号, or :class:`SealError` naming the rule."""
    if not isinstance(value, str):
        raise SealError("card_number", "type", "the card number must be text")
    text = _CARD_SEPARATORS.sub("", unicodedata.normalize("NFKC", value)).upper().translate(_CARD_ALIASES)
    if len(text) != CARD_LENGTH:
        raise SealError(
            "card_number", "length", f"a card number has {CARD_LENGTH} characters, not {len(text)}"
        )
    if any(char not in CARD_ALPHABET for char in text):
        raise SealError("card_number", "characters", "a card number has only digits and letters")
    if _luhn_sum(text, False) % 32 != 0:
        raise SealError("card_number", "check_digit", "the card number's check character does not match")
    return text


def format_card_number(card_number: str) -> str:
    """``XXXX-XXXX-XXXX``, as printed on the 印鑑登録証."""
    return "-".join(card_number[i : i + 4] for i in range(0, len(card_number), 4))


# --- helpers ------------------------------------------------------------------------------------


def today_jst() -> date:
    return datetime.now(JST).date()


def age_on(birth_date: date, day: date) -> int:
    """Age in full years on ``day`` (年齢計算ニ関スル法律: a year is complete at the end of the day
    before the birthday, so on the birthday the new age holds all day; 2/29 births turn on 3/1)."""
    return day.year - birth_date.year - ((day.month, day.day) < (birth_date.month, birth_date.day))


def _code(resident_code: str) -> str:
    try:
        return validate_resident_code(resident_code)
    except IdentifierError as exc:
        raise SealError("resident_code", exc.rule, exc.detail) from exc


def _date(value: date, field: str) -> date:
    if not isinstance(value, date) or isinstance(value, datetime):
        raise SealError(field, "type", "must be a calendar date")
    if value > today_jst():
        raise SealError(field, "future_date", "must not be in the future")
    return value


def _reason(reason: str) -> str:
    cleaned = reason.strip() if isinstance(reason, str) else ""
    if not cleaned:
        raise SealError("reason", "required", "a reason is required")
    if len(cleaned) > REASON_MAX:
        raise SealError("reason", "length", f"has {len(cleaned)} characters, at most {REASON_MAX}")
    if _CONTROL.search(cleaned):
        raise SealError("reason", "control_characters", "must not contain control characters")
    return cleaned


def _clerk_municipality(actor: Actor) -> str:
    if actor.role != "clerk" or not actor.municipality_code:
        raise SealError("actor", "role", "only a municipal clerk (市区町村職員) handles seal registration")
    return actor.municipality_code


def _resident_of(session: Session, actor: Actor, resident_code: str) -> Resident:
    municipality = _clerk_municipality(actor)
    code = _code(resident_code)
    # A person who left and came back has a 除票 and an active record under the same code here.
    resident = session.scalars(
        select(Resident)
        .where(Resident.resident_code == code, Resident.municipality_code == municipality)
        .order_by(_ACTIVE_FIRST, Resident.created_at.desc())
        .limit(1)
    ).first()
    if resident is None:
        # Same answer whether the code exists elsewhere or nowhere: no leak across municipalities.
        raise SealError(
            "resident_code",
            "not_in_municipality",
            f"no resident of municipality {municipality} has this 住民票コード",
        )
    return resident


def _active_of(session: Session, resident: Resident) -> SealRegistration | None:
    return session.scalars(
        select(SealRegistration).where(
            SealRegistration.resident_id == resident.id, SealRegistration.status == SealStatus.ACTIVE.value
        )
    ).one_or_none()


def audit_id(registration: SealRegistration) -> str:
    """A registration's id as written in the audit log: hex in groups of four joined by ``_``.

    The usual UUID text can hold 12 digits in a row (about one id in 300), which the audit log
    refuses as a possible 個人番号; ``_`` is not a separator its check looks through.
    """
    hexed = registration.id.hex
    return "_".join(hexed[i : i + 4] for i in range(0, len(hexed), 4))


def _audit(
    session: Session,
    *,
    actor: str,
    role: str,
    organisation: str,
    action: str,
    purpose: str,
    subject: str,
    registrations: Sequence[SealRegistration],
    event: str,
) -> None:
    detail: dict[str, object] = {"event": event, "registrations": [audit_id(r) for r in registrations][:20]}
    audit.record(
        session,
        actor=actor,
        role=role,
        organisation=organisation,
        action=action,
        purpose=purpose,
        subject=subject,
        items=_ITEMS,
        detail=detail,
    )


# --- writes -------------------------------------------------------------------------------------


def register_seal(
    session: Session,
    actor: Actor,
    resident_code: str,
    image: bytes,
    content_type: str,
    notified_on: date,
    *,
    adult_ward: bool = False,
    policy: SealImagePolicy | None = None,
) -> SealRegistration:
    """印鑑登録: register the seal in ``image`` for the resident, and issue a 印鑑登録証 number.

    ``adult_ward`` is the 成年被後見人 declaration on the application (the register holds no
    guardianship data yet); when true the application is refused, as the 要領 says.
    """
    resident = _resident_of(session, actor, resident_code)
    day = _date(notified_on, "notified_on")
    if resident.status != ResidentStatus.ACTIVE.value:
        raise SealError(
            "resident_code", "not_active", "the record is removed (除票): no seal can be registered"
        )
    if day < resident.resident_since:
        raise SealError("notified_on", "before_residence", "is before the person became a resident here")
    if age_on(resident.birth_date, day) < MIN_AGE:
        raise SealError("resident_code", "age", f"the person must be {MIN_AGE} or older on the 届出日")
    if not isinstance(adult_ward, bool):
        raise SealError("adult_ward", "type", "must be true or false")
    if adult_ward:
        raise SealError("adult_ward", "adult_ward", "a 成年被後見人 cannot register a seal")
    if _active_of(session, resident) is not None:
        raise SealError(
            "resident_code", "already_registered", "the person already has a registered seal (one per person)"
        )
    seal = validate_seal_image(image, content_type, policy)
    card = _unused_card_number(session, resident.municipality_code)
    registration = SealRegistration(
        municipality_code=resident.municipality_code,
        resident_id=resident.id,
        resident_code=resident.resident_code,
        card_number=card,
        status=SealStatus.ACTIVE.value,
        image_png=seal.png,
        image_sha256=seal.sha256,
        width=seal.width,
        height=seal.height,
        source_format=seal.source_format,
        registered_on=day,
        registered_at=utcnow(),
        registered_by=actor.username,
    )
    session.add(registration)
    try:
        session.flush()
    except IntegrityError as exc:
        # A concurrent clerk registered first; the caller's transaction must be rolled back.
        raise SealError(
            "resident_code", "already_registered", "the person already has a registered seal (one per person)"
        ) from exc
    _audit(
        session,
        actor=actor.username,
        role=actor.role,
        organisation=resident.municipality_code,
        action="create",
        purpose="印鑑登録",
        subject=resident.resident_code,
        registrations=[registration],
        event="register",
    )
    return registration


def _unused_card_number(session: Session, municipality_code: str) -> str:
    for _ in range(8):
        card = new_card_number()
        taken = session.scalar(
            select(SealRegistration.id).where(
                SealRegistration.municipality_code == municipality_code, SealRegistration.card_number == card
            )
        )
        if taken is None:
            return card
    raise RuntimeError("could not draw an unused 印鑑登録証 number (random source broken?)")


def _abolish(
    registration: SealRegistration, *, on: date, by: str, cause: AbolitionCause, reason: str
) -> None:
    registration.status = SealStatus.ABOLISHED.value
    registration.abolished_on = on
    registration.abolished_at = utcnow()
    registration.abolished_by = by
    registration.abolition_cause = cause.value
    registration.abolition_reason = reason


def abolish_seal(
    session: Session, actor: Actor, resident_code: str, reason: str, notified_on: date
) -> SealRegistration:
    """印鑑登録の廃止 on the registrant's 廃止届; the row stays as history."""
    return _abolish_by_clerk(
        session, actor, resident_code, reason, notified_on, AbolitionCause.NOTIFIED, None, "印鑑登録の廃止"
    )


def lost_card(
    session: Session,
    actor: Actor,
    resident_code: str,
    notified_on: date,
    *,
    card_number: str | None = None,
    reason: str = "印鑑登録証の亡失",
) -> SealRegistration:
    """印鑑登録証亡失届: the registration is ended (抹消), the person registers anew for a new card.

    When ``card_number`` is given it must be the lost card's (a check against a mix-up at the counter).
    """
    return _abolish_by_clerk(
        session,
        actor,
        resident_code,
        reason,
        notified_on,
        AbolitionCause.CARD_LOST,
        card_number,
        "印鑑登録証の亡失",
    )


def _abolish_by_clerk(
    session: Session,
    actor: Actor,
    resident_code: str,
    reason: str,
    notified_on: date,
    cause: AbolitionCause,
    card_number: str | None,
    purpose: str,
) -> SealRegistration:
    resident = _resident_of(session, actor, resident_code)
    text = _reason(reason)
    day = _date(notified_on, "notified_on")
    card = normalise_card_number(card_number) if card_number is not None else None
    registration = _active_of(session, resident)
    if registration is None:
        raise SealError("resident_code", "not_registered", "the person has no registered seal")
    if card is not None and card != registration.card_number:
        raise SealError("card_number", "mismatch", "is not the number of the person's 印鑑登録証")
    if day < registration.registered_on:
        raise SealError("notified_on", "before_registration", "is before the seal was registered")
    _abolish(registration, on=day, by=actor.username, cause=cause, reason=text)
    session.flush()
    _audit(
        session,
        actor=actor.username,
        role=actor.role,
        organisation=resident.municipality_code,
        action="update",
        purpose=purpose,
        subject=resident.resident_code,
        registrations=[registration],
        event=cause.value,
    )
    return registration


def abolish_for_resident(
    session: Session,
    resident_code: str,
    reason: str,
    *,
    cause: AbolitionCause | str | None = None,
    effective_on: date | None = None,
    actor: str = SYSTEM_ACTOR,
) -> SealRegistration | None:
    """職権抹消 when the register closes or changes a record (death, move-out, …).

    For the register service, in the transaction of its event. ``reason`` is recorded as given;
    the cause is ``cause`` or read from ``reason`` (``death``/``死亡``, ``move_out``/``転出``/
    ``国外転出``, ``name_change``/``氏名変更``, ``adult_guardianship``/``成年被後見人``), else
    ``ex_officio``. ``effective_on`` is the 異動日 (default: today in Japan). Returns the ended
    registration, or None when the person had none (nothing to do, nothing logged).
    """
    code = _code(resident_code)
    text = _reason(reason)
    if cause is None:
        try:
            resolved = AbolitionCause(text)
        except ValueError:
            resolved = _CAUSE_WORDS.get(text, AbolitionCause.EX_OFFICIO)
    else:
        try:
            resolved = AbolitionCause(cause)
        except ValueError as exc:
            raise SealError("cause", "enum", "unknown abolition cause") from exc
    if effective_on is not None and (
        not isinstance(effective_on, date) or isinstance(effective_on, datetime)
    ):
        raise SealError("effective_on", "type", "must be a calendar date")
    registration = session.scalars(
        select(SealRegistration)
        .join(Resident, Resident.id == SealRegistration.resident_id)
        .where(Resident.resident_code == code, SealRegistration.status == SealStatus.ACTIVE.value)
    ).one_or_none()
    if registration is None:
        return None
    _abolish(registration, on=effective_on or today_jst(), by=actor, cause=resolved, reason=text)
    session.flush()
    _audit(
        session,
        actor=actor,
        role="system",
        organisation=registration.municipality_code,
        action="update",
        purpose="印鑑登録の職権抹消",
        subject=code,
        registrations=[registration],
        event=resolved.value,
    )
    return registration


# --- reads --------------------------------------------------------------------------------------


def _reader(session: Session, actor: Actor | None, resident_code: str) -> tuple[Resident | None, str]:
    if actor is not None:
        resident = _resident_of(session, actor, resident_code)
        return resident, resident.resident_code
    code = _code(resident_code)
    # After a 転入 the code has a 除票 at the old municipality and an active record at the new one.
    query = select(Resident).where(Resident.resident_code == code)
    return session.scalars(query.order_by(_ACTIVE_FIRST, Resident.created_at.desc()).limit(1)).first(), code


def _audit_read(
    session: Session,
    actor: Actor | None,
    subject: str,
    organisation: str | None,
    purpose: str,
    registrations: Sequence[SealRegistration],
    event: str,
) -> None:
    audit.audited_read(
        session,
        actor=actor.username if actor is not None else SYSTEM_ACTOR,
        role=actor.role if actor is not None else "system",
        organisation=organisation,
        purpose=purpose,
        subject=subject,
        items=_ITEMS,
        detail={"event": event, "registrations": [audit_id(r) for r in registrations][:20]},
    )


def active_seal(
    session: Session,
    resident_code: str,
    *,
    actor: Actor | None = None,
    purpose: str = "印鑑登録証明書の交付",
) -> SealRegistration | None:
    """The person's active registration (for the 印鑑登録証明書), or None; the read is audited.

    With a clerk ``actor`` only their municipality's residents are found; without one the read is
    the system's (e.g. the kiosk route), logged as such. A removed record (除票) never yields a
    seal, even if its registration has not been abolished yet.
    """
    resident, code = _reader(session, actor, resident_code)
    registration = None
    if resident is not None and resident.status == ResidentStatus.ACTIVE.value:
        registration = _active_of(session, resident)
    organisation = resident.municipality_code if resident is not None else None
    _audit_read(session, actor, code, organisation, purpose, [registration] if registration else [], "active")
    return registration


def seal_history(
    session: Session, resident_code: str, *, actor: Actor | None = None, purpose: str = "印鑑登録原票の閲覧"
) -> list[SealRegistration]:
    """Every registration of the person, oldest first (abolished ones included); audited."""
    resident, code = _reader(session, actor, resident_code)
    rows: list[SealRegistration] = []
    if resident is not None:
        rows = list(
            session.scalars(
                select(SealRegistration)
                .where(SealRegistration.resident_id == resident.id)
                .order_by(SealRegistration.registered_at, SealRegistration.registered_on)
            )
        )
    organisation = resident.municipality_code if resident is not None else None
    _audit_read(session, actor, code, organisation, purpose, rows, "history")
    return rows


def find_by_card_number(
    session: Session, actor: Actor, card_number: str, *, purpose: str = "印鑑登録証明書の交付"
) -> SealRegistration:
    """The registration of a presented 印鑑登録証 in the clerk's municipality (any status); audited."""
    municipality = _clerk_municipality(actor)
    card = normalise_card_number(card_number)
    registration = session.scalars(
        select(SealRegistration).where(
            SealRegistration.municipality_code == municipality, SealRegistration.card_number == card
        )
    ).one_or_none()
    if registration is None:
        raise SealError("card_number", "not_found", "no 印鑑登録証 of this municipality has this number")
    resident = session.get(Resident, registration.resident_id)
    subject = resident.resident_code if resident is not None else registration.resident_code
    _audit_read(session, actor, subject, municipality, purpose, [registration], "card")
    return registration


# --- synthetic seals (demo) ---------------------------------------------------------------------

SEAL_FONTS: tuple[Path, ...] = (
    Path("/usr/share/fonts/opentype/ipaexfont-mincho/ipaexm.ttf"),
    Path("/usr/share/fonts/truetype/ipaexfont-mincho/ipaexm.ttf"),
    Path("/usr/share/fonts/opentype/noto/NotoSerifCJK-Bold.ttc"),
    Path("/usr/share/fonts/truetype/noto/NotoSerifCJK-Bold.ttc"),
)


def synthetic_seal_image(
    family_name: str, *, seed: int = 0, size: int = 240, font: Path | None = None
) -> bytes:
    """A PNG that looks like a 認印 impression of ``family_name`` (for the demo and tests).

    Red ring, up to three characters of the name stacked vertically, slight ink unevenness drawn
    from ``seed``; without a Japanese font installed, abstract strokes stand in for the name.
    """
    rng = random.Random(f"kiban-seal:{seed}:{family_name}")
    ink = (200 + rng.randrange(30), 20 + rng.randrange(30), 30 + rng.randrange(30))
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    margin, ring = size // 20, max(3, size // 24)
    draw.ellipse((margin, margin, size - margin, size - margin), outline=ink, width=ring)
    chars = [c for c in family_name if not c.isspace()][:3] or ["印"]
    path = font or next((p for p in SEAL_FONTS if p.exists()), None)
    cell = int((size - 2 * margin - 2 * ring) * 0.9) // max(2, len(chars))
    top = (size - cell * len(chars)) // 2
    if path is not None:
        face = ImageFont.truetype(str(path), cell)
        for i, char in enumerate(chars):
            draw.text((size // 2, top + i * cell + cell // 2), char, fill=ink, font=face, anchor="mm")
    else:
        for i in range(len(chars)):
            y = top + i * cell
            for _ in range(4):
                x0, x1 = rng.randrange(size // 3, size // 2), rng.randrange(size // 2, 2 * size // 3)
                yy = y + rng.randrange(cell)
                draw.line((x0, yy, x1, yy + rng.randrange(-cell // 4, cell // 4 + 1)), fill=ink, width=ring)
    # Ink unevenness: a few paper-white specks, as in a real impression.
    for _ in range(size):
        x, y = rng.randrange(size), rng.randrange(size)
        draw.point((x, y), fill="white")
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()
