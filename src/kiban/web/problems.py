"""Errors as RFC 9457 problem details (``application/problem+json``), or a Japanese page.

Every error leaves the app through here: validation (422, with the field and the rule that
failed), authentication (401), authorisation and CSRF (403), 404, 405, 409, 413, 429, 503 and
unexpected failures (500, with no stack trace or message from the exception). Clients that
prefer ``text/html`` (browsers) get the same facts as a Japanese error page.

Domain code may raise :class:`Problem` directly, or any ``ValueError`` that carries ``field``
and ``rule`` attributes (e.g. :class:`kiban.core.accounts.AccountError`): it becomes a 422, or
the 403/404/409 its ``status`` attribute names.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import HTMLResponse, Response

logger = logging.getLogger("kiban.web")

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "urn:kiban:problem:"

# Japanese titles for the error page (the JSON keeps English, the API language).
TITLES_JA: dict[int, str] = {
    400: "リクエストが正しくありません",
    401: "ログインが必要です",
    403: "この操作は許可されていません",
    404: "ページが見つかりません",
    405: "この方法では利用できません",
    409: "ほかの操作と競合しました",
    413: "送信されたデータが大きすぎます",
    415: "この形式のデータは受け付けられません",
    422: "入力内容に誤りがあります",
    429: "操作が多すぎます",
    500: "システムエラーが発生しました",
    503: "現在サービスを利用できません",
}

DETAILS_JA: dict[int, str] = {
    400: "送信された内容を読み取れませんでした。",
    401: "この画面を利用するにはログインしてください。",
    403: "この操作を行う権限がありません。",
    404: "お探しのページは存在しないか、移動した可能性があります。",
    405: "このページはこの方法では利用できません。",
    409: "ほかの操作と競合したため、処理を行いませんでした。もう一度お試しください。",
    413: "送信されたデータが上限を超えています。",
    415: "この形式のデータは受け付けられません。",
    422: "入力内容を確認してください。",
    429: "短時間に操作が集中しました。しばらく待ってからもう一度お試しください。",
    500: "処理中に問題が発生しました。時間をおいてもう一度お試しください。",
    503: "システムの準備ができていません。しばらく待ってからもう一度お試しください。",
}

# Japanese wording of pydantic's and our own rules, for the error page.
RULES_JA: dict[str, str] = {
    "missing": "必須項目です",
    "string_too_long": "文字数が多すぎます",
    "string_too_short": "文字数が足りません",
    "string_pattern_mismatch": "使用できない文字が含まれています",
    "string_type": "文字列で入力してください",
    "int_parsing": "整数で入力してください",
    "int_type": "整数で入力してください",
    "json_invalid": "JSON として読み取れません",
    "model_attributes_type": "形式が正しくありません",
    "value_error": "値が正しくありません",
    "pattern": "使用できない文字が含まれています",
    "max_length": "文字数が多すぎます",
    "min_length": "文字数が足りません",
    "check_digit": "検査数字が一致しません",
    "control_characters": "制御文字は使用できません",
    "unique": "すでに使われています",
    "enum": "選択肢にない値です",
}


@dataclass(frozen=True)
class FieldError:
    """One failed rule: ``field`` is a dotted location (``body.username``), ``rule`` a stable code."""

    field: str
    rule: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "rule": self.rule, "message": self.message}


class Problem(Exception):
    """An error to answer with a problem document. ``slug`` names the type (``urn:kiban:problem:<slug>``)."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        title: str | None = None,
        errors: Sequence[FieldError] = (),
        headers: Mapping[str, str] | None = None,
        detail_ja: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug
        self.title = title or HTTPStatus(status).phrase
        self.errors = list(errors)
        self.headers = dict(headers or {})
        self.detail_ja = detail_ja
        self.extra = dict(extra or {})

    @property
    def type(self) -> str:
        return PROBLEM_BASE + self.slug if self.slug else "about:blank"


def wants_html(request: Request) -> bool:
    """True when the client prefers an HTML page to JSON (a browser navigating)."""
    accept = request.headers.get("accept", "")
    if "text/html" not in accept:
        return False
    html_at = accept.find("text/html")
    json_at = min((i for i in (accept.find("application/json"), accept.find("+json")) if i >= 0), default=-1)
    return json_at < 0 or html_at < json_at


def problem_body(problem: Problem, request: Request) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": problem.type,
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        # The path only: query strings may carry things that should not echo back.
        "instance": request.url.path,
    }
    if problem.errors:
        body["errors"] = [e.as_dict() for e in problem.errors]
    body.update(problem.extra)
    return body


def problem_response(request: Request, problem: Problem) -> Response:
    """The response for ``problem``: a Japanese page for browsers, problem+json for everyone else."""
    headers = dict(problem.headers)
    if wants_html(request):
        templates = getattr(request.app.state, "templates", None)
        if templates is not None:
            from kiban.web.app import render

            errors = [
                {"field": e.field, "rule": e.rule, "rule_ja": RULES_JA.get(e.rule, e.rule)}
                for e in problem.errors
            ]
            return render(
                request,
                "error.html",
                {
                    "status": problem.status,
                    "title_ja": TITLES_JA.get(problem.status, "エラーが発生しました"),
                    "detail_ja": problem.detail_ja or DETAILS_JA.get(problem.status, ""),
                    "errors": errors,
                },
                status_code=problem.status,
                headers=headers,
            )
        return HTMLResponse(
            TITLES_JA.get(problem.status, "エラー"), status_code=problem.status, headers=headers
        )
    return JSONResponse(
        problem_body(problem, request),
        status_code=problem.status,
        headers=headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def _dotted(loc: Sequence[int | str]) -> str:
    return ".".join(str(part) for part in loc)


def validation_problem(
    errors: Sequence[FieldError], detail: str = "The request has invalid fields."
) -> Problem:
    return Problem(422, detail, slug="validation-failed", title="Validation failed", errors=errors)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        # The pydantic error's `input` and `ctx` are dropped: they would echo hostile input back.
        FieldError(
            field=_dotted(err.get("loc", ())), rule=str(err.get("type", "invalid")), message=str(err["msg"])
        )
        for err in exc.errors()
    ]
    return problem_response(request, validation_problem(errors))


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc.__cause__, Problem):
        # FastAPI turns any failure while reading the body into a 400; keep ours (e.g. 413).
        return problem_response(request, exc.__cause__)
    status = exc.status_code
    detail = exc.detail if isinstance(exc.detail, str) and status < 500 else HTTPStatus(status).description
    return problem_response(request, Problem(status, detail, headers=exc.headers))


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    if exc.status >= 500:
        logger.error("problem %s on %s %s: %s", exc.status, request.method, request.url.path, exc.detail)
    return problem_response(request, exc)


async def _on_value_error(request: Request, exc: Exception) -> Response:
    field, rule = getattr(exc, "field", None), getattr(exc, "rule", None)
    if isinstance(field, str) and isinstance(rule, str):
        # Only a message attribute is shown: str(exc) may quote the offending value (personal data).
        candidates = (getattr(exc, "message", None), getattr(exc, "detail", None))
        message = next((c for c in candidates if isinstance(c, str) and c), f"{field} breaks rule {rule}")
        problem = validation_problem([FieldError(field, rule, message)])
        # A domain error may say it is not found (404), forbidden (403) or a conflict (409).
        status = getattr(exc, "status", 422)
        if isinstance(status, int) and status in (403, 404, 409):
            problem = Problem(status, message, errors=problem.errors, slug=f"{rule}".replace("_", "-"))
        return problem_response(request, problem)
    return await _on_unexpected(request, exc)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    incident = uuid.uuid4().hex
    # The traceback goes to the log under an incident id; the client gets the id only.
    logger.exception("unexpected error %s on %s %s", incident, request.method, request.url.path, exc_info=exc)
    problem = Problem(
        500,
        "An unexpected error occurred. Quote the incident id when reporting it.",
        slug="internal-error",
        title="Internal Server Error",
        extra={"incident": incident},
    )
    response = problem_response(request, problem)
    from kiban.web.app import apply_security_headers

    apply_security_headers(response.headers, request.url.path)
    return response


PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details.",
    "type": "object",
    "required": ["type", "title", "status", "detail", "instance"],
    "properties": {
        "type": {"type": "string", "description": "about:blank or urn:kiban:problem:<slug>"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string", "description": "The request path."},
        "errors": {"type": "array", "items": {"$ref": "#/components/schemas/FieldError"}},
    },
}
FIELD_ERROR_SCHEMA: dict[str, Any] = {
    "title": "FieldError",
    "type": "object",
    "required": ["field", "rule", "message"],
    "properties": {
        "field": {"type": "string", "description": "Dotted location, e.g. body.username"},
        "rule": {"type": "string", "description": "Stable rule id, e.g. string_too_long"},
        "message": {"type": "string"},
    },
}


def problem_openapi(schema: dict[str, Any]) -> dict[str, Any]:
    """Make the OpenAPI document say what the API really answers on errors: problem+json."""
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["Problem"] = PROBLEM_SCHEMA
    schemas["FieldError"] = FIELD_ERROR_SCHEMA
    problem_content = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = {"description": "Validation failed", "content": problem_content}
            responses.setdefault("default", {"description": "Error", "content": problem_content})
    return schema


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(ValueError, _on_value_error)
    app.add_exception_handler(Exception, _on_unexpected)
