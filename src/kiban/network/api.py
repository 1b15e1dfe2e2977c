"""The identity network's web face (SPEC K2; docs/network-api.md).

- Agencies (role ``agency``; the account's ``organisation`` is the agency code of the registry):
  ``/api/provision`` (one query), ``/api/provision/bulk…`` (一括提供: job, resumable upload in
  parts, answers streamed as CSV, resumable by the job's cursor) and the pages ``/provision`` and
  ``/provision/bulk``.
- Clerks (role ``clerk``): 提供状況の開示 for a resident of their municipality identified at the
  counter, or their proxy: ``/api/disclosure`` (JSON), ``/api/disclosure/pdf`` and ``/disclosure``.
- National operators: ``/api/network/…`` and the pages ``/network…`` (replication per
  prefecture and municipality, quarantine queue with release, agency registry, statistics).

Everything calls :mod:`kiban.network.service` (and :mod:`kiban.network.operations`); each request
is one transaction. Errors are problem documents naming field and rule.
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
import os
import threading
import uuid
import weakref
from collections.abc import AsyncIterator, Generator, Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Depends, FastAPI, File, Form, Header, Query, Request, UploadFile
from fastapi.responses import RedirectResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.responses import Response

from kiban.core import audit
from kiban.core.database import transaction
from kiban.core.documents import KeyDirectorySigners, SignerProvider
from kiban.network import lookup
from kiban.network import operations as ops
from kiban.network import service as network
from kiban.network.documents import issue_disclosure_letter, wareki_time
from kiban.network.lookup import ProvisionBatcher
from kiban.network.models import BulkJob
from kiban.network.schemas import Answer
from kiban.network.service import NetworkError
from kiban.web.app import NavItem, add_nav_item, render
from kiban.web.auth import CurrentUser, require_role
from kiban.web.problems import FieldError, Problem, validation_problem

__all__ = ["register_web", "api", "pages"]

api = APIRouter(tags=["network"])
pages = APIRouter(include_in_schema=False)

MAX_HEADER_LINE = 64 * 1024  # the header line of a bulk file must arrive within the first part
UPLOAD_OFFSET = "Upload-Offset"
CSV_MEDIA_TYPE = "text/csv; charset=utf-8"
BULK_CHUNK = 1000  # rows per committed chunk of a bulk answer (the service's default)

RULES_JA: dict[str, str] = {
    "check_digit": "検査数字が一致しません。番号を確かめてください。",
    "length": "桁数が正しくありません。",
    "digits_only": "数字だけで入力してください。",
    "one_form": "住民票コード、個人番号、基本4情報のどれか一つで照会してください。",
    "basic4_complete": "基本4情報（フリガナ・生年月日・性別・住所）をすべて入力してください。",
    "kana": "フリガナはカタカナかひらがなで入力してください。",
    "unknown_agency": "この機関は登録されていません。",
    "unknown_use": "その事務は登録されていません。",
    "use_not_allowed": "この機関が行うことのできない事務です。",
    "number_not_allowed": "この事務では個人番号による照会はできません。",
    "dv_restricted": "支援措置の対象者のため、この事務には提供できません。",
    "own_municipality": "担当する市区町村の住民ではありません。",
    "range": "範囲外の値です。",
    "required": "必須項目です。",
    "too_large": "ファイルが大きすぎます。",
    "columns": "列の指定が正しくありません。",
    "utf8": "文字コードは UTF-8 にしてください。",
    "header": "1行目に列名を書いてください。",
    "not_quarantined": "隔離中のメッセージではありません（すでに再適用済みか、存在しません）。",
    "unknown_job": "該当する一括照会がありません。",
    "upload_incomplete": "ファイルの送信が終わっていません。",
    "finished": "この一括照会は完了しています。",
    "invalid": "値が正しくありません。",
}


def rule_ja(rule: str | None) -> str:
    return RULES_JA.get(rule or "", f"入力内容を確認してください（{rule}）。")


# --- who is asking --------------------------------------------------------------------------------


def _agency_user(user: Annotated[CurrentUser, Depends(require_role("agency"))]) -> CurrentUser:
    if not user.organisation:
        raise Problem(
            403,
            "This agency account names no organisation (agency code).",
            slug="no-organisation",
            detail_ja="このアカウントには機関が設定されていません。",
        )
    return user


AgencyUser = Annotated[CurrentUser, Depends(_agency_user)]
Clerk = Annotated[CurrentUser, Depends(require_role("clerk"))]
Operator = Annotated[CurrentUser, Depends(require_role("national_operator"))]


def _factory(request: Request) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = request.app.state.session_factory
    return factory


def _signers(request: Request) -> SignerProvider:
    state = request.app.state
    if getattr(state, "network_signers", None) is None:
        state.network_signers = KeyDirectorySigners(state.settings.keys_dir)
    signers: SignerProvider = state.network_signers
    return signers


def _error(field: str, rule: str, message: str, status: int = 422) -> NetworkError:
    error = NetworkError(field, rule, message)
    if status != 422:
        error.status = status  # type: ignore[attr-defined]
    return error


def _too_large(field: str, message: str) -> Problem:
    return Problem(
        413,
        message,
        slug="too-large",
        errors=[FieldError(field, "too_large", message)],
        detail_ja="ファイルが大きすぎます（宣言した大きさか上限 2 GiB を超えています）。",
    )


# --- single provision ----------------------------------------------------------------------------


class ProvisionRequest(BaseModel):
    """One query: the statutory use (事務) and exactly one form of the person."""

    model_config = ConfigDict(extra="forbid")

    use_code: str = Field(min_length=1, max_length=40)
    query: dict[str, Any]


_BATCHER_LOCK = threading.Lock()


def batcher(request: Request) -> ProvisionBatcher:
    """The process's provision batcher (kiban.network.lookup): created on first use, one per app."""
    state = request.app.state
    found: ProvisionBatcher | None = getattr(state, "network_batcher", None)
    if found is None:
        with _BATCHER_LOCK:
            found = getattr(state, "network_batcher", None)
            if found is None:
                found = state.network_batcher = ProvisionBatcher(_factory(request))
    return found


def _query_error(exc: NetworkError) -> NetworkError:
    return _error(f"query.{exc.field}" if exc.field != "query" else "query", exc.rule, exc.message)


async def _provide(request: Request, agency_code: str, use_code: str, query: dict[str, Any]) -> Answer:
    """One query, answered by the batcher: committed with its log and audit entry before it returns."""
    try:
        parsed = lookup.parse(query)
    except NetworkError as exc:
        raise _query_error(exc) from exc
    future = batcher(request).submit(lookup.Request(agency_code, use_code, parsed))
    return await asyncio.wrap_future(future)


def _refused(answer: Answer) -> Problem:
    field = {"number_not_allowed": "query.individual_number", "dv_restricted": "query"}.get(
        answer.rule or "", "use_code"
    )
    return Problem(
        403,
        answer.message or "refused",
        slug="provision-refused",
        title="Provision refused",
        errors=[FieldError(field, answer.rule or "refused", answer.message or "refused")],
        detail_ja=rule_ja(answer.rule),
        extra={"outcome": "refused", "rule": answer.rule, "restricted": answer.restricted},
    )


@api.post("/api/provision", summary="本人確認情報の照会: one query for one statutory use")
async def provide_one(request: Request, body: ProvisionRequest, user: AgencyUser) -> Answer:
    """Provided, ``not_found`` or ``ambiguous`` answer 200; a refusal (a use the agency may not
    make, a 個人番号 query for a use without it, a DV refusal) answers 403 after it was logged."""
    answer = await _provide(request, user.organisation or "", body.use_code, body.query)
    if answer.outcome == "refused":
        raise _refused(answer)
    return answer


@api.get("/api/provision/uses", summary="The statutory uses this agency may make, with their items")
def my_uses(request: Request, user: AgencyUser) -> list[dict[str, Any]]:
    with _factory(request)() as session:
        found = ops.agency(session, user.organisation or "")
    if found is None:
        return []
    return [
        {"code": u.code, "name": u.name, "items": list(u.items), "columns": ops.answer_columns(u)}
        for u in found.uses
    ]


# --- bulk provision ------------------------------------------------------------------------------


class BulkJobRequest(BaseModel):
    """A bulk provision: the use, and the size in bytes of the file that will be uploaded."""

    model_config = ConfigDict(extra="forbid")

    use_code: str = Field(min_length=1, max_length=40)
    size: int = Field(ge=1, description="bytes of the CSV file; at most 2 GiB")


class BulkJobOut(BaseModel):
    id: uuid.UUID
    use_code: str
    created_at: datetime
    size: int | None
    received: int
    upload_complete: bool
    next_row: int
    provided: int
    failed: int
    finished_at: datetime | None


def _spool(request: Request) -> Path:
    directory = Path(request.app.state.settings.data_dir) / "network" / "bulk"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return directory


def _meta(request: Request, job_id: uuid.UUID) -> dict[str, Any]:
    path = _spool(request) / f"{job_id}.json"
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return {}


def _data_path(request: Request, job_id: uuid.UUID) -> Path:
    return _spool(request) / f"{job_id}.csv"


def _received(request: Request, job_id: uuid.UUID) -> int:
    try:
        return _data_path(request, job_id).stat().st_size
    except FileNotFoundError:
        return 0


def _job_out(request: Request, job: BulkJob) -> BulkJobOut:
    size = _meta(request, job.id).get("size")
    received = _received(request, job.id)
    return BulkJobOut(
        id=job.id,
        use_code=job.use_code,
        created_at=job.created_at,
        size=size,
        received=received,
        upload_complete=size is not None and received == size,
        next_row=job.next_row,
        provided=job.provided,
        failed=job.failed,
        finished_at=job.finished_at,
    )


def _create_job(request: Request, user: CurrentUser, use_code: str, size: int) -> BulkJobOut:
    agency_code = user.organisation or ""
    if size > network.MAX_BULK_BYTES:
        raise _too_large("size", f"{size} bytes; at most {network.MAX_BULK_BYTES}")
    with transaction(_factory(request)) as session:
        found = ops.agency(session, agency_code)
        rule = None
        if found is None:
            rule = "unknown_agency"
        elif use_code not in {u.code for u in found.uses}:
            known = use_code in {u.code for u in ops.statutory_uses(session)}
            rule = "use_not_allowed" if known else "unknown_use"
        job: BulkJob | None = None
        if rule is None:
            job = network.bulk_job(session, network.create_bulk_job(session, agency_code, use_code))
        else:
            # Refused before any row is read; the refusal is logged like a single query's.
            audit.record(
                session,
                actor=agency_code[:64],
                role="agency",
                action="refuse",
                purpose=use_code[:200],
                subject="",
                items=[],
                organisation=agency_code[:64],
                detail={"query": "bulk", "outcome": "refused", "rule": rule, "user": user.username},
            )
    if job is None:
        raise _refused(Answer(outcome="refused", rule=rule, message=rule_ja(rule)))
    meta = _spool(request) / f"{job.id}.json"
    fd = os.open(meta, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"size": size, "user": user.username}, handle)
    return _job_out(request, job)


@api.post("/api/provision/bulk", status_code=201, summary="一括提供: open a bulk job (use and file size)")
def create_job(request: Request, body: BulkJobRequest, user: AgencyUser) -> BulkJobOut:
    """The declared size is checked here: a file over 2 GiB (the 10 GB claim) is refused at once."""
    return _create_job(request, user, body.use_code, body.size)


@api.get("/api/provision/bulk", summary="This agency's bulk jobs, newest first")
def list_jobs(request: Request, user: AgencyUser) -> list[BulkJobOut]:
    with _factory(request)() as session:
        return [_job_out(request, job) for job in ops.agency_jobs(session, user.organisation or "")]


def _own_job(request: Request, job_id: str, user: CurrentUser) -> BulkJob:
    with _factory(request)() as session:
        job = ops.job_of_agency(session, job_id, user.organisation or "")
        session.expunge(job)
        return job


@api.get("/api/provision/bulk/{job_id}", summary="A bulk job's state: upload, cursor, counts")
def job_status(request: Request, job_id: str, user: AgencyUser) -> BulkJobOut:
    return _job_out(request, _own_job(request, job_id, user))


def _upload_lock(request: Request, job_id: uuid.UUID) -> asyncio.Lock:
    state = request.app.state
    locks: dict[uuid.UUID, asyncio.Lock] | None = getattr(state, "network_upload_locks", None)
    if locks is None:
        locks = state.network_upload_locks = {}
    return locks.setdefault(job_id, asyncio.Lock())


def _check_header(line: bytes, size: int) -> None:
    # read_bulk_csv checks the header at its first step: nothing is stored when it is bad.
    for _ in network.read_bulk_csv([line], declared_size=size):
        break


@api.put("/api/provision/bulk/{job_id}/file", summary="Upload the CSV file, whole or in parts")
async def upload(
    request: Request,
    job_id: str,
    user: AgencyUser,
    upload_offset: Annotated[int | None, Header(alias=UPLOAD_OFFSET, ge=0)] = None,
) -> BulkJobOut:
    """The body is appended at ``Upload-Offset`` (default 0), which must be the bytes received so
    far (else 409, with the current ``offset``): a broken upload resumes where it stopped, and a
    replayed part changes nothing. Each part is at most the app's body limit (10 MiB by default);
    its ``Content-Length`` is checked against the declared size before anything is read. The
    first part must carry the header line, which is checked at once."""
    job = await run_in_threadpool(_own_job, request, job_id, user)
    size = _meta(request, job.id).get("size")
    if not isinstance(size, int):
        raise _error("job_id", "unknown_job", "no upload was announced for this job", 404)
    async with _upload_lock(request, job.id):
        path = _data_path(request, job.id)
        have = _received(request, job.id)
        offset = have if upload_offset is None and have == 0 else upload_offset
        if have == size:
            raise _conflict("file", "upload_complete", "the whole file was received already", have)
        if offset != have:
            raise _conflict(UPLOAD_OFFSET, "offset", f"the upload continues at byte {have}", have)
        remaining = size - have
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > remaining:
            raise _too_large("body", f"{declared} bytes sent; the declared file has {remaining} left")
        received = 0
        head = b"" if have == 0 else None
        with open(path, "ab") as handle:
            try:
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > remaining:
                        raise _too_large("body", f"more than the {remaining} bytes left")
                    if head is not None:
                        head += chunk
                        if b"\n" in head:
                            _check_header(head.split(b"\n", 1)[0] + b"\n", size)
                            head = None
                        elif len(head) > MAX_HEADER_LINE:
                            raise _error("header", "columns", "no header line in the first 64 KiB")
                    handle.write(chunk)
                if head is not None and have + received == size:
                    _check_header(head, size)  # a file of a header alone
                if received == 0:
                    raise _error("body", "required", "an empty part")
            except BaseException:
                handle.flush()
                handle.truncate(have)  # a refused part leaves the file as it was
                raise
    return await run_in_threadpool(_job_out, request, job)


def _conflict(field: str, rule: str, message: str, offset: int) -> Problem:
    return Problem(
        409,
        message,
        slug="upload-offset",
        errors=[FieldError(field, rule, message)],
        headers={UPLOAD_OFFSET: str(offset)},
        extra={"offset": offset},
        detail_ja="送信済みの位置と一致しません。表示された位置から送り直してください。",
    )


@api.delete("/api/provision/bulk/{job_id}/file", status_code=204, summary="Delete the uploaded file")
def delete_file(request: Request, job_id: str, user: AgencyUser) -> Response:
    """The file holds the agency's queries (personal data): delete it once the answers are in."""
    job = _own_job(request, job_id, user)
    _data_path(request, job.id).unlink(missing_ok=True)
    return Response(status_code=204)


def _answer_row(answer: Answer, columns: list[str]) -> list[Any]:
    data = [answer.data.get(c, "") for c in columns]
    return [
        answer.row,
        answer.outcome,
        answer.rule or "",
        answer.field or "",
        answer.message or "",
        "1" if answer.restricted else "0",
        *("" if v is None else v for v in data),
    ]


def _csv_line(values: list[Any]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(values)
    return out.getvalue().encode("utf-8")


ANSWER_HEADER = ["row", "outcome", "rule", "field", "message", "restricted"]


class _Lease:
    """A job's answer lock, released once: by the stream's end, or when the stream is collected."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._lock.release()


def _answer_lease(request: Request, job_id: uuid.UUID) -> _Lease:
    state = request.app.state
    with _LOCKS_LOCK:
        locks: dict[uuid.UUID, threading.Lock] | None = getattr(state, "network_answer_locks", None)
        if locks is None:
            locks = state.network_answer_locks = {}
        lock = locks.setdefault(job_id, threading.Lock())
    if not lock.acquire(blocking=False):
        # A second stream of the same job would provide the same rows twice.
        raise Problem(
            409,
            "the answers of this job are being streamed already; retry when that stream has ended",
            slug="in-progress",
            errors=[FieldError("job_id", "in_progress", "the answers of this job are being streamed")],
            headers={"Retry-After": "1"},
            detail_ja="この一括照会の回答を送信中です。しばらくしてから再度お試しください。",
        )
    return _Lease(lock)


_LOCKS_LOCK = threading.Lock()


def _answers(request: Request, job: BulkJob, start: int | None, lease: _Lease) -> Iterator[bytes]:
    factory = _factory(request)
    with factory() as session:
        use = next((u for u in ops.statutory_uses(session) if u.code == job.use_code), None)
    columns = ops.answer_columns(use)
    size = _meta(request, job.id).get("size")
    handle = open(_data_path(request, job.id), "rb")  # noqa: SIM115 - closed by the generator
    rows = network.read_bulk_csv(handle, declared_size=size)
    answers = cast(
        Generator[Answer, None, None],
        network.provide_bulk(factory, job.id, rows, start=start, chunk_size=BULK_CHUNK),
    )
    try:
        # The first chunk is answered before the response starts: a refusal of the whole request
        # (finished job, start beyond the cursor) is still a problem document, not a broken CSV.
        first = next(answers, None)
    except BaseException:
        handle.close()
        raise

    first_row = start if start is not None else job.next_row

    def stream() -> Iterator[bytes]:
        # One body message per chunk, not per row: each message is a thread hop and a pass
        # through every middleware. A chunk's rows are sent once its last answer is out, which
        # is right after the chunk committed (the next chunk is not started before).
        buffer = [_csv_line([*ANSWER_HEADER, *columns])]
        try:
            for answer in itertools.chain([first] if first is not None else [], answers):
                buffer.append(_csv_line(_answer_row(answer, columns)))
                if answer.row is not None and (answer.row - first_row + 1) % BULK_CHUNK == 0:
                    yield b"".join(buffer)
                    buffer = []
        except NetworkError as exc:
            # Answers already sent stand (they were logged); the last line says why it stopped.
            buffer.append(_csv_line(["", "error", exc.rule, exc.field, exc.message, "0"]))
        finally:
            answers.close()
            handle.close()
            lease.release()
        if buffer:
            yield b"".join(buffer)

    body = stream()
    # A response never sent (the client left before it started) never runs the finally above.
    weakref.finalize(body, lease.release)
    return body


async def _released_on_disconnect(body: Iterator[bytes]) -> AsyncIterator[bytes]:
    """The sync stream in the thread pool; when the client leaves (the task is cancelled), the
    stream is closed at once — its chunk in flight has committed — and the job's lock released,
    so that the client's resume is not refused as ``in_progress``."""
    try:
        async for part in iterate_in_threadpool(body):
            yield part
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()


@api.post(
    "/api/provision/bulk/{job_id}/answers",
    summary="Answer the uploaded file, streamed as CSV (resumable)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}}},
)
def answers(
    request: Request,
    job_id: str,
    user: AgencyUser,
    start: Annotated[int | None, Query(ge=0)] = None,
) -> StreamingResponse:
    """Rows are provided (and logged) in committed chunks and streamed as they commit. A broken
    download resumes: call again (from the job's cursor) or with ``start`` = the first row
    missing (those rows are provided and logged again). POST, because answering is providing."""
    job = _own_job(request, job_id, user)
    out = _job_out(request, job)
    if not out.upload_complete:
        raise _error("file", "upload_incomplete", f"{out.received} of {out.size} bytes received", 409)
    if job.finished_at is not None and start is None:
        raise _error("job_id", "finished", "the job is finished; give start to fetch answers again", 409)
    lease = _answer_lease(request, job.id)
    try:
        body = _answers(request, job, start, lease)
    except BaseException:
        lease.release()
        raise
    name = f"answers-{job.id}-{start if start is not None else job.next_row}.csv"
    return StreamingResponse(
        _released_on_disconnect(body),
        media_type=CSV_MEDIA_TYPE,
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "X-Kiban-Start": str(start if start is not None else job.next_row),
        },
    )


# --- disclosure ----------------------------------------------------------------------------------


class DisclosureBody(BaseModel):
    """提供状況の開示の請求, as recorded by the clerk who identified the requester at the counter."""

    model_config = ConfigDict(extra="forbid")

    resident_code: str = Field(min_length=1, max_length=30)
    year: int
    requester: Literal["self", "proxy"] = "self"
    identity_document: str = Field(default="マイナンバーカード", max_length=100)
    proxy_name: str | None = Field(default=None, max_length=100)
    proxy_document: str | None = Field(default=None, max_length=100)

    def as_request(self) -> ops.DisclosureRequest:
        return ops.DisclosureRequest(**self.model_dump())


def _disclose(request: Request, body: ops.DisclosureRequest, user: CurrentUser) -> dict[str, Any]:
    with transaction(_factory(request)) as session:
        found = ops.disclose(
            session, body, clerk=user.username, municipality_code=user.municipality_code or ""
        )
        return _disclosure_json(found)


def _disclosure_json(found: ops.Disclosure) -> dict[str, Any]:
    p = found.person
    return {
        "resident_code": p.resident_code,
        "name": f"{p.family_name}　{p.given_name}",
        "year": found.request.year,
        "requester": found.request.requester,
        "entries": [
            {
                "provided_at": e.provided_at.isoformat(),
                "provided_at_ja": wareki_time(e.provided_at),
                "agency_code": e.agency_code,
                "agency_name": e.agency_name,
                "use_code": e.use_code,
                "use_name": e.use_name,
                "items": e.items,
                "items_ja": [ops.ITEM_NAMES_JA.get(i, i) for i in e.items],
            }
            for e in found.entries
        ],
    }


@api.post("/api/disclosure", summary="提供状況の開示 (JSON): provisions about a resident in a year")
def disclosure(request: Request, body: DisclosureBody, user: Clerk) -> dict[str, Any]:
    return _disclose(request, body.as_request(), user)


def _disclosure_pdf(request: Request, body: ops.DisclosureRequest, user: CurrentUser) -> Response:
    municipality = user.municipality_code or ""
    with transaction(_factory(request)) as session:
        found = ops.disclose(session, body, clerk=user.username, municipality_code=municipality)
        letter = issue_disclosure_letter(
            session, found, municipality_code=municipality, issuer=user.username, signers=_signers(request)
        )
    return Response(
        letter.pdf,
        media_type="application/pdf",
        headers={
            "Content-Disposition": f'inline; filename="disclosure-{letter.issuance.serial}.pdf"',
            "X-Kiban-Serial": letter.issuance.serial,
        },
    )


@api.post(
    "/api/disclosure/pdf",
    summary="提供状況の開示 as a PDF letter",
    response_class=Response,
    responses={200: {"content": {"application/pdf": {}}}},
)
def disclosure_pdf(request: Request, body: DisclosureBody, user: Clerk) -> Response:
    return _disclosure_pdf(request, body.as_request(), user)


# --- national operator ---------------------------------------------------------------------------


def _lag_seconds(st: Any) -> float | None:
    return None if st.lag is None else st.lag.total_seconds()


@api.get("/api/network/replication", summary="Replication per prefecture and municipality")
def replication(request: Request, user: Operator) -> dict[str, Any]:
    with _factory(request)() as session:
        statuses = network.replication_status(session)
    return {
        "prefectures": [
            {
                "prefecture_code": p.prefecture_code,
                "prefecture_name": p.prefecture_name,
                "municipalities": p.municipalities,
                "versions": p.versions,
                "quarantined": p.quarantined,
                "max_lag_seconds": None if p.max_lag is None else p.max_lag.total_seconds(),
                "last_applied_at": p.last_applied_at,
            }
            for p in ops.replication_by_prefecture(statuses)
        ],
        "municipalities": [
            {
                "municipality_code": st.municipality_code,
                "prefecture_code": st.prefecture_code,
                "versions": st.versions,
                "last_applied_at": st.last_applied_at,
                "lag_seconds": _lag_seconds(st),
                "quarantined": st.quarantined,
            }
            for st in statuses
        ],
    }


def _quarantine_json(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "event_id": row.event_id,
        "event_type": row.event_type,
        "key": row.key,
        "municipality_code": row.municipality_code,
        "field": row.field,
        "rule": row.rule,
        "message": row.message,
        "quarantined_at": row.quarantined_at,
        "released_at": row.released_at,
    }


@api.get("/api/network/quarantine", summary="The quarantine queue (oldest first)")
def quarantine(
    request: Request,
    response: Response,
    user: Operator,
    include_released: Annotated[bool, Query()] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[dict[str, Any]]:
    """Oldest first, at most ``limit``; the header ``X-Total-Count`` says how many there are.
    The kept message itself (personal data) is not listed: the operator sees why, not what."""
    with _factory(request)() as session:
        rows, total = ops.quarantine_queue(session, limit=limit, include_released=include_released)
    response.headers["X-Total-Count"] = str(total)
    return [_quarantine_json(r) for r in rows]


@api.post("/api/network/quarantine/{quarantine_id}/release", summary="Apply a quarantined message again")
def release(request: Request, quarantine_id: int, user: Operator) -> dict[str, Any]:
    with transaction(_factory(request)) as session:
        outcome = network.release_quarantined(session, quarantine_id, actor=user.username)
    return {"id": quarantine_id, "outcome": outcome}


def _agencies_json(session: Session) -> list[dict[str, Any]]:
    return [
        {
            "code": a.code,
            "name": a.name,
            "kind": a.kind,
            "uses": [
                {
                    "code": u.code,
                    "name": u.name,
                    "legal_basis": u.legal_basis,
                    "items": list(u.items),
                    "restricted_policy": u.restricted_policy,
                }
                for u in a.uses
            ],
        }
        for a in ops.agencies(session)
    ]


@api.get("/api/network/agencies", summary="The agency registry with each agency's uses")
def agency_registry(request: Request, user: Operator) -> list[dict[str, Any]]:
    with _factory(request)() as session:
        return _agencies_json(session)


@api.post("/api/network/agencies/reload", summary="Reload the registry from uses.json")
def reload_registry(request: Request, user: Operator) -> dict[str, int]:
    with transaction(_factory(request)) as session:
        agencies, uses = network.load_registry(session)
        audit.record(
            session,
            actor=user.username,
            role="national_operator",
            action="update",
            purpose="提供先機関の登録",
            subject="",
            items=[],
            detail={"agencies": agencies, "uses": uses},
        )
    return {"agencies": agencies, "uses": uses}


@api.get("/api/network/statistics", summary="Provisions by month (JST), agency, use and outcome")
def statistics(
    request: Request,
    user: Operator,
    since: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}$")] = None,
    until: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}$")] = None,
    agency: Annotated[str | None, Query(max_length=40)] = None,
) -> list[dict[str, Any]]:
    with _factory(request)() as session:
        rows = ops.provision_statistics(session, since=since, until=until, agency_code=agency)
    return [r.__dict__ for r in rows]


# --- pages: agency -------------------------------------------------------------------------------

KINDS = (("resident_code", "住民票コード"), ("individual_number", "個人番号"), ("basic4", "基本4情報"))


def _query_from_form(form: dict[str, str]) -> dict[str, Any]:
    kind = form.get("kind", "")
    if kind == "resident_code":
        return {"resident_code": form.get("resident_code", "")}
    if kind == "individual_number":
        return {"individual_number": form.get("individual_number", "")}
    query: dict[str, Any] = {
        k: form[k] for k in ("name_kana", "birth_date", "address_prefix") if form.get(k, "").strip()
    }
    if form.get("sex") in ("1", "2"):
        query["sex"] = int(form["sex"])
    return query


def _provision_page(
    request: Request,
    user: CurrentUser,
    *,
    values: dict[str, str],
    answer: Answer | None = None,
    error: FieldError | None = None,
    status_code: int = 200,
) -> Response:
    with _factory(request)() as session:
        found = ops.agency(session, user.organisation or "")
        uses = list(found.uses) if found else []
        use = next((u for u in uses if u.code == values.get("use_code")), None)
    return render(
        request,
        "network/provision.html",
        {
            "agency": found,
            "uses": uses,
            "kinds": KINDS,
            "values": values,
            "answer": answer,
            "use": use,
            "error": error,
            "error_ja": rule_ja(error.rule) if error else None,
            "labels": COLUMN_LABELS,
            "outcomes_ja": ops.OUTCOMES_JA,
            "items_ja": ops.ITEM_NAMES_JA,
        },
        status_code=status_code,
    )


COLUMN_LABELS = {
    "family_name": "氏",
    "given_name": "名",
    "family_name_kana": "氏（フリガナ）",
    "given_name_kana": "名（フリガナ）",
    "old_family_name": "旧氏",
    "old_family_name_kana": "旧氏（フリガナ）",
    "birth_date": "生年月日",
    "sex": "性別",
    "address": "住所",
    "resident_code": "住民票コード",
    "individual_number": "個人番号",
    "status": "状態",
    "reason": "異動事由（コード）",
    "reason_ja": "異動事由",
    "effective_on": "異動年月日",
}


@pages.get("/provision")
def provision_form(request: Request, user: AgencyUser) -> Response:
    return _provision_page(request, user, values={"kind": "resident_code"})


@pages.post("/provision")
async def provision_submit(request: Request, user: AgencyUser) -> Response:
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    values = {k: form.get(k, "") for k in ("use_code", "kind", *FORM_FIELDS)}
    try:
        answer = await _provide(request, user.organisation or "", values["use_code"], _query_from_form(form))
    except NetworkError as exc:
        error = FieldError(exc.field, exc.rule, exc.message)
        return await run_in_threadpool(
            lambda: _provision_page(request, user, values=values, error=error, status_code=422)
        )
    status = 403 if answer.outcome == "refused" else 200
    return await run_in_threadpool(
        lambda: _provision_page(request, user, values=values, answer=answer, status_code=status)
    )


FORM_FIELDS = ("resident_code", "individual_number", "name_kana", "birth_date", "sex", "address_prefix")


@pages.get("/provision/bulk")
def bulk_page(request: Request, user: AgencyUser) -> Response:
    with _factory(request)() as session:
        found = ops.agency(session, user.organisation or "")
        jobs = [_job_out(request, j) for j in ops.agency_jobs(session, user.organisation or "")]
    return render(
        request,
        "network/bulk.html",
        {
            "agency": found,
            "uses": list(found.uses) if found else [],
            "jobs": jobs,
            "max_mib": _max_mib(request),
        },
    )


def _max_mib(request: Request) -> int:
    return int(request.app.state.options.max_body_bytes // (1024 * 1024))


@pages.post("/provision/bulk")
async def bulk_submit(
    request: Request,
    user: AgencyUser,
    use_code: Annotated[str, Form(max_length=40)],
    file: Annotated[UploadFile, File()],
) -> Response:
    """The page's form: a file up to the app's body limit, created and stored in one step."""
    content = await file.read()
    if not content:
        raise validation_problem([FieldError("file", "empty", "the file is empty")])
    try:
        _check_header(content.split(b"\n", 1)[0] + b"\n", len(content))
    except NetworkError as exc:
        raise validation_problem([FieldError(exc.field, exc.rule, exc.message)], exc.message) from exc
    job = await run_in_threadpool(_create_job, request, user, use_code, len(content))
    path = _data_path(request, job.id)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    return RedirectResponse(f"/provision/bulk/{job.id}", status_code=303)


@pages.get("/provision/bulk/{job_id}")
def bulk_job_page(request: Request, job_id: str, user: AgencyUser) -> Response:
    job = _job_out(request, _own_job(request, job_id, user))
    return render(request, "network/bulk_job.html", {"job": job})


# --- pages: disclosure ---------------------------------------------------------------------------


@pages.get("/disclosure")
def disclosure_form(request: Request, user: Clerk) -> Response:
    values = {"year": str(date.today().year), "requester": "self", "identity_document": "マイナンバーカード"}
    return render(request, "network/disclosure.html", {"values": values, "result": None, "error": None})


def _disclosure_values(form: dict[str, str]) -> tuple[dict[str, str], ops.DisclosureRequest]:
    values = {
        k: form.get(k, "")
        for k in ("resident_code", "year", "requester", "identity_document", "proxy_name", "proxy_document")
    }
    year = values["year"].strip()
    if not year.isdigit():
        raise _error("year", "range", "a year (YYYY)")
    requester = values["requester"] if values["requester"] in ops.REQUESTERS else "invalid"
    return values, ops.DisclosureRequest(
        resident_code=values["resident_code"].strip(),
        year=int(year),
        requester=requester,  # type: ignore[arg-type]
        identity_document=values["identity_document"],
        proxy_name=values["proxy_name"] or None,
        proxy_document=values["proxy_document"] or None,
    )


@pages.post("/disclosure")
async def disclosure_submit(request: Request, user: Clerk) -> Response:
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    values = {k: form.get(k, "") for k in form if k != "csrf_token"}
    try:
        values, body = _disclosure_values(form)
        result = await run_in_threadpool(_disclose, request, body, user)
    except NetworkError as exc:
        status = getattr(exc, "status", 422)
        context = {
            "values": values,
            "result": None,
            "error": {"field": exc.field, "rule": exc.rule, "message": rule_ja(exc.rule)},
        }
        return render(request, "network/disclosure.html", context, status_code=status)
    return render(request, "network/disclosure.html", {"values": values, "result": result, "error": None})


@pages.post("/disclosure/pdf")
async def disclosure_pdf_page(request: Request, user: Clerk) -> Response:
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    _, body = _disclosure_values(form)
    return await run_in_threadpool(_disclosure_pdf, request, body, user)


# --- pages: national operator --------------------------------------------------------------------


@pages.get("/network")
def network_page(request: Request, user: Operator) -> Response:
    with _factory(request)() as session:
        statuses = network.replication_status(session)
        waiting = len(network.quarantined(session))
    return render(
        request,
        "network/status.html",
        {
            "prefectures": ops.replication_by_prefecture(statuses),
            "label": ops.municipality_label,
            "waiting": waiting,
            "fmt_lag": _fmt_lag,
            "fmt_time": _fmt_time,
        },
    )


def _fmt_lag(seconds: Any) -> str:
    if seconds is None:
        return "—"
    total = seconds.total_seconds() if hasattr(seconds, "total_seconds") else float(seconds)
    if total < 60:
        return f"{total:.1f}秒"
    if total < 3600:
        return f"{total / 60:.1f}分"
    return f"{total / 3600:.1f}時間"


def _fmt_time(moment: datetime | None) -> str:
    return "—" if moment is None else wareki_time(moment)


@pages.get("/network/quarantine")
def quarantine_page(request: Request, user: Operator) -> Response:
    with _factory(request)() as session:
        rows, total = ops.quarantine_queue(session)
    done = request.query_params.get("released")
    return render(
        request,
        "network/quarantine.html",
        {
            "rows": rows,
            "total": total,
            "label": ops.municipality_label,
            "fmt_time": _fmt_time,
            "released": done,
            "error": None,
        },
    )


@pages.post("/network/quarantine/{quarantine_id}/release")
def quarantine_release_page(request: Request, quarantine_id: int, user: Operator) -> Response:
    try:
        with transaction(_factory(request)) as session:
            network.release_quarantined(session, quarantine_id, actor=user.username)
    except NetworkError as exc:
        with _factory(request)() as session:
            rows, total = ops.quarantine_queue(session)
        error = {
            "id": quarantine_id,
            "field": exc.field,
            "rule": exc.rule,
            "message": rule_ja(exc.rule),
            "detail": exc.message,
        }
        return render(
            request,
            "network/quarantine.html",
            {
                "rows": rows,
                "total": total,
                "label": ops.municipality_label,
                "fmt_time": _fmt_time,
                "released": None,
                "error": error,
            },
            status_code=422,
        )
    return RedirectResponse(f"/network/quarantine?released={quarantine_id}", status_code=303)


@pages.get("/network/agencies")
def agencies_page(request: Request, user: Operator) -> Response:
    with _factory(request)() as session:
        found = ops.agencies(session)
    return render(
        request,
        "network/agencies.html",
        {"agencies": found, "items_ja": ops.ITEM_NAMES_JA, "policies_ja": POLICIES_JA},
    )


POLICIES_JA = {"provide": "提供（記録に印）", "withhold_address": "住所を除いて提供", "refuse": "提供しない"}


@pages.post("/network/agencies/reload")
def agencies_reload_page(request: Request, user: Operator) -> Response:
    reload_registry(request, user)
    return RedirectResponse("/network/agencies", status_code=303)


@pages.get("/network/statistics")
def statistics_page(
    request: Request,
    user: Operator,
    since: Annotated[str | None, Query(pattern=r"^(\d{4}-\d{2})?$")] = None,
    until: Annotated[str | None, Query(pattern=r"^(\d{4}-\d{2})?$")] = None,
    agency: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    with _factory(request)() as session:
        rows = ops.provision_statistics(
            session, since=since or None, until=until or None, agency_code=agency or None
        )
        names = {a.code: a.name for a in ops.agencies(session)}
        uses = {u.code: u.name for u in ops.statutory_uses(session)}
    totals: dict[str, int] = {}
    for r in rows:
        totals[r.outcome] = totals.get(r.outcome, 0) + r.count
    return render(
        request,
        "network/statistics.html",
        {
            "rows": rows,
            "names": names,
            "uses": uses,
            "totals": totals,
            "outcomes": ops.OUTCOMES,
            "outcomes_ja": ops.OUTCOMES_JA,
            "values": {"since": since or "", "until": until or "", "agency": agency or ""},
        },
    )


def register_web(app: FastAPI) -> None:
    """Routes, navigation (agency: 照会・一括照会; clerk: 提供状況の開示; operator: 全国サーバ)."""
    app.include_router(api)
    app.include_router(pages)
    add_nav_item(app, NavItem("照会", "/provision", roles=("agency",)))
    add_nav_item(app, NavItem("一括照会", "/provision/bulk", roles=("agency",)))
    add_nav_item(app, NavItem("提供状況の開示", "/disclosure", roles=("clerk",)))
    add_nav_item(app, NavItem("全国サーバ", "/network", roles=("national_operator",)))
