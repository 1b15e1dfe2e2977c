"""Staff accounts (職員アカウント): creation, password hashing, authentication, lockout.

Passwords are hashed with scrypt (stdlib ``hashlib.scrypt``) and a per-user random salt,
compared in constant time. Repeated failures lock the account for a while; an unknown
username costs the same scrypt work as a known one, so timing does not reveal which exist.
The functions here flush but never commit: the caller owns the transaction, and must commit
after :func:`authenticate` whatever its outcome (the failure counter is part of the result).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from kiban.core import master
from kiban.core.database import utcnow
from kiban.core.identifiers import IdentifierError, municipality_check_digit, validate_municipality_code
from kiban.core.models.accounts import ROLES, User

__all__ = [
    "LOCKOUT_DURATION",
    "MAX_FAILED_LOGINS",
    "ROLES",
    "ROLE_NAMES_JA",
    "AccountError",
    "LoginResult",
    "authenticate",
    "create_user",
    "get_user",
    "hash_password",
    "list_users",
    "unlock_user",
    "verify_password",
]

ROLE_NAMES_JA: dict[str, str] = {
    "clerk": "市区町村職員",
    "national_operator": "全国センター運用者",
    "agency": "国の行政機関等",
    "verifier": "署名検証者・利用者証明検証者",
    "call_centre": "コールセンター担当者",
    "ca_system": "認証局システム（異動等情報）",
    "linkage_system": "情報連携システム（符号）",
}

MAX_FAILED_LOGINS = 5
LOCKOUT_DURATION = timedelta(minutes=15)

USERNAME_MAX = 64
PASSWORD_MIN = 12
PASSWORD_MAX = 1024  # scrypt's cost does not grow with length, but megabyte inputs are abuse
DISPLAY_NAME_MAX = 200
ORGANISATION_MAX = 64
USERNAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{2,63}$"
ORGANISATION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_USERNAME_RE = re.compile(USERNAME_PATTERN)
_ORGANISATION_RE = re.compile(ORGANISATION_PATTERN)

# N=2**14, r=8 (16 MiB, ~50 ms): OWASP's scrypt floor is N=2**17 at p=1; we trade some
# strength for a login that stays fast on 2 cores and record the parameters in each hash.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_SCRYPT_MAXMEM = 256 * 1024 * 1024
_SALT_BYTES = 16
_HASH_BYTES = 32


class AccountError(ValueError):
    """Bad input for an account: which field, which rule, and a message for people."""

    def __init__(self, field: str, rule: str, message: str) -> None:
        super().__init__(f"{field}: {message} ({rule})")
        self.field = field
        self.rule = rule
        self.message = message


@dataclass(frozen=True)
class LoginResult:
    """What :func:`authenticate` decided; ``user`` is set only when ``outcome == "ok"``."""

    outcome: Literal["ok", "invalid", "locked", "disabled"]
    user: User | None = None
    locked_until: datetime | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _normalise_password(password: str) -> bytes:
    # NFKC so that a full-width password typed through a Japanese IME matches its ASCII twin
    # (NIST SP 800-63B §5.1.1.2 asks for a normalisation).
    return unicodedata.normalize("NFKC", password).encode("utf-8")


def hash_password(password: str, *, n: int | None = None, r: int | None = None, p: int | None = None) -> str:
    """An encoded scrypt hash of ``password`` with a fresh random salt (module parameters by default)."""
    n, r, p = n or SCRYPT_N, r or SCRYPT_R, p or SCRYPT_P
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.scrypt(
        _normalise_password(password), salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=_HASH_BYTES
    )
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """True when ``password`` matches ``encoded`` (constant-time comparison)."""
    try:
        scheme, n, r, p, salt_b64, digest_b64 = encoded.split("$")
        if scheme != "scrypt":
            return False
        salt = base64.b64decode(salt_b64, validate=True)
        expected = base64.b64decode(digest_b64, validate=True)
        actual = hashlib.scrypt(
            _normalise_password(password),
            salt=salt,
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=_SCRYPT_MAXMEM,
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


# Verified against when the username is unknown, so both paths cost one scrypt.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


def municipality_code_is_valid(code: str) -> bool:
    """地方公共団体コード: 6 ASCII digits whose last is the check digit (SPEC §3, kiban.core.identifiers)."""
    if len(code) != 6 or not code.isascii() or not code.isdigit():
        return False
    return municipality_check_digit(code[:5]) == int(code[5])


def _municipality(code: str) -> str:
    """The normalised code of an existing municipality (or ward office), else AccountError."""
    try:
        normalised = validate_municipality_code(code)  # full-width digits from an IME become ASCII
        master.municipality(normalised)
    except IdentifierError as exc:
        raise AccountError("municipality_code", exc.rule, exc.detail) from None
    except master.MasterError as exc:
        raise AccountError("municipality_code", "unknown_municipality", "no such municipality") from exc
    return normalised


def _check_text(field: str, value: object, max_length: int) -> str:
    if not isinstance(value, str):
        raise AccountError(field, "type", "must be text")
    if "\x00" in value or any(unicodedata.category(c) == "Cc" for c in value):
        raise AccountError(field, "control_characters", "must not contain control characters")
    if len(value) > max_length:
        raise AccountError(field, "max_length", f"must be at most {max_length} characters")
    return value


def create_user(
    session: Session,
    username: str,
    password: str,
    role: str,
    municipality_code: str | None = None,
    organisation: str | None = None,
    display_name: str | None = None,
) -> User:
    """Create a staff account; raise :class:`AccountError` (field, rule) on bad input.

    A clerk (``role="clerk"``) needs exactly one ``municipality_code``; agencies and verifiers
    need an ``organisation`` id. ``display_name`` defaults to the username.
    """
    username = _check_text("username", username, USERNAME_MAX)
    if not _USERNAME_RE.fullmatch(username):
        raise AccountError(
            "username",
            "pattern",
            "3-64 characters: lower-case ASCII letters, digits, '.', '_' or '-', starting with a letter "
            "or digit",
        )
    if not isinstance(password, str):
        raise AccountError("password", "type", "must be text")
    if len(password) < PASSWORD_MIN:
        raise AccountError("password", "min_length", f"must be at least {PASSWORD_MIN} characters")
    if len(password) > PASSWORD_MAX:
        raise AccountError("password", "max_length", f"must be at most {PASSWORD_MAX} characters")
    if role not in ROLES:
        raise AccountError("role", "enum", f"must be one of {', '.join(ROLES)}")

    if role == "clerk":
        if municipality_code is None or municipality_code == "":
            raise AccountError("municipality_code", "required_for_clerk", "a clerk needs a municipality")
        municipality_code = _municipality(_check_text("municipality_code", municipality_code, 6))
    elif municipality_code is not None:
        raise AccountError("municipality_code", "clerk_only", "only clerks are bound to a municipality")

    if role in ("agency", "verifier") and not organisation:
        raise AccountError("organisation", "required_for_role", f"role {role} needs an organisation id")
    if organisation is not None:
        organisation = _check_text("organisation", organisation, ORGANISATION_MAX)
        if not _ORGANISATION_RE.fullmatch(organisation):
            raise AccountError("organisation", "pattern", "1-64 ASCII letters, digits, '.', '_' or '-'")

    display = username if display_name is None else display_name
    display = _check_text("display_name", display, DISPLAY_NAME_MAX).strip()
    if not display:
        raise AccountError("display_name", "required", "must not be blank")

    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise AccountError("username", "unique", "this username is already taken")

    user = User(
        username=username,
        display_name=display,
        role=role,
        municipality_code=municipality_code,
        organisation=organisation,
        password_hash=hash_password(password),
        failed_logins=0,
        disabled=False,
        created_at=utcnow(),
    )
    session.add(user)
    session.flush()
    return user


def get_user(session: Session, username: str) -> User | None:
    return session.scalar(select(User).where(User.username == username))


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)))


def unlock_user(session: Session, username: str) -> bool:
    """Clear a lockout; False when there is no such user."""
    user = get_user(session, username)
    if user is None:
        return False
    user.failed_logins = 0
    user.locked_until = None
    session.flush()
    return True


def authenticate(
    session: Session, username: str, password: str, *, now: datetime | None = None
) -> LoginResult:
    """Check a username and password; count failures and lock after :data:`MAX_FAILED_LOGINS`.

    A locked account refuses even the right password until the lock expires. The caller
    commits the session afterwards in every case.
    """
    now = now or utcnow()
    # Names that could never have been created are not looked up (NUL bytes upset PostgreSQL).
    plausible = isinstance(username, str) and _USERNAME_RE.fullmatch(username) is not None
    user = get_user(session, username) if plausible else None
    if user is None:
        verify_password(password, _DUMMY_HASH)
        return LoginResult("invalid")
    if user.locked_until is not None and user.locked_until > now:
        verify_password(password, _DUMMY_HASH)
        return LoginResult("locked", locked_until=user.locked_until)
    if not verify_password(password, user.password_hash):
        user.failed_logins = (user.failed_logins or 0) + 1
        if user.failed_logins >= MAX_FAILED_LOGINS:
            user.locked_until = now + LOCKOUT_DURATION
            user.failed_logins = 0
            session.flush()
            return LoginResult("locked", locked_until=user.locked_until)
        session.flush()
        return LoginResult("invalid")
    if user.disabled:
        return LoginResult("disabled")
    user.failed_logins = 0
    user.locked_until = None
    user.last_login_at = now
    session.flush()
    return LoginResult("ok", user=user)
