"""Public verification of issued documents (証明書の真正性確認): no login.

- ``GET /verify``: the upload form (Japanese).
- ``POST /verify``: a PDF (multipart field ``file``, at most :data:`MAX_UPLOAD_BYTES`) → the
  result page, or JSON when the client asks for it (``Accept: application/json``).
- ``GET /verify/qr?data=KQ1:…``: a scanned QR payload checked online (signature, certificate,
  ledger) → page or JSON.

Verification changes nothing and needs no authority, so POST is exempt from the CSRF check (a
client such as ``curl`` can post a file); requests are rate-limited per client address.
Include with ``app.include_router(router)`` and the templates with :func:`install` (or the
kiosk's ``register_web`` adding ``kiosk/templates`` under the prefix ``kiosk``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, File, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from kiban.core import pdfsign
from kiban.core.wareki import to_wareki
from kiban.web import auth
from kiban.web.problems import Problem, wants_html

router = APIRouter(tags=["documents"])

MAX_UPLOAD_BYTES = 2 * 1024 * 1024  # an issued document is ~50-100 KB
MAX_QR_CHARS = 1000
RATE_BURST = 20
RATE_PER_SECOND = 2.0
TEMPLATES = Path(__file__).parent / "templates"

TYPE_NAMES = {
    "register.resident_copy": "住民票の写し",
    "register.entry_certificate": "住民票記載事項証明書",
    "register.removed_record_copy": "除票の写し",
    "register.move_out_certificate": "転出証明書",
    "register.seal_certificate": "印鑑登録証明書",
    "register.tax_certificate": "所得・課税証明書",
}


def install(app: FastAPI) -> None:
    """Serve the pages on ``app``: templates under ``kiosk/`` (if not there yet) and the router."""
    from kiban.web.app import add_template_dir

    loader = app.state.templates.env.loader
    try:
        loader.get_source(app.state.templates.env, "kiosk/verify_form.html")
    except Exception:
        add_template_dir(app, TEMPLATES, prefix="kiosk")
    app.include_router(router)


def _limit(request: Request) -> None:
    state = request.app.state
    limiter = getattr(state, "document_verify_limiter", None)
    if limiter is None:
        limiter = state.document_verify_limiter = auth.TokenBucketLimiter(RATE_BURST, RATE_PER_SECOND)
    client = request.client.host if request.client else "unknown"
    wait = limiter.acquire(client)
    if wait > 0:
        raise Problem(
            429,
            "Too many verification requests; retry later.",
            slug="rate-limited",
            headers={"Retry-After": str(max(1, int(wait + 0.999)))},
            detail_ja="確認の回数が多すぎます。しばらくしてからもう一度お試しください。",
        )


def _render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> Response:
    from kiban.web.app import render

    return render(request, f"kiosk/{name}", context, status_code=status_code)


def _answer(request: Request, result: pdfsign.VerificationResult, source: str) -> Response:
    if wants_html(request):
        return _render(
            request,
            "verify_result.html",
            {
                "result": result,
                "source": source,
                "type_name": TYPE_NAMES.get(result.document_type or "", result.document_type),
                "issued_wareki": to_wareki(result.issued_on) if result.issued_on else None,
            },
        )
    return JSONResponse(result.as_dict())


def _refuse(request: Request, status: int, field: str, rule: str, detail: str, detail_ja: str) -> Response:
    if wants_html(request):
        return _render(
            request,
            "verify_form.html",
            {"error": detail_ja, "max_mb": MAX_UPLOAD_BYTES // (1024 * 1024)},
            status_code=status,
        )
    from kiban.web.problems import FieldError, problem_response

    return problem_response(
        request,
        Problem(
            status,
            detail,
            slug="validation-failed" if status == 422 else "too-large",
            errors=[FieldError(field, rule, detail)],
            detail_ja=detail_ja,
        ),
    )


@router.get("/verify", include_in_schema=False)
def verify_form(request: Request) -> Response:
    """The public upload form."""
    return _render(request, "verify_form.html", {"max_mb": MAX_UPLOAD_BYTES // (1024 * 1024)})


@router.post("/verify", summary="Verify an issued PDF (signature, QR code, ledger)")
@auth.csrf_exempt
def verify_upload(request: Request, file: Annotated[UploadFile | None, File()] = None) -> Response:
    _limit(request)
    if file is None:
        return _refuse(
            request,
            422,
            "file",
            "required",
            "Upload a PDF in the field 'file'.",
            "PDFファイルを選んでください。",
        )
    data = file.file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        return _refuse(
            request,
            413,
            "file",
            "max_size",
            f"The file is larger than {MAX_UPLOAD_BYTES} bytes.",
            f"ファイルが大きすぎます（{MAX_UPLOAD_BYTES // (1024 * 1024)} MB まで）。",
        )
    if data.lstrip()[:5] != b"%PDF-":
        return _refuse(request, 422, "file", "pdf", "The file is not a PDF.", "PDFファイルではありません。")
    factory = request.app.state.session_factory
    with factory() as session:
        roots = pdfsign.trust_roots_from_db(session)
        result = pdfsign.verify_pdf(data, trust_roots=roots, online_session=session)
    return _answer(request, result, "pdf")


@router.get("/verify/qr", summary="Verify a scanned document QR code (KQ1:…) online")
def verify_qr(request: Request, data: Annotated[str, Query(max_length=MAX_QR_CHARS)] = "") -> Response:
    _limit(request)
    if not data:
        return _refuse(
            request, 422, "data", "required", "Pass the QR text as ?data=", "二次元コードの内容がありません。"
        )
    factory = request.app.state.session_factory
    with factory() as session:
        result = pdfsign.verify_qr(data, session=session)
    return _answer(request, result, "qr")
