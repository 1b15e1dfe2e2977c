"""The web application: ``create_app(settings)`` builds the FastAPI app that ``kiban serve`` runs.

It carries the Japanese UI shell (base layout, ログイン, ホーム), sessions and CSRF protection,
problem+json errors, health (``/healthz``), readiness (``/readyz``), Prometheus metrics
(``/metrics``) and the OpenAPI document (``/openapi.json``).

Capabilities plug in without editing this file (:func:`discover_capabilities`): the module
``kiban.<capability>.api`` either defines ``register_web(app: FastAPI) -> None`` — which includes
its routers, adds navigation with :func:`add_nav_item` and metrics on ``app.state.metrics_registry``
— or just a ``router`` (an ``APIRouter``), which is included as is. A ``templates/`` folder beside
it is added under the capability's name: ``render(request, "register/resident.html", ...)``.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import os
import pkgutil
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import BaseLoader, ChoiceLoader, Environment, FileSystemLoader, PrefixLoader, select_autoescape
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.datastructures import MutableHeaders
from starlette.middleware.sessions import SessionMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import kiban
from kiban.core.accounts import ROLE_NAMES_JA
from kiban.core.config import Settings
from kiban.core.database import alembic_config, make_engine, session_factory
from kiban.core.dispatch import EmbeddedDispatcher, EventStatsCollector, build_registry
from kiban.web import auth
from kiban.web.problems import PROBLEM_MEDIA_TYPE, Problem, install_problem_handlers, problem_openapi

logger = logging.getLogger("kiban.web")

WEB_DIR = Path(__file__).parent
SYSTEM_NAME = "基盤 Kiban"
SESSION_COOKIE = "kiban_session"


@dataclass(frozen=True)
class WebOptions:
    """Tunables of the web layer; the defaults are the production values."""

    idle_timeout: timedelta = timedelta(minutes=30)
    absolute_timeout: timedelta = timedelta(hours=12)
    max_body_bytes: int = 10 * 1024 * 1024
    # Per username + client address: 10 attempts at once, then one every 6 seconds.
    login_burst: float = 10
    login_refill_per_second: float = 1 / 6
    # Embedded mode: deliver the outbox in this process in the background.
    deliver_events: bool = True


@dataclass(frozen=True)
class NavItem:
    """A link in the header navigation, shown to the listed roles (all roles when empty)."""

    label: str
    href: str
    roles: tuple[str, ...] = ()

    def visible_to(self, role: str | None) -> bool:
        return role is not None and (not self.roles or role in self.roles)


@dataclass(frozen=True)
class RoleTask:
    """One thing a role does (ホームの業務一覧); linked once a capability serves ``href``."""

    label: str
    description: str
    href: str


# From SPEC §1: what each role does with Kiban. Capabilities serve the paths as they land.
ROLE_TASKS: dict[str, tuple[RoleTask, ...]] = {
    "clerk": (
        RoleTask("住民記録", "出生・死亡・転入・転出・転居・氏名の変更を記録します。", "/register"),
        RoleTask(
            "住民票の写しの交付", "住民票の写しと印鑑登録証明書を交付します。", "/register/certificates"
        ),
        RoleTask("マイナンバーカードの交付", "カードを交付し、暗証番号を設定します。", "/cards"),
        RoleTask("提供状況の開示", "本人確認情報の提供状況を本人に開示します。", "/disclosure"),
        RoleTask("副本の登録", "情報連携のための副本を登録します。", "/linkage"),
    ),
    "national_operator": (
        RoleTask("全国サーバ", "本人確認情報の全国の写しを監視します。", "/network"),
        RoleTask("付番", "個人番号の生成と再付番を管理します。", "/numbering"),
        RoleTask("カード管理", "カードの発行・一時停止・廃止を管理します。", "/cards"),
        RoleTask("公的個人認証", "電子証明書の発行と失効（CRL・OCSP）を管理します。", "/jpki"),
        RoleTask("コンビニ交付", "証明書交付センターの稼働状況を確認します。", "/kiosk"),
        RoleTask("監査", "個人情報の参照・更新の記録（監査ログ）を確認します。", "/audit"),
    ),
    "agency": (
        RoleTask("本人確認情報の照会", "法令で定められた事務のために一件ずつ照会します。", "/provision"),
        RoleTask("一括照会", "ファイルで一括して照会します。", "/provision/bulk"),
    ),
    "verifier": (
        RoleTask("電子証明書の検証", "CRL と OCSP で電子証明書の有効性を確認します。", "/jpki/verify"),
        RoleTask("新旧紐付け", "失効した証明書から新しい証明書をたどります。", "/jpki/links"),
        RoleTask(
            "基本4情報の提供", "本人の同意に基づき、最新の基本4情報を受け取ります。", "/jpki/basic-info"
        ),
    ),
    "call_centre": (
        RoleTask(
            "カードの一時停止", "紛失したカードと電子証明書を24時間いつでも一時停止します。", "/cards/suspend"
        ),
    ),
}


class WebMetrics:
    """Prometheus collectors of one app; capabilities add theirs to :attr:`registry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "kiban_http_requests_total",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "kiban_http_request_duration_seconds",
            "HTTP request latency by method and route template.",
            ["method", "route"],
            registry=self.registry,
        )
        self.logins = Counter(
            "kiban_logins_total", "Login attempts by outcome.", ["outcome"], registry=self.registry
        )


def _read_secret(path: Path) -> str:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PermissionError(f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")
    secret = path.read_text(encoding="ascii").strip()
    if len(secret) < 32:
        raise ValueError(f"{path} holds too short a secret; delete it to make a new one")
    return secret


def load_or_create_secret(path: Path) -> str:
    """The session-signing secret in ``path``, created (mode 0600) on first run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_secret(path)
    secret = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secret + "\n")
    return secret


CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


def apply_security_headers(headers: MutableHeaders, path: str, *, production: bool = False) -> None:
    headers.setdefault("Content-Security-Policy", CSP)
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    headers.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
    if production:
        headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    # Pages and API answers may carry personal data: never cached, unless a route says otherwise
    # (OCSP responses set their own caching).
    if not path.startswith("/static/"):
        headers.setdefault("Cache-Control", "no-store")


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, *, production: bool) -> None:
        self.app = app
        self.production = production

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                apply_security_headers(
                    MutableHeaders(scope=message), scope["path"], production=self.production
                )
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit`` bytes (413) before anything parses them."""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            import json

            status = 413 if declared.isdigit() else 400
            body = json.dumps(
                {
                    "type": "about:blank",
                    "title": "Content Too Large" if status == 413 else "Bad Request",
                    "status": status,
                    "detail": f"Request bodies are limited to {self.limit} bytes."
                    if status == 413
                    else "Invalid Content-Length.",
                    "instance": scope["path"],
                }
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise Problem(413, f"Request bodies are limited to {self.limit} bytes.")
            return message

        await self.app(scope, counting_receive, send)


class FastPathMiddleware:
    """Outermost: hands the paths in ``routes`` (prefix -> raw ASGI app) straight to their app.

    For endpoints whose answer is a few stored bytes at thousands of requests a second (OCSP):
    they skip sessions, CSRF, routing and the generic metrics, and do their own headers and
    counting. Capabilities fill ``app.state.fast_paths`` in ``register_web``.
    """

    def __init__(self, app: ASGIApp, *, routes: dict[str, ASGIApp]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.routes:
            path: str = scope["path"]
            for prefix, handler in self.routes.items():
                if path == prefix or path.startswith(prefix + "/"):
                    await handler(scope, receive, send)
                    return
        await self.app(scope, receive, send)


class MetricsMiddleware:
    """Counts and times every request by its route template (not its path: bounded labels)."""

    def __init__(self, app: ASGIApp, *, metrics: WebMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            if (
                template.startswith("/static")
                or template == "<unmatched>"
                and scope["path"].startswith("/static/")
            ):
                template = "/static"
            method = scope.get("method", "GET")
            self.metrics.requests.labels(method=method, route=template, status=str(status)).inc()
            self.metrics.latency.labels(method=method, route=template).observe(time.perf_counter() - started)


def add_nav_item(app: FastAPI, item: NavItem) -> None:
    """Add a link to the header navigation (capabilities call this in ``register_web``)."""
    app.state.nav.append(item)


def add_template_dir(app: FastAPI, directory: Path | str, prefix: str | None = None) -> None:
    """Let templates in ``directory`` be rendered, as ``<prefix>/<name>`` when a prefix is given.

    They may ``{% extends "base.html" %}``; the prefix keeps capabilities' names apart.
    """
    loader = app.state.templates.env.loader
    assert isinstance(loader, ChoiceLoader)
    added: BaseLoader = FileSystemLoader(str(directory))
    if prefix:
        added = PrefixLoader({prefix: added})
    loader.loaders = [*loader.loaders, added]


def municipality_name(code: str) -> str | None:
    """「東京都千代田区」 for 131016, from the municipality master; None when unknown."""
    from kiban.core import master

    try:
        found = master.municipality(code)
    except master.MasterError:
        return None
    return f"{found.prefecture}{found.name}"


def _route_paths(routes: Iterable[Any], prefix: str = "") -> Iterator[str]:
    for route in routes:
        if isinstance(getattr(route, "path", None), str):
            yield prefix + route.path
        # FastAPI ≥ 0.165 keeps an included router as one entry with its own routes and prefix.
        included = getattr(route, "original_router", None)
        if included is not None:
            context = getattr(route, "include_context", None)
            yield from _route_paths(included.routes, prefix + str(getattr(context, "prefix", "") or ""))


def _served_paths(app: FastAPI) -> set[str]:
    return set(_route_paths(app.routes))


def render(
    request: Request,
    name: str,
    context: Mapping[str, Any] | None = None,
    *,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Render a template with the layout's context: user, CSRF token, navigation, role names."""
    state = request.app.state
    try:
        user = auth.load_user(request)
    except SQLAlchemyError:
        # An error page about the database must not need the database.
        user = None
    full: dict[str, Any] = {
        "system_name": SYSTEM_NAME,
        "user": user,
        "csrf_token": auth.csrf_token(request),
        "nav": [item for item in state.nav if item.visible_to(user.role if user else None)],
        "municipality_name": state.municipality_name(user.municipality_code)
        if user and user.municipality_code
        else None,
    }
    full.update(context or {})
    templates: Jinja2Templates = state.templates
    return templates.TemplateResponse(
        request, name, full, status_code=status_code, headers=dict(headers or {})
    )


def discover_capabilities() -> list[Callable[[FastAPI], None]]:
    """A registration function for every ``kiban.<capability>.api`` module in the package."""
    found: list[Callable[[FastAPI], None]] = []
    for module in sorted(pkgutil.iter_modules(kiban.__path__), key=lambda m: m.name):
        if not module.ispkg or module.name in ("web", "cli", "core"):
            continue
        name = f"kiban.{module.name}.api"
        if importlib.util.find_spec(name) is None:
            continue
        found.append(_registration(module.name, importlib.import_module(name)))
    return found


def _registration(capability: str, api: Any) -> Callable[[FastAPI], None]:
    def register(app: FastAPI) -> None:
        templates = Path(api.__file__).parent / "templates"
        if templates.is_dir():
            add_template_dir(app, templates, prefix=capability)
        hook = getattr(api, "register_web", None)
        if callable(hook):
            hook(app)
        elif isinstance(getattr(api, "router", None), APIRouter):
            app.include_router(api.router)
        else:
            logger.warning("%s has neither register_web(app) nor router; nothing served", api.__name__)

    return register


def _schema_heads(url: str) -> set[str]:
    from alembic.script import ScriptDirectory

    return set(ScriptDirectory.from_config(alembic_config(url)).get_heads())


def create_app(
    settings: Settings,
    *,
    options: WebOptions | None = None,
    capabilities: Iterable[Callable[[FastAPI], None]] | None = None,
) -> FastAPI:
    """The Kiban web app over ``settings``' data directory and database.

    ``capabilities`` defaults to :func:`discover_capabilities`; tests pass their own.
    """
    options = options or WebOptions()
    settings.ensure_dirs()
    secret = load_or_create_secret(settings.keys_dir / "web_secret")
    engine = make_engine(settings.database_url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Distributed mode: the network's backlog gauges, renewed in the background (docs/network.md).
        stop_refresh = asyncio.Event()
        refresher = None
        if backlog is not None:
            task = backlog.refresh(settings.nats_url, stop_refresh, directions=("up", "down", "ca"))
            refresher = asyncio.create_task(task)
        dispatcher = None
        if options.deliver_events and settings.event_transport == "embedded":
            # Embedded mode: the outbox is delivered in this process (production runs relays).
            dispatcher = EmbeddedDispatcher(app.state.session_factory, build_registry())
            dispatcher.start()
        app.state.dispatcher = dispatcher
        yield
        if dispatcher is not None:
            dispatcher.stop()
        if refresher is not None:
            stop_refresh.set()
            # A refresh waiting on NATS is not worth waiting for at shutdown.
            with suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(refresher, timeout=5)
        engine.dispose()

    app = FastAPI(
        title="Kiban",
        summary="Resident register, identity network, My Number and JPKI for local governments.",
        version=kiban.__version__,
        # Swagger UI and ReDoc load scripts from CDNs; the OpenAPI document is served as JSON only.
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=lifespan,
        dependencies=[Depends(auth.csrf_protect)],
    )
    metrics = WebMetrics()
    environment = Environment(
        loader=ChoiceLoader([FileSystemLoader(str(WEB_DIR / "templates"))]),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    environment.globals["role_names"] = ROLE_NAMES_JA
    app.state.settings = settings
    app.state.options = options
    app.state.engine = engine
    app.state.session_factory = session_factory(engine)
    app.state.metrics = metrics
    app.state.metrics_registry = metrics.registry
    metrics.registry.register(EventStatsCollector(app.state.session_factory))
    from kiban.network.service import ReplicationCollector

    metrics.registry.register(ReplicationCollector(app.state.session_factory))
    backlog = None
    if settings.event_transport == "nats":
        from kiban.network.distributed import BacklogCollector

        backlog = BacklogCollector(app.state.session_factory)
        metrics.registry.register(backlog)
    app.state.network_backlog = backlog
    app.state.templates = Jinja2Templates(env=environment)
    app.state.nav = []
    app.state.login_limiter = auth.TokenBucketLimiter(options.login_burst, options.login_refill_per_second)
    app.state.municipality_name = municipality_name
    heads: set[str] = set()

    install_problem_handlers(app)
    app.add_exception_handler(auth.LoginRequired, auth._on_login_required)

    # Added innermost first: sessions sit inside the body limit, headers and metrics.
    app.add_middleware(
        SessionMiddleware,
        secret_key=secret,
        session_cookie=SESSION_COOKIE,
        max_age=int(options.absolute_timeout.total_seconds()),
        same_site="lax",
        https_only=settings.mode == "production",
    )
    app.add_middleware(BodyLimitMiddleware, limit=options.max_body_bytes)
    app.add_middleware(SecurityHeadersMiddleware, production=settings.mode == "production")
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.state.fast_paths = {}
    app.add_middleware(FastPathMiddleware, routes=app.state.fast_paths)

    app.mount("/static", StaticFiles(directory=str(WEB_DIR / "static")), name="static")
    app.include_router(auth.router)

    @app.get("/healthz", tags=["operations"], summary="Liveness: the process answers (no database)")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="Readiness: database reachable and schema at head")
    def readyz() -> dict[str, Any]:
        from alembic.migration import MigrationContext

        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                current = set(MigrationContext.configure(conn).get_current_heads())
        except SQLAlchemyError as exc:
            logger.warning("readiness: database unreachable: %s", type(exc).__name__)
            raise Problem(503, "The database is unreachable.", slug="not-ready", title="Not ready") from None
        if not heads:
            heads.update(_schema_heads(settings.database_url))
        if current != heads:
            raise Problem(
                503,
                "The database schema is not at the newest revision; run `kiban db upgrade`.",
                slug="not-ready",
                title="Not ready",
                extra={"schema": sorted(current), "expected": sorted(heads)},
            )
        return {"status": "ready", "schema": sorted(current)}

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=Response)
    def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    def home(
        request: Request, user: Annotated[auth.CurrentUser | None, Depends(auth.optional_user)]
    ) -> Response:
        if user is None:
            return RedirectResponse("/login", status_code=303)
        served = _served_paths(app)
        tasks = [
            {"label": t.label, "description": t.description, "href": t.href if t.href in served else None}
            for t in ROLE_TASKS.get(user.role, ())
        ]
        return render(request, "home.html", {"tasks": tasks})

    for register in discover_capabilities() if capabilities is None else capabilities:
        register(app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {
                "session": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE},
                "csrf": {
                    "type": "apiKey",
                    "in": "header",
                    "name": auth.CSRF_HEADER,
                    "description": "Required on POST, PUT, PATCH and DELETE; get it from GET /api/session.",
                },
            }
            app.openapi_schema = problem_openapi(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
