"""The national operator's numbering API (``/api/numbering``): letter batches and number changes.

- ``POST /api/numbering/letters`` ``{"limit": 500, "assigned_since": "…"}`` — produce a batch of
  個人番号通知書 (one per number that has none) and download it as a ZIP: one PDF per letter,
  named by its serial, and ``manifest.json`` (serial, 住民票コード, municipality, kind; never a
  number). The batch is recorded when the response is built; a lost download is not reprinted
  here (a reprint is a new, audited letter: not done yet).
- ``POST /api/numbering/number-change`` ``{"resident_code": "…", "reason": "…",
  "requested_by": "person"|"mayor"}`` — 個人番号の変更 after a leak; the answer says that the
  card must be re-issued and the letter follows with the next batch (it does not echo the number).

Role: national_operator (the numbering role is the national role's).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session
from starlette.responses import Response

from kiban.core.documents import KeyDirectorySigners, SignerProvider
from kiban.core.identifiers import IndividualNumberCipher, validate_resident_code
from kiban.numbering import letters
from kiban.web.auth import CurrentUser, require_role

router = APIRouter(prefix="/api/numbering", tags=["numbering"])

Operator = Annotated[CurrentUser, Depends(require_role("national_operator"))]


@contextmanager
def _unit(request: Request) -> Iterator[Session]:
    session: Session = request.app.state.session_factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _signers(request: Request) -> SignerProvider:
    state = request.app.state
    if getattr(state, "numbering_signers", None) is None:
        state.numbering_signers = KeyDirectorySigners(state.settings.keys_dir)
    signers: SignerProvider = state.numbering_signers
    return signers


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=500, ge=1, le=letters.BATCH_LIMIT)
    assigned_since: datetime | None = None


@router.post("/letters", response_class=Response)
def produce_batch(request: Request, user: Operator, body: BatchRequest) -> Response:
    """A batch of 個人番号通知書 as a ZIP of PDFs plus ``manifest.json``."""
    with _unit(request) as session:
        batch = letters.produce_letters(
            session,
            issuer=user.username,
            limit=body.limit,
            assigned_since=body.assigned_since,
            signers=_signers(request),
        )
    buffer = io.BytesIO()
    manifest = {
        "batch_id": str(batch.batch_id),
        "letters": [
            {
                "serial": x.serial,
                "resident_code": x.resident_code,
                "municipality_code": x.municipality_code,
                "kind": x.kind,
                "file": f"{x.serial}.pdf",
            }
            for x in batch.letters
        ],
        "waiting": len(batch.waiting),
    }
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", json.dumps(manifest, ensure_ascii=False, indent=1))
        for x in batch.letters:
            archive.writestr(f"{x.serial}.pdf", x.pdf)
    return Response(
        content=buffer.getvalue(),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="number-letters-{batch.batch_id}.zip"'},
    )


class ChangeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resident_code: str = Field(max_length=32)
    reason: str = Field(max_length=400)
    requested_by: Literal["person", "mayor"] = "person"
    municipality_code: str | None = Field(default=None, max_length=6)


class ChangeOut(BaseModel):
    resident_code: str
    card_reissue_required: bool
    letter: str


@router.post("/number-change")
def change_number(request: Request, user: Operator, body: ChangeRequest) -> ChangeOut:
    """個人番号の変更 (leak): new number, old retired, card re-issuance triggered, letter next batch."""
    code = validate_resident_code(body.resident_code)
    cipher = IndividualNumberCipher.from_key_file(request.app.state.settings.keys_dir / "numbering.key")
    with _unit(request) as session:
        letters.change_individual_number(
            session,
            code,
            cipher,
            body.reason,
            actor=user.username,
            municipality_code=body.municipality_code,
            requested_by=body.requested_by,
        )
    return ChangeOut(resident_code=code, card_reissue_required=True, letter="next_batch")
