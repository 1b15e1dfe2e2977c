"""Kiosk web: the JSON API kiosk devices call, the touchscreen page, operator pages (SPEC K6).

Kiosk devices authenticate every call with three headers (no login session, so no CSRF token):
``X-Kiosk-Id``, ``X-Kiosk-Credential`` and ``X-Kiosk-Interface-Version``. Binary values
(challenge, certificate, signature) travel as base64. A refusal answers
``{"field", "rule", "message"}`` (message: what the screen shows) with the refusal's status.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse
from sqlalchemy import func, select
from starlette.responses import Response

from kiban.web.app import NavItem, add_nav_item, render
from kiban.web.auth import CurrentUser, csrf_exempt, require_role

from . import service
from .issuing import RegisterIssuer
from .models import Kiosk, KioskIssuance, KioskOperator, KioskRefusal, WithdrawnVersion
from .service import Centre, KioskCredential, KioskError
from .signing import pades_finisher

MAX_BODY = 16 * 1024
router = APIRouter(prefix="/api/kiosk", tags=["kiosk"])
pages = APIRouter(prefix="/kiosk", include_in_schema=False)
Operator = Annotated[CurrentUser, Depends(require_role("national_operator"))]


def centre(request: Request) -> Centre:
    state = request.app.state
    found = getattr(state, "kiosk_centre", None)
    if found is None:
        from kiban.core.documents import KeyDirectorySigners
        from kiban.jpki.keys import keystore_from_settings

        signers = KeyDirectorySigners(state.settings.keys_dir)
        finish = pades_finisher(state.session_factory, keystore_from_settings(state.settings))
        issuer = RegisterIssuer(state.session_factory, signers=signers, finish=finish)
        found = Centre(state.session_factory, issuer, require_signed=True)
        state.kiosk_centre = found
    return found


def _credential(request: Request) -> KioskCredential:
    h = request.headers
    return KioskCredential(
        h.get("x-kiosk-id", ""), h.get("x-kiosk-credential", ""), h.get("x-kiosk-interface-version", "")
    )


def _refusal(request: Request, exc: KioskError, session_id: str | None = None) -> JSONResponse:
    # Bad input caught here (body too large, not JSON, not base64) is logged like the centre's own.
    centre(request).log_refusal(request.headers.get("x-kiosk-id"), session_id, exc)
    return JSONResponse(
        {"field": exc.field, "rule": exc.rule, "message": exc.message}, status_code=exc.status
    )


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise KioskError("body", "oversized", f"at most {MAX_BODY} bytes", status=413)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise KioskError("body", "type", "JSON expected") from None
    if not isinstance(data, dict):
        raise KioskError("body", "type", "a JSON object expected")
    return data


def _bytes(data: dict[str, Any], name: str) -> bytes:
    value = data.get(name)
    if not isinstance(value, str):
        raise KioskError(name, "type", "base64 text expected")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise KioskError(name, "type", "base64 text expected") from None


@router.post("/sessions")
@csrf_exempt
async def open_session(request: Request) -> Response:
    try:
        await _body(request)
        ch = centre(request).open_session(_credential(request))
    except KioskError as exc:
        return _refusal(request, exc)
    return JSONResponse(
        {
            "session_id": ch.session_id,
            "challenge": base64.b64encode(ch.challenge).decode(),
            "expires_at": ch.expires_at.isoformat(),
        },
        status_code=201,
    )


@router.post("/sessions/{session_id}/authenticate")
@csrf_exempt
async def authenticate(request: Request, session_id: str) -> Response:
    try:
        data = await _body(request)
        menu = centre(request).authenticate(
            _credential(request),
            session_id,
            _bytes(data, "challenge"),
            _bytes(data, "certificate"),
            _bytes(data, "signature"),
        )
    except KioskError as exc:
        return _refusal(request, exc, session_id)
    return JSONResponse(
        {
            "session_id": menu.session_id,
            "municipality_code": menu.municipality_code,
            "documents": [
                {"document_type": i.document_type, "name": i.name, "fee": i.fee, "household": i.household}
                for i in menu.items
            ],
        }
    )


@router.post("/sessions/{session_id}/documents")
@csrf_exempt
async def request_document(request: Request, session_id: str) -> Response:
    try:
        data = await _body(request)
        printed = centre(request).request_document(
            _credential(request),
            session_id,
            data.get("document_type"),  # type: ignore[arg-type]
            household=data.get("household", False),
            fiscal_year=data.get("fiscal_year"),
        )
    except KioskError as exc:
        return _refusal(request, exc, session_id)
    return Response(
        printed.pdf,
        media_type="application/pdf",
        headers={
            "X-Kiosk-Session": printed.session_id,
            "X-Kiosk-Serial": printed.serial,
            "X-Kiosk-Fee": str(printed.fee),
            "X-Kiosk-Pdf-Sha256": printed.pdf_hash,
        },
    )


@router.delete("/sessions/{session_id}")
@csrf_exempt
async def close_session(request: Request, session_id: str) -> Response:
    try:
        centre(request).close(_credential(request), session_id)
    except KioskError as exc:
        return _refusal(request, exc, session_id)
    return Response(status_code=204)


# --------------------------------------------------------------------------- pages


@pages.get("/screen")
async def screen(request: Request) -> Response:
    """The touchscreen a convenience-store kiosk shows (its card reader is the page's ``kibanCard``)."""
    return render(request, "kiosk/screen.html", {"messages": service.MESSAGES})


STATIC = Path(__file__).parent / "static"


@pages.get("/screen.js")
async def screen_js() -> Response:
    return Response((STATIC / "screen.js").read_bytes(), media_type="text/javascript; charset=utf-8")


@pages.get("/screen.css")
async def screen_css() -> Response:
    return Response((STATIC / "screen.css").read_bytes(), media_type="text/css; charset=utf-8")


@pages.get("")
async def status(request: Request, user: Operator) -> Response:
    """Operators, their kiosks, withdrawn versions, today's documents and refusals."""
    return _status(request)


def _status(request: Request, extra: dict[str, Any] | None = None, status_code: int = 200) -> Response:
    session = request.app.state.session_factory()
    try:
        operators = list(session.scalars(select(KioskOperator).order_by(KioskOperator.operator_id)))
        kiosks = list(session.scalars(select(Kiosk).order_by(Kiosk.operator_id, Kiosk.kiosk_id)))
        withdrawn = list(session.scalars(select(WithdrawnVersion)))
        issued = dict(
            session.execute(
                select(KioskIssuance.kiosk_id, func.count()).group_by(KioskIssuance.kiosk_id)
            ).all()
        )
        refusals = service.refusal_counts(session)
        recent = list(session.scalars(select(KioskRefusal).order_by(KioskRefusal.id.desc()).limit(20)))
        now = datetime.now(service.JST)
        lines = service.settlement(session, now.year, now.month)
    finally:
        session.close()
    return render(
        request,
        "kiosk/status.html",
        {
            "operators": operators,
            "kiosks": kiosks,
            "withdrawn": withdrawn,
            "issued": issued,
            "refusals": refusals,
            "recent": recent,
            "lines": lines,
            "year": now.year,
            "month": now.month,
            "types": service.DOCUMENT_TYPES,
            **(extra or {}),
        },
        status_code=status_code,
    )


@pages.post("/operators")
async def add_operator(request: Request, user: Operator) -> Response:
    form = await request.form()
    try:
        with request.app.state.session_factory.begin() as s:
            service.register_operator(s, str(form.get("operator_id", "")), str(form.get("name", "")))
    except KioskError as exc:
        return _status(request, {"error": f"{exc.field}: {exc.rule}"}, status_code=exc.status)
    return RedirectResponse("/kiosk", status_code=303)


@pages.post("/kiosks")
async def add_kiosk(request: Request, user: Operator) -> Response:
    """A new kiosk: its credential is shown on this page once (only its hash is kept)."""
    form = await request.form()
    try:
        with request.app.state.session_factory.begin() as s:
            kiosk, credential = service.register_kiosk(
                s,
                str(form.get("operator_id", "")),
                str(form.get("kiosk_id", "")),
                str(form.get("store_name", ""))[:100],
                str(form.get("interface_version", "2")),
            )
            kiosk_id = kiosk.kiosk_id
    except KioskError as exc:
        return _status(request, {"error": f"{exc.field}: {exc.rule}"}, status_code=exc.status)
    return _status(request, {"new_credential": (kiosk_id, credential)}, status_code=201)


@pages.post("/versions/withdraw")
async def withdraw(request: Request, user: Operator) -> Response:
    form = await request.form()
    version, reason = str(form.get("interface_version", "")), str(form.get("reason", "")) or "drill"
    with request.app.state.session_factory.begin() as s:
        service.withdraw_version(s, version[:16], reason[:200])
    return RedirectResponse("/kiosk", status_code=303)


@pages.post("/versions/restore")
async def restore(request: Request, user: Operator) -> Response:
    form = await request.form()
    with request.app.state.session_factory.begin() as s:
        service.restore_version(s, str(form.get("interface_version", ""))[:16])
    return RedirectResponse("/kiosk", status_code=303)


def register_web(app: FastAPI) -> None:
    app.include_router(router)
    app.include_router(pages)
    add_nav_item(app, NavItem("コンビニ交付", "/kiosk", roles=("national_operator",)))
    # The public verification page of the documents (built separately) joins when it exists.
    if importlib.util.find_spec("kiban.kiosk.verification") is not None:
        from kiban.kiosk import verification

        app.include_router(verification.router)
