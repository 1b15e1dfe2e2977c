"""Login (ログイン), sessions, roles and CSRF protection for the web UI and its JSON API.

Sessions: the browser holds a signed, HttpOnly, SameSite=Lax cookie (Starlette's
SessionMiddleware) with two values: a random session id and the CSRF token. The session id
names a row in ``web_sessions``, which carries the idle and absolute expiry and can be deleted
(logout, or an administrator disabling the account) — a copied cookie dies with its row.

CSRF: a synchroniser token. Every unsafe request (POST, PUT, PATCH, DELETE) must carry the
session's token, as the form field ``csrf_token`` or the header ``X-CSRF-Token``, unless the
endpoint is marked :func:`csrf_exempt` (machine endpoints such as OCSP, which take no cookie).

Capabilities use :func:`current_user`, :func:`require_role` and :func:`require_clerk` as
FastAPI dependencies; a clerk's :attr:`CurrentUser.municipality_code` is the only
municipality whose data they may see.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse
from sqlalchemy import delete
from starlette.responses import Response

from kiban.core import accounts
from kiban.core.database import transaction, utcnow
from kiban.core.models.accounts import User, WebSession
from kiban.web.problems import FieldError, Problem, problem_response, validation_problem, wants_html

logger = logging.getLogger("kiban.web.auth")

SESSION_ID_KEY = "sid"
CSRF_KEY = "csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Writing last_seen_at on every request would turn reads into writes; a minute is precise enough.
_TOUCH_INTERVAL = timedelta(seconds=60)

F = TypeVar("F", bound=Callable[..., Any])
_UNSET = object()


@dataclass(frozen=True)
class CurrentUser:
    """The logged-in staff member, as routes see them (never the ORM row)."""

    id: int
    username: str
    display_name: str
    role: str
    municipality_code: str | None
    organisation: str | None

    @property
    def role_ja(self) -> str:
        return accounts.ROLE_NAMES_JA.get(self.role, self.role)

    def can_access_municipality(self, municipality_code: str) -> bool:
        """A clerk may see only their own municipality; other roles decide per capability."""
        return self.role == "clerk" and self.municipality_code == municipality_code


class LoginRequired(Problem):
    """401 for API clients; browsers are sent to the login page instead."""

    def __init__(self) -> None:
        super().__init__(
            401,
            "Log in first: this endpoint needs an authenticated session.",
            slug="login-required",
            title="Login required",
        )


def csrf_exempt(endpoint: F) -> F:
    """Mark an endpoint that takes no session cookie (e.g. OCSP, signed machine requests)."""
    endpoint.__kiban_csrf_exempt__ = True  # type: ignore[attr-defined]
    return endpoint


def csrf_token(request: Request) -> str:
    """The session's CSRF token, created on first use."""
    token = request.session.get(CSRF_KEY)
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        request.session[CSRF_KEY] = token
    return token


async def csrf_protect(request: Request) -> None:
    """App-wide dependency: refuse unsafe requests without the session's CSRF token (403)."""
    if request.method not in UNSAFE_METHODS:
        return
    route = request.scope.get("route")
    if route is not None and getattr(getattr(route, "endpoint", None), "__kiban_csrf_exempt__", False):
        return
    expected = request.session.get(CSRF_KEY)
    supplied = request.headers.get(CSRF_HEADER)
    if supplied is None:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            value = (await request.form()).get(CSRF_FIELD)
            supplied = value if isinstance(value, str) else None
    if (
        not isinstance(expected, str)
        or not supplied
        or not hmac.compare_digest(expected.encode(), supplied.encode("utf-8", "replace"))
    ):
        raise Problem(
            403,
            f"Missing or wrong CSRF token: send the form field '{CSRF_FIELD}' or the header '{CSRF_HEADER}'.",
            slug="csrf-failed",
            title="CSRF check failed",
            detail_ja=(
                "セキュリティ確認（CSRF トークン）に失敗しました。"
                "ページを読み込み直してから、もう一度操作してください。"
            ),
        )


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _to_current(user: User) -> CurrentUser:
    return CurrentUser(
        id=user.id,
        username=user.username,
        display_name=user.display_name,
        role=user.role,
        municipality_code=user.municipality_code,
        organisation=user.organisation,
    )


def load_user(request: Request) -> CurrentUser | None:
    """The user of this request's session, or None; expired sessions are deleted on the way."""
    cached = getattr(request.state, "kiban_user", _UNSET)
    if cached is None or isinstance(cached, CurrentUser):
        return cached
    user: CurrentUser | None = None
    token = request.session.get(SESSION_ID_KEY)
    if isinstance(token, str) and token:
        options = request.app.state.options
        now = utcnow()
        with transaction(request.app.state.session_factory) as db:
            row = db.get(WebSession, _hash_token(token))
            if row is not None:
                owner = db.get(User, row.user_id)
                idle_over = row.last_seen_at + options.idle_timeout <= now
                if row.expires_at <= now or idle_over or owner is None or owner.disabled:
                    db.delete(row)
                else:
                    user = _to_current(owner)
                    if now - row.last_seen_at >= _TOUCH_INTERVAL:
                        row.last_seen_at = now
        if user is None:
            request.session.pop(SESSION_ID_KEY, None)
    request.state.kiban_user = user
    return user


def optional_user(request: Request) -> CurrentUser | None:
    return load_user(request)


def current_user(request: Request) -> CurrentUser:
    """Dependency: the logged-in user, or 401 (browsers are redirected to ログイン)."""
    user = load_user(request)
    if user is None:
        raise LoginRequired()
    return user


def require_role(*roles: str) -> Callable[..., CurrentUser]:
    """Dependency factory: the logged-in user when their role is one of ``roles``, else 403."""
    unknown = set(roles) - set(accounts.ROLES)
    if unknown:
        raise ValueError(f"unknown roles: {sorted(unknown)}")

    def dependency(user: Annotated[CurrentUser, Depends(current_user)]) -> CurrentUser:
        if user.role not in roles:
            raise Problem(
                403,
                f"Role '{user.role}' may not use this endpoint; allowed: {', '.join(roles)}.",
                slug="role-forbidden",
                title="Forbidden for this role",
                detail_ja=f"この操作は「{user.role_ja}」の権限では行えません。",
            )
        return user

    return dependency


def require_clerk(municipality_code: str, user: CurrentUser) -> CurrentUser:
    """Raise 403 unless ``user`` is a clerk of ``municipality_code``; for routes with the code in the path."""
    if not user.can_access_municipality(municipality_code):
        raise Problem(
            403,
            "Clerks may only access their own municipality.",
            slug="municipality-forbidden",
            title="Forbidden for this municipality",
            detail_ja="担当する市区町村以外の情報は表示できません。",
        )
    return user


class TokenBucketLimiter:
    """An in-memory token bucket per key (one process only; production shares it through Redis).

    ``capacity`` attempts at once, refilled at ``refill_per_second``; at most ``max_keys`` keys
    are kept (the least recently used are dropped) so that random keys cannot exhaust memory.
    """

    def __init__(
        self,
        capacity: float,
        refill_per_second: float,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = capacity
        self.refill_per_second = refill_per_second
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[Any, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def acquire(self, key: Any) -> float:
        """Take one token; return 0 when allowed, else the seconds until a token is free."""
        with self._lock:
            now = self._clock()
            tokens, stamp = self._buckets.pop(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - stamp) * self.refill_per_second)
            wait = 0.0
            if tokens >= 1:
                tokens -= 1
            else:
                wait = (1 - tokens) / self.refill_per_second
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return wait


def _safe_next(target: str | None) -> str:
    # Only same-site paths: "//evil.example" and "/\\evil" would leave the site.
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")) or "\\" in target:
        return "/"
    if any(ord(c) < 0x20 or c == "\x7f" for c in target):
        return "/"
    return target


router = APIRouter(tags=["auth"])


def _login_page(
    request: Request,
    *,
    status_code: int = 200,
    error: str | None = None,
    username: str = "",
    next_url: str = "/",
) -> Response:
    from kiban.web.app import render

    return render(
        request,
        "login.html",
        {
            "error": error,
            "username": username,
            "next": next_url,
            "logged_out": request.query_params.get("logged_out"),
            "max_failed": accounts.MAX_FAILED_LOGINS,
            "lockout_minutes": int(accounts.LOCKOUT_DURATION.total_seconds() // 60),
        },
        status_code=status_code,
    )


@router.get("/login", include_in_schema=False)
def login_form(request: Request, next: str = "/") -> Response:  # noqa: A002 - the query name users see
    if load_user(request) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _login_page(request, next_url=_safe_next(next))


LOGIN_FAILED_JA = "ユーザー名またはパスワードが正しくありません。"
LOCKED_JA = (
    "ログインの失敗が続いたため、このアカウントは一時的にロックされています。"
    "しばらくしてから再度お試しください。"
)
DISABLED_JA = "このアカウントは利用停止されています。管理者にお問い合わせください。"
USERNAME_FORM_JA = "ユーザー名の形式が正しくありません（半角英小文字・数字・「.」「_」「-」の3〜64文字）。"
RATE_LIMITED_JA = "ログインの試行が多すぎます。しばらく待ってからもう一度お試しください。"


@router.post("/login", summary="Log in with a username and password (form)")
def login(
    request: Request,
    username: Annotated[str, Form(max_length=accounts.USERNAME_MAX)],
    password: Annotated[str, Form(max_length=accounts.PASSWORD_MAX)],
    next: Annotated[str, Form(max_length=2048)] = "/",  # noqa: A002
) -> Response:
    """Start a session. Browsers are redirected (303); failures answer 401 with the reason."""
    app_state = request.app.state
    html = wants_html(request)
    next_url = _safe_next(next)
    name = username.strip().lower()
    if not accounts._USERNAME_RE.fullmatch(name):
        if html:
            return _login_page(request, status_code=422, error=USERNAME_FORM_JA, next_url=next_url)
        raise validation_problem(
            [
                FieldError(
                    "body.username", "string_pattern_mismatch", f"must match {accounts.USERNAME_PATTERN}"
                )
            ]
        )

    client = request.client.host if request.client else "unknown"
    wait = app_state.login_limiter.acquire((name, client))
    if wait > 0:
        app_state.metrics.logins.labels(outcome="rate_limited").inc()
        retry = str(max(1, int(wait + 0.999)))
        if html:
            response = _login_page(
                request, status_code=429, error=RATE_LIMITED_JA, username=name, next_url=next_url
            )
            response.headers["Retry-After"] = retry
            return response
        raise Problem(
            429,
            "Too many login attempts; wait before trying again.",
            slug="rate-limited",
            title="Too many requests",
            headers={"Retry-After": retry},
        )

    with transaction(app_state.session_factory) as db:
        result = accounts.authenticate(db, name, password)
        session_token = None
        if result.ok and result.user is not None:
            session_token = secrets.token_urlsafe(32)
            now = utcnow()
            db.add(
                WebSession(
                    id=_hash_token(session_token),
                    user_id=result.user.id,
                    created_at=now,
                    last_seen_at=now,
                    expires_at=now + app_state.options.absolute_timeout,
                )
            )
    app_state.metrics.logins.labels(outcome=result.outcome).inc()
    logger.info("login %s for %s from %s", result.outcome, name, client)

    if session_token is None:
        message = {"locked": LOCKED_JA, "disabled": DISABLED_JA}.get(result.outcome, LOGIN_FAILED_JA)
        if html:
            return _login_page(request, status_code=401, error=message, username=name, next_url=next_url)
        slug = {"locked": "account-locked", "disabled": "account-disabled"}.get(
            result.outcome, "login-failed"
        )
        raise Problem(
            401,
            "Wrong username or password, or the account is locked or disabled.",
            slug=slug,
            title="Login failed",
            detail_ja=message,
        )

    # A fresh session and CSRF token at login: a token planted before login is worthless after.
    request.session.clear()
    request.session[SESSION_ID_KEY] = session_token
    request.state.kiban_user = None
    csrf_token(request)
    return RedirectResponse(next_url, status_code=303)


@router.post("/logout", summary="End the session")
def logout(request: Request, user: Annotated[CurrentUser, Depends(current_user)]) -> Response:
    token = request.session.get(SESSION_ID_KEY)
    if isinstance(token, str):
        with transaction(request.app.state.session_factory) as db:
            db.execute(delete(WebSession).where(WebSession.id == _hash_token(token)))
    request.session.clear()
    if wants_html(request):
        return RedirectResponse("/login?logged_out=1", status_code=303)
    return Response(status_code=204)


@router.get("/api/session", summary="Who is logged in, and the CSRF token for unsafe API calls")
def session_info(request: Request, user: Annotated[CurrentUser, Depends(current_user)]) -> dict[str, Any]:
    return {
        "username": user.username,
        "display_name": user.display_name,
        "role": user.role,
        "municipality_code": user.municipality_code,
        "organisation": user.organisation,
        "csrf_token": csrf_token(request),
    }


async def _on_login_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    if wants_html(request) and request.method == "GET":
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        from urllib.parse import quote

        return RedirectResponse(f"/login?next={quote(_safe_next(target), safe='')}", status_code=303)
    return problem_response(request, exc)
