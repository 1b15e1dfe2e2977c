"""The clerk's API for 広域交付 (``POST /api/network/wide-area/resident-copy``), over
:mod:`kiban.network.wide_area`.

Body: the photo ID (``document``), the name and birth date on it, the 住民票コード or the 個人番号
read from the card, ``household`` and the optional items. Answer: the PDF (``application/pdf``),
its serial in ``X-Document-Serial``. A refusal about the person (not found, ID mismatch, no
active record) commits its audit entry at the clerk's municipality and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session
from starlette.responses import Response

from kiban.core.documents import KeyDirectorySigners, SignerProvider
from kiban.network.wide_area import Identification, PhotoId, wide_area_resident_copy
from kiban.register.documents import CopyOptions
from kiban.register.rules import AccessDenied, NotFound
from kiban.register.schemas import Actor
from kiban.web.auth import CurrentUser, require_role

router = APIRouter(prefix="/api/network/wide-area", tags=["network wide-area"])

Clerk = Annotated[CurrentUser, Depends(require_role("clerk"))]


class Items(BaseModel):
    """Items printed on request (本籍・筆頭者 are never printed in 広域交付)."""

    model_config = ConfigDict(extra="forbid")

    relationship: bool = False
    resident_code: bool = False
    individual_number: bool = False


class WideAreaRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    document: PhotoId
    family_name: str = Field(min_length=1, max_length=100)
    given_name: str = Field(min_length=1, max_length=100)
    birth_date: date
    resident_code: str | None = Field(default=None, max_length=32)
    individual_number: str | None = Field(default=None, max_length=32)
    household: bool = False
    items: Items = Items()


@contextmanager
def _unit(request: Request) -> Iterator[Session]:
    session: Session = request.app.state.session_factory()
    try:
        yield session
        session.commit()
    except (AccessDenied, NotFound):
        session.commit()  # the refusal's audit entry, nothing else was written
        raise
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _signers(request: Request) -> SignerProvider:
    state = request.app.state
    if getattr(state, "wide_area_signers", None) is None:
        state.wide_area_signers = KeyDirectorySigners(state.settings.keys_dir)
    signers: SignerProvider = state.wide_area_signers
    return signers


@router.post("/resident-copy", response_class=Response)
def resident_copy(request: Request, user: Clerk, body: WideAreaRequest) -> Response:
    """住民票の写し (広域交付) of the person identified at this counter, from their own register."""
    assert user.municipality_code is not None  # a clerk account always has one
    clerk = Actor(username=user.username, municipality_code=user.municipality_code, role=user.role)
    ident = Identification(
        document=body.document,
        family_name=body.family_name,
        given_name=body.given_name,
        birth_date=body.birth_date,
        resident_code=body.resident_code,
        individual_number=body.individual_number,
    )
    options = CopyOptions(
        relationship=body.items.relationship,
        resident_code=body.items.resident_code,
        individual_number=body.items.individual_number,
    )
    with _unit(request) as session:
        printed = wide_area_resident_copy(
            session, clerk, ident, household=body.household, options=options, signers=_signers(request)
        )
    return Response(
        content=printed.pdf,
        media_type="application/pdf",
        headers={
            "X-Document-Serial": printed.serial,
            "Content-Disposition": f'inline; filename="{printed.serial}.pdf"',
            "Cache-Control": "no-store",
        },
    )
