"""JSON/CSV API of the network's exports (``/api/network/exports``), over :mod:`kiban.network.exports`.

- ``GET  /api/network/exports/move-ins.csv?month=2026-11&level=municipality`` — the monthly 転入
  extract (national_operator);
- ``GET  /api/network/exports/identity-changes?after=0&limit=100`` — the CA's 異動等情報 feed;
- ``POST /api/network/exports/resident-code`` ``{"individual_number": "…"}`` or
  ``{"resident_code": "…"}`` — the current 住民票コード for a 符号 request (POST, so that no
  identifier lands in an access log's query string).

Login and CSRF as every Kiban API. Each request is one transaction; a refusal for the role
commits its audit entry and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session
from starlette.responses import Response

from kiban.network import exports
from kiban.web.auth import CurrentUser, current_user

router = APIRouter(prefix="/api/network/exports", tags=["network exports"])

User = Annotated[CurrentUser, Depends(current_user)]


def _caller(user: CurrentUser) -> exports.Caller:
    return exports.Caller(username=user.username, role=user.role, organisation=user.organisation)


@contextmanager
def _unit(request: Request) -> Iterator[Session]:
    session: Session = request.app.state.session_factory()
    try:
        yield session
        session.commit()
    except exports.ExportError as exc:
        if exc.status == 403:
            session.commit()  # the refusal's audit entry
        else:
            session.rollback()
        raise
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@router.get("/move-ins.csv", response_class=Response)
def move_ins_csv(
    request: Request,
    user: User,
    month: Annotated[str, Query(max_length=7, description="YYYY-MM (JST 異動年月日)")],
    level: Annotated[Literal["municipality", "prefecture"], Query()] = "municipality",
) -> Response:
    """住民基本台帳人口移動報告: 転入 counts by destination, origin, sex and age group (CSV, UTF-8)."""
    with _unit(request) as session:
        text = exports.move_in_csv(session, _caller(user), month, level=level)
    return Response(
        content=text.encode("utf-8"),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="move-ins-{month}-{level}.csv"'},
    )


class FeedOut(BaseModel):
    events: list[dict[str, Any]]
    next_cursor: int


@router.get("/identity-changes")
def identity_changes(
    request: Request,
    user: User,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=exports.FEED_LIMIT)] = 100,
) -> FeedOut:
    """異動等情報 after the cursor, for the CA (read-only, audited)."""
    with _unit(request) as session:
        page = exports.identity_change_feed(session, _caller(user), after=after, limit=limit)
    return FeedOut(events=page.events, next_cursor=page.next_cursor)


class CodeQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    individual_number: str | None = Field(default=None, max_length=32)
    resident_code: str | None = Field(default=None, max_length=32)


class CodeOut(BaseModel):
    resident_code: str
    changed: bool
    status: str | None


@router.post("/resident-code")
def resident_code(request: Request, user: User, body: CodeQuery) -> CodeOut:
    """The current 住民票コード of a person, for the linkage role's 符号 request (audited)."""
    with _unit(request) as session:
        answer = exports.provide_resident_code(
            session, _caller(user), individual_number=body.individual_number, resident_code=body.resident_code
        )
    return CodeOut(resident_code=answer.resident_code, changed=answer.changed, status=answer.status)
