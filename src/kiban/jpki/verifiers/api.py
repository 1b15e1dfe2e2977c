"""The verifier services on the web: a JSON API under ``/api/jpki`` and pages under ``/jpki``.

Operators (role ``national_operator``): ``/jpki`` (CA status, statistics, CRL publication,
alerts), ``/jpki/verifiers`` (the registry: create, suspend, resume, tokens), ``/jpki/issuance``
(発行記録). Verifiers: ``/jpki/verify``, ``/jpki/links``, ``/jpki/basic-info`` — as staff with
role ``verifier`` (their account's organisation is the verifier code), or through the API with
``Authorization: Bearer <token>``. Every JSON route has a page twin or feeds one; errors are
problem+json naming the field and the rule (403/404/409 where the rule says so).

Wire it with :func:`register_web` (from ``kiban.jpki.api.register_web``).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session
from starlette.responses import Response

from kiban.core.database import utcnow
from kiban.jpki.verifiers import schemas, service
from kiban.jpki.verifiers.service import VerifierError, VerifierIdentity
from kiban.web import auth
from kiban.web.app import NavItem, add_nav_item, add_template_dir, render
from kiban.web.auth import CurrentUser, require_role
from kiban.web.problems import Problem

__all__ = ["register_web", "router", "pages", "TEMPLATE_PREFIX"]

log = logging.getLogger(__name__)

TEMPLATE_PREFIX = "jpki_verifiers"
TEMPLATES = Path(__file__).parent / "templates"

router = APIRouter(prefix="/api/jpki", tags=["jpki-verifiers"])
pages = APIRouter(prefix="/jpki", include_in_schema=False)

Operator = Annotated[CurrentUser, Depends(require_role("national_operator"))]
VerifierStaff = Annotated[CurrentUser, Depends(require_role("verifier"))]

RULES_JA: dict[str, str] = {
    "missing": "必須項目です。",
    "required": "必須項目です。",
    "string_too_long": "文字数が多すぎます。",
    "string_too_short": "入力してください。",
    "string_pattern_mismatch": "形式が正しくありません。",
    "string_type": "文字列で入力してください。",
    "pattern": "形式が正しくありません（英小文字・数字・「_」「-」の2〜32文字）。",
    "literal_error": "選択肢から選んでください。",
    "enum": "選択肢から選んでください。",
    "too_short": "一つ以上選んでください。",
    "too_long": "選択が多すぎます。",
    "float_parsing": "数値で入力してください。",
    "float_type": "数値で入力してください。",
    "int_parsing": "整数で入力してください。",
    "int_type": "整数で入力してください。",
    "greater_than_equal": "1以上の値を入力してください。",
    "list_type": "一覧で指定してください。",
    "greater_than": "0より大きい値を入力してください。",
    "less_than_equal": "上限を超えています。",
    "range": "範囲外の値です。",
    "max_length": "文字数が多すぎます。",
    "control_characters": "制御文字は使用できません。",
    "unique": "この検証者コードはすでに登録されています。",
    "unknown_verifier": "登録されていない検証者です。",
    "not_a_delegate": "委託先を委託元にすることはできません。",
    "principal_services": "委託元が利用できないサービスは選べません。",
    "delegates_only": "委託元は委託先の場合だけ指定します。",
    "active": "すでに利用停止されています。",
    "suspended": "利用停止されていません。",
    "unknown_token": "該当するトークンがありません。",
    "not_revoked": "すでに失効しています。",
    "active_token": "有効なトークンだけを更新できます。",
    "hex": "シリアル番号は16進数（40桁まで）で入力してください。",
    "string_pattern_mismatch_serial": "シリアル番号は16進数（40桁まで）で入力してください。",
    "known_certificate": "該当する電子証明書がありません。",
    "service_not_registered": "このサービスの利用登録がありません。",
    "consent_required": "本人の同意が記録されていません（または撤回・期限切れです）。",
    "consent_exists": "この証明書について有効な同意がすでに記録されています。",
    "certificate_valid_at_consent": "同意の日時に、この電子証明書は有効ではありませんでした。",
    "personal_certificate": "個人の電子証明書ではありません。",
    "not_future": "未来の日時は指定できません。",
    "after_given": "有効期限は同意日時より後にしてください。",
    "hex64": "SHA-256（16進64桁）で入力してください。",
    "not_in_national_copy": "本人確認情報（全国の写し）に該当者がいません。",
    "unknown_consent": "該当する同意がありません。",
    "not_withdrawn": "すでに撤回されています。",
    "period_order": "終了日が開始日より前です。",
    "no_change": "変更する項目を入力してください。",
    "datetime_parsing": "日時の形式が正しくありません（例: 2026-04-01T10:00）。",
    "datetime_from_date_parsing": "日時の形式が正しくありません（例: 2026-04-01T10:00）。",
    "date_parsing": "日付の形式が正しくありません（例: 2026-04-01）。",
    "aware_datetime": "日時の形式が正しくありません。",
    "extra_forbidden": "この項目は指定できません。",
}
REASON_JA = {
    "affiliationChanged": "記載事項の変更",
    "superseded": "更新",
    "keyCompromise": "鍵の危殆化",
    "cessationOfOperation": "利用の終了",
    "certificateHold": "一時保留",
    "unspecified": "理由なし",
}
STATUS_JA = {"good": "有効", "revoked": "失効", "hold": "一時保留"}
KIND_JA = {
    "signature": "署名用",
    "user_auth": "利用者証明用",
    "mobile_signature": "スマートフォン用 署名用",
    "mobile_user_auth": "スマートフォン用 利用者証明用",
    "organisation": "職責証明書",
    "tls_server": "TLS サーバ",
    "tls_client": "TLS クライアント",
    "ocsp_signer": "OCSP 署名用",
}
ACTION_JA = {"issue": "発行", "renew": "更新"}


def rule_ja(rule: str) -> str:
    return RULES_JA.get(rule) or f"入力内容を確認してください（{rule}）。"


# --- transactions and callers ------------------------------------------------------------------------


@contextmanager
def unit(request: Request) -> Iterator[Session]:
    """One transaction. A refusal the service logged (its audit entry) commits that entry."""
    session: Session = request.app.state.session_factory()
    try:
        yield session
        session.commit()
    except VerifierError as exc:
        if exc.logged:
            session.commit()
        else:
            session.rollback()
        raise
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@dataclass(frozen=True)
class Caller:
    identity: VerifierIdentity
    actor: str


def _unauthorised() -> Problem:
    return Problem(
        401,
        "A valid verifier token is required: Authorization: Bearer <token>.",
        slug="invalid-token",
        title="Unauthorized",
        headers={"WWW-Authenticate": 'Bearer realm="kiban-jpki"'},
    )


def _check_csrf(request: Request) -> None:
    # Verifier API routes are CSRF-exempt for token clients; a browser session still needs it.
    expected = request.session.get(auth.CSRF_KEY)
    supplied = request.headers.get(auth.CSRF_HEADER)
    if (
        not isinstance(expected, str)
        or not supplied
        or not hmac.compare_digest(expected.encode(), supplied.encode("utf-8", "replace"))
    ):
        raise Problem(
            403, f"Missing or wrong CSRF token: send the header '{auth.CSRF_HEADER}'.", slug="csrf-failed"
        )


def verifier_caller(request: Request) -> Caller:
    """Dependency: the verifier asking — by Bearer token, or a logged-in staff account with role
    ``verifier`` whose organisation is the verifier code."""
    factory = request.app.state.session_factory
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorised()
        with factory() as s:
            identity = service.identify_token(s, token.strip())
        if identity is None:
            log.warning("verifier API: unknown, revoked or suspended token")
            raise _unauthorised()
        return Caller(identity, f"token:{identity.token_id}")
    user = auth.current_user(request)
    if user.role != "verifier":
        raise Problem(
            403,
            f"Role '{user.role}' may not use this endpoint; allowed: verifier.",
            slug="role-forbidden",
            detail_ja=f"この操作は「{user.role_ja}」の権限では行えません。",
        )
    if request.method in auth.UNSAFE_METHODS:
        _check_csrf(request)
    with factory() as s:
        identity = service.identify_account(s, user.organisation)
    return Caller(identity, user.username)


AnyVerifier = Annotated[Caller, Depends(verifier_caller)]


def _keystore(request: Request) -> service.KeyStoreInfo:
    return service.keystore_info(request.app.state.settings.keys_dir)


# --- operator API ---------------------------------------------------------------------------------------


@router.get("/status", summary="CA operator's overview: CAs, statistics, CRLs, alerts, verifiers")
def api_dashboard(
    request: Request, user: Operator, months: Annotated[int, Query(ge=1, le=120)] = 12
) -> schemas.Dashboard:
    with unit(request) as s:
        return service.dashboard(s, keystore=_keystore(request), months=months)


@router.get("/cas", summary="Each CA: key store, validity, certificates by status")
def api_cas(request: Request, user: Operator) -> list[schemas.CaStatus]:
    with unit(request) as s:
        return service.ca_status(s, keystore=_keystore(request))


@router.get("/statistics", summary="Issuance and revocation statistics by month, kind and reason")
def api_statistics(
    request: Request, user: Operator, months: Annotated[int, Query(ge=1, le=120)] = 12
) -> schemas.Statistics:
    with unit(request) as s:
        return service.statistics(s, months=months)


@router.get("/crls", summary="CRL publication status per CA and partition")
def api_crls(request: Request, user: Operator) -> list[schemas.CrlStatus]:
    with unit(request) as s:
        return service.crl_status(s)


@router.get("/verifiers", summary="The verifier registry with usage today and over 30 days")
def api_verifiers(request: Request, user: Operator) -> list[schemas.VerifierView]:
    with unit(request) as s:
        return service.list_verifiers(s)


def _view(s: Session, code: str) -> schemas.VerifierView:
    return next(v for v in service.list_verifiers(s) if v.code == code)


@router.post("/verifiers", status_code=201, summary="Register a verifier (登録)")
def api_create_verifier(
    request: Request, user: Operator, body: schemas.VerifierCreate
) -> schemas.VerifierView:
    with unit(request) as s:
        service.create_verifier(s, actor=user.username, **body.model_dump())
        return _view(s, body.code)


@router.get("/verifiers/{code}", summary="A verifier: tokens (never the secrets), usage, delegates")
def api_verifier(request: Request, user: Operator, code: str) -> schemas.VerifierDetail:
    with unit(request) as s:
        return service.verifier_detail(s, code)


@router.patch("/verifiers/{code}", summary="Change a verifier's name, services or OCSP rate")
def api_update_verifier(
    request: Request, user: Operator, code: str, body: schemas.VerifierUpdate
) -> schemas.VerifierView:
    with unit(request) as s:
        service.update_verifier(s, code, actor=user.username, **body.model_dump(exclude_none=True))
        return _view(s, code)


@router.post("/verifiers/{code}/suspend", summary="Suspend a verifier (利用停止)")
def api_suspend(
    request: Request, user: Operator, code: str, body: schemas.Suspension
) -> schemas.VerifierView:
    with unit(request) as s:
        service.suspend_verifier(s, code, reason=body.reason, actor=user.username)
        return _view(s, code)


@router.post("/verifiers/{code}/resume", summary="Lift a suspension")
def api_resume(request: Request, user: Operator, code: str) -> schemas.VerifierView:
    with unit(request) as s:
        service.resume_verifier(s, code, actor=user.username)
        return _view(s, code)


def _expiry(days: int | None) -> datetime | None:
    return None if days is None else utcnow() + timedelta(days=days)


@router.post(
    "/verifiers/{code}/tokens", status_code=201, summary="Issue an API token (shown in this answer only)"
)
def api_issue_token(
    request: Request, user: Operator, code: str, body: schemas.TokenRequest
) -> schemas.IssuedToken:
    with unit(request) as s:
        return service.issue_token(
            s, code, actor=user.username, label=body.label, expires_at=_expiry(body.expires_in_days)
        )


@router.post("/verifiers/{code}/tokens/{token_id}/rotate", summary="Replace a token; the old one overlaps")
def api_rotate_token(
    request: Request, user: Operator, code: str, token_id: int, body: schemas.RotateRequest
) -> schemas.IssuedToken:
    with unit(request) as s:
        return service.rotate_token(
            s, code, token_id, actor=user.username, overlap=timedelta(hours=body.overlap_hours)
        )


@router.post("/verifiers/{code}/tokens/{token_id}/revoke", summary="Revoke a token at once")
def api_revoke_token(request: Request, user: Operator, code: str, token_id: int) -> schemas.TokenView:
    with unit(request) as s:
        return service.revoke_token(s, code, token_id, actor=user.username)


@router.get("/issuance-records", summary="発行記録: issuance records (audited)")
def api_issuance_records(
    request: Request,
    user: Operator,
    serial: Annotated[str | None, Query(max_length=59)] = None,
    resident_code: Annotated[str | None, Query(pattern=r"^\d{11}$")] = None,
    ca_id: Annotated[str | None, Query(max_length=40)] = None,
    kind: Annotated[str | None, Query(max_length=32)] = None,
    since: date | None = None,
    until: date | None = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    page_size: Annotated[int, Query(ge=1, le=service.MAX_PAGE_SIZE)] = 50,
) -> schemas.IssuanceRecordPage:
    with unit(request) as s:
        return service.issuance_records(
            s,
            actor=user.username,
            serial=serial or None,
            resident_code=resident_code or None,
            ca_id=ca_id or None,
            kind=kind or None,
            since=since,
            until=until,
            page=page,
            page_size=page_size,
        )


# --- verifier API ------------------------------------------------------------------------------------


@router.get("/verifier", summary="Who the calling verifier is (token or staff account)")
@auth.csrf_exempt
def api_me(caller: AnyVerifier) -> schemas.VerifierIdentityView:
    return caller.identity.view()


@router.get("/verifier/usage", summary="The calling verifier's usage over the last 30 days")
@auth.csrf_exempt
def api_my_usage(request: Request, caller: AnyVerifier) -> list[schemas.UsageRow]:
    with unit(request) as s:
        return service.usage(s, caller.identity.code, since=service.today_jst() - timedelta(days=29))


@router.get("/certificates/{serial}/status", summary="A certificate's status (as OCSP answers it)")
@auth.csrf_exempt
def api_certificate_status(request: Request, caller: AnyVerifier, serial: str) -> schemas.CertificateStatus:
    with unit(request) as s:
        return service.certificate_status(s, caller.identity, serial, actor=caller.actor)


@router.get("/links/{serial}", summary="新旧紐付け: which certificates replaced this one (audited)")
@auth.csrf_exempt
def api_links(request: Request, caller: AnyVerifier, serial: str) -> schemas.LinkChain:
    with unit(request) as s:
        return service.links(s, caller.identity, serial, actor=caller.actor)


@router.post("/consents", status_code=201, summary="Record the holder's consent (本人同意)")
@auth.csrf_exempt
def api_record_consent(request: Request, caller: AnyVerifier, body: schemas.ConsentCreate) -> schemas.Consent:
    with unit(request) as s:
        return service.record_consent(
            s,
            caller.identity,
            body.serial,
            method=body.method,
            given_at=body.given_at,
            expires_at=body.expires_at,
            evidence_sha256=body.evidence_sha256,
            actor=caller.actor,
        )


@router.get("/consents", summary="The consents the verifier holds")
@auth.csrf_exempt
def api_consents(
    request: Request, caller: AnyVerifier, serial: Annotated[str | None, Query(max_length=59)] = None
) -> list[schemas.Consent]:
    with unit(request) as s:
        return service.consents(s, caller.identity, serial=serial or None)


@router.post(
    "/consents/{consent_id}/withdraw", summary="The holder withdrew their consent (told the verifier)"
)
@auth.csrf_exempt
def api_withdraw_consent(request: Request, caller: AnyVerifier, consent_id: int) -> schemas.Consent:
    with unit(request) as s:
        return service.withdraw_consent(
            s, consent_id, channel="verifier", identity=caller.identity, actor=caller.actor
        )


@router.post("/basic-info", summary="基本4情報: the holder's current data, with their consent (audited)")
@auth.csrf_exempt
def api_basic_info(request: Request, caller: AnyVerifier, body: schemas.SerialRequest) -> schemas.BasicInfo:
    with unit(request) as s:
        return service.provide_basic_info(s, caller.identity, body.serial, actor=caller.actor)


# --- pages ---------------------------------------------------------------------------------------------


def _page(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> Response:
    context.setdefault("kind_ja", KIND_JA)
    context.setdefault("reason_ja", REASON_JA)
    context.setdefault("status_ja", STATUS_JA)
    context.setdefault("action_ja", ACTION_JA)
    context.setdefault("category_ja", service.CATEGORY_JA)
    context.setdefault("service_ja", service.SERVICE_JA)
    context.setdefault("method_ja", service.METHOD_JA)
    context.setdefault("jst", _jst)
    context.setdefault("field_errors", {})
    context.setdefault("values", {})
    return render(request, f"{TEMPLATE_PREFIX}/{name}", context, status_code=status_code)


def _jst(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(service.JST).strftime("%Y-%m-%d %H:%M")


def _errors(exc: Exception) -> dict[str, list[str]]:
    """Field → Japanese messages, from a pydantic error or a service error."""
    out: dict[str, list[str]] = {}
    if isinstance(exc, ValidationError):
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ())]
            field = loc[0] if loc else "request"
            out.setdefault(field, []).append(rule_ja(str(err.get("type", "invalid"))))
    else:
        field = str(getattr(exc, "field", "request"))
        out.setdefault(field, []).append(rule_ja(str(getattr(exc, "rule", "invalid"))))
    return out


async def _form(request: Request) -> Mapping[str, Any]:
    form = await request.form()
    data: dict[str, Any] = {}
    for key in form:
        values = [v for v in form.getlist(key) if isinstance(v, str)]
        data[key] = values if key == "services" else (values[0] if values else "")
    data.pop(auth.CSRF_FIELD, None)
    return data


def _model(model: type[BaseModel], data: Mapping[str, Any]) -> Any:
    return model.model_validate(data)


def _see_other(url: str) -> Response:
    return RedirectResponse(url, status_code=303)


@pages.get("")
def page_dashboard(request: Request, user: Operator) -> Response:
    with unit(request) as s:
        board = service.dashboard(s, keystore=_keystore(request))
    return _page(request, "dashboard.html", {"board": board, "alert_ja": service.ALERT_JA})


@pages.get("/verifiers")
def page_verifiers(request: Request, user: Operator) -> Response:
    with unit(request) as s:
        verifiers = service.list_verifiers(s)
    return _page(request, "verifiers.html", {"verifiers": verifiers})


@pages.post("/verifiers")
async def page_create_verifier(request: Request, user: Operator) -> Response:
    data = dict(await _form(request))
    raw = dict(data)
    if data.get("principal_code") == "":
        data["principal_code"] = None
    rate = data.get("ocsp_rate_per_second")
    if isinstance(rate, str):
        with suppress(ValueError):  # not a number: the schema names the field and the rule
            data["ocsp_rate_per_second"] = float(rate) if rate.strip() else 50.0
    try:
        body = _model(schemas.VerifierCreate, data)
        with unit(request) as s:
            service.create_verifier(s, actor=user.username, **body.model_dump())
    except (ValidationError, VerifierError) as exc:
        if isinstance(exc, VerifierError) and exc.status in (403, 404) and exc.field == "code":
            raise
        with unit(request) as s:
            verifiers = service.list_verifiers(s)
        context = {"verifiers": verifiers, "field_errors": _errors(exc), "values": raw}
        return _page(request, "verifiers.html", context, status_code=409 if _status(exc) == 409 else 422)
    return _see_other(f"/jpki/verifiers/{body.code}")


def _status(exc: Exception) -> int:
    return int(getattr(exc, "status", 422))


def _detail_page(request: Request, code: str, *, status_code: int = 200, **extra: Any) -> Response:
    with unit(request) as s:
        detail = service.verifier_detail(s, code)
    return _page(request, "verifier.html", {"detail": detail, **extra}, status_code=status_code)


@pages.get("/verifiers/{code}")
def page_verifier(request: Request, user: Operator, code: str) -> Response:
    return _detail_page(request, code)


@pages.post("/verifiers/{code}/suspend")
async def page_suspend(request: Request, user: Operator, code: str) -> Response:
    data = await _form(request)
    try:
        body = _model(schemas.Suspension, data)
        with unit(request) as s:
            service.suspend_verifier(s, code, reason=body.reason, actor=user.username)
    except (ValidationError, VerifierError) as exc:
        if _status(exc) == 404:
            raise
        return _detail_page(request, code, status_code=_status(exc), field_errors=_errors(exc), values=data)
    return _see_other(f"/jpki/verifiers/{code}")


@pages.post("/verifiers/{code}/resume")
def page_resume(request: Request, user: Operator, code: str) -> Response:
    try:
        with unit(request) as s:
            service.resume_verifier(s, code, actor=user.username)
    except VerifierError as exc:
        if exc.status == 404:
            raise
        return _detail_page(request, code, status_code=exc.status, field_errors=_errors(exc))
    return _see_other(f"/jpki/verifiers/{code}")


@pages.post("/verifiers/{code}/tokens")
async def page_issue_token(request: Request, user: Operator, code: str) -> Response:
    data = dict(await _form(request))
    days = data.get("expires_in_days")
    if isinstance(days, str):
        data["expires_in_days"] = (
            int(days) if days.strip().isdigit() else (None if not days.strip() else days)
        )
    try:
        body = _model(schemas.TokenRequest, data)
        with unit(request) as s:
            issued = service.issue_token(
                s, code, actor=user.username, label=body.label, expires_at=_expiry(body.expires_in_days)
            )
    except (ValidationError, VerifierError) as exc:
        if _status(exc) == 404:
            raise
        return _detail_page(request, code, status_code=_status(exc), field_errors=_errors(exc), values=data)
    return _page(request, "token.html", {"issued": issued})


@pages.post("/verifiers/{code}/tokens/{token_id}/rotate")
def page_rotate_token(request: Request, user: Operator, code: str, token_id: int) -> Response:
    try:
        with unit(request) as s:
            issued = service.rotate_token(s, code, token_id, actor=user.username)
    except VerifierError as exc:
        if exc.status == 404:
            raise
        return _detail_page(request, code, status_code=exc.status, field_errors=_errors(exc))
    return _page(request, "token.html", {"issued": issued, "rotated": token_id})


@pages.post("/verifiers/{code}/tokens/{token_id}/revoke")
def page_revoke_token(request: Request, user: Operator, code: str, token_id: int) -> Response:
    try:
        with unit(request) as s:
            service.revoke_token(s, code, token_id, actor=user.username)
    except VerifierError as exc:
        if exc.status == 404:
            raise
        return _detail_page(request, code, status_code=exc.status, field_errors=_errors(exc))
    return _see_other(f"/jpki/verifiers/{code}")


@pages.get("/issuance")
def page_issuance(
    request: Request,
    user: Operator,
    serial: Annotated[str, Query(max_length=59)] = "",
    resident_code: Annotated[str, Query(max_length=11)] = "",
    kind: Annotated[str, Query(max_length=32)] = "",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    values = {"serial": serial, "resident_code": resident_code, "kind": kind}
    result = None
    errors: dict[str, list[str]] = {}
    if serial or resident_code or kind:
        try:
            with unit(request) as s:
                result = service.issuance_records(
                    s,
                    actor=user.username,
                    serial=serial or None,
                    resident_code=resident_code or None,
                    kind=kind or None,
                    page=page,
                )
        except VerifierError as exc:
            errors = _errors(exc)
    status_code = 422 if errors else 200
    return _page(
        request,
        "issuance.html",
        {"result": result, "values": values, "field_errors": errors},
        status_code=status_code,
    )


def _staff_identity(request: Request, user: CurrentUser) -> VerifierIdentity:
    with request.app.state.session_factory() as s:
        return service.identify_account(s, user.organisation)


@pages.get("/verify")
def page_verify(
    request: Request, user: VerifierStaff, serial: Annotated[str, Query(max_length=200)] = ""
) -> Response:
    identity = _staff_identity(request, user)
    result, errors, status_code = None, {}, 200
    if serial:
        try:
            with unit(request) as s:
                result = service.certificate_status(s, identity, serial, actor=user.username)
        except VerifierError as exc:
            errors, status_code = _errors(exc), exc.status
    with unit(request) as s:
        usage = service.usage(s, identity.code, since=service.today_jst() - timedelta(days=6))
    return _page(
        request,
        "verify.html",
        {
            "identity": identity,
            "result": result,
            "values": {"serial": serial},
            "field_errors": errors,
            "usage": usage,
        },
        status_code=status_code,
    )


@pages.get("/links")
def page_links(
    request: Request, user: VerifierStaff, serial: Annotated[str, Query(max_length=200)] = ""
) -> Response:
    identity = _staff_identity(request, user)
    result, errors, status_code = None, {}, 200
    if serial:
        try:
            with unit(request) as s:
                result = service.links(s, identity, serial, actor=user.username)
        except VerifierError as exc:
            errors, status_code = _errors(exc), exc.status
    return _page(
        request,
        "links.html",
        {"identity": identity, "result": result, "values": {"serial": serial}, "field_errors": errors},
        status_code=status_code,
    )


def _basic_info_page(
    request: Request,
    user: CurrentUser,
    identity: VerifierIdentity,
    *,
    status_code: int = 200,
    **extra: Any,
) -> Response:
    with unit(request) as s:
        held = service.consents(s, identity)
    return _page(
        request,
        "basic_info.html",
        {"identity": identity, "consents": held, **extra},
        status_code=status_code,
    )


@pages.get("/basic-info")
def page_basic_info(request: Request, user: VerifierStaff) -> Response:
    return _basic_info_page(request, user, _staff_identity(request, user))


@pages.post("/basic-info")
async def page_provide(request: Request, user: VerifierStaff) -> Response:
    identity = _staff_identity(request, user)
    data = await _form(request)
    try:
        body = _model(schemas.SerialRequest, data)
        with unit(request) as s:
            info = service.provide_basic_info(s, identity, body.serial, actor=user.username)
    except (ValidationError, VerifierError) as exc:
        return _basic_info_page(
            request, user, identity, status_code=_status(exc), field_errors=_errors(exc), values=data
        )
    return _basic_info_page(request, user, identity, info=info, values=data)


@pages.post("/consents")
async def page_record_consent(request: Request, user: VerifierStaff) -> Response:
    identity = _staff_identity(request, user)
    data = dict(await _form(request))
    raw = dict(data)
    for name in ("given_at", "expires_at", "evidence_sha256"):
        if data.get(name) == "":
            data[name] = None
    for name in ("given_at", "expires_at"):
        value = data.get(name)
        if isinstance(value, str) and len(value) <= 16 and "T" in value:
            data[name] = value + ":00+09:00"  # <input type="datetime-local"> is JST
    if data.get("given_at") is None:
        data["given_at"] = utcnow()  # left empty: the consent is being given now, at the counter
    consent_errors: dict[str, list[str]] = {}
    try:
        body = _model(schemas.ConsentCreate, data)
        with unit(request) as s:
            service.record_consent(
                s,
                identity,
                body.serial,
                method=body.method,
                given_at=body.given_at,
                expires_at=body.expires_at,
                evidence_sha256=body.evidence_sha256,
                actor=user.username,
            )
    except (ValidationError, VerifierError) as exc:
        consent_errors = _errors(exc)
        return _basic_info_page(
            request,
            user,
            identity,
            status_code=_status(exc),
            consent_errors=consent_errors,
            consent_values=raw,
        )
    return _see_other("/jpki/basic-info?recorded=1")


@pages.post("/consents/{consent_id}/withdraw")
def page_withdraw(request: Request, user: VerifierStaff, consent_id: int) -> Response:
    identity = _staff_identity(request, user)
    try:
        with unit(request) as s:
            service.withdraw_consent(
                s, consent_id, channel="verifier", identity=identity, actor=user.username
            )
    except VerifierError as exc:
        if exc.status == 404:
            raise
        return _basic_info_page(request, user, identity, status_code=exc.status, consent_errors=_errors(exc))
    return _see_other("/jpki/basic-info")


def register_web(app: FastAPI) -> None:
    """Plug the verifier services in: templates, API, pages and the navigation links."""
    add_template_dir(app, TEMPLATES, prefix=TEMPLATE_PREFIX)
    app.include_router(router)
    app.include_router(pages)
    add_nav_item(app, NavItem("公的個人認証", "/jpki", roles=("national_operator",)))
    add_nav_item(app, NavItem("検証者の登録", "/jpki/verifiers", roles=("national_operator",)))
    add_nav_item(app, NavItem("発行記録", "/jpki/issuance", roles=("national_operator",)))
    add_nav_item(app, NavItem("電子証明書の検証", "/jpki/verify", roles=("verifier",)))
    add_nav_item(app, NavItem("新旧紐付け", "/jpki/links", roles=("verifier",)))
    add_nav_item(app, NavItem("基本4情報の提供", "/jpki/basic-info", roles=("verifier",)))
