"""The municipality's side of kiosk issuance: the issuing function the centre routes to.

The centre and the municipality meet through :class:`MunicipalRequest` and
:class:`MunicipalResponse` only (in production they are different nodes): the centre sends the
holder's 住民票コード, the document type and a request id and hash; the municipality answers with
the PDF, the data it was drawn from and its serial in the document ledger, echoing the id and hash.
:class:`RegisterIssuer` is the issuing function of a municipality that runs Kiban's register;
another system (a 戸籍 system for 戸籍証明書) plugs in by implementing :class:`IssuingFunction` and
being added to a :class:`Router` for its document type.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import rfc8785
from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm
from reportlab.pdfgen.canvas import Canvas
from sqlalchemy.orm import Session, sessionmaker

from kiban.core import audit
from kiban.core import documents as ledger
from kiban.core.database import utcnow
from kiban.core.wareki import to_wareki
from kiban.register import issuance
from kiban.register.documents import IssuedPdf, Requester, mayor_line
from kiban.register.models import ResidentStatus
from kiban.register.rules import RegisterError
from kiban.register.schemas import Actor

from .signing import Finisher, finish_pdf

DOCUMENT_TYPES: dict[str, str] = {
    "resident_copy": "住民票の写し",
    "entry_certificate": "住民票記載事項証明書",
    "seal_certificate": "印鑑登録証明書",
    "tax_certificate": "所得・課税証明書",
    "koseki_fuhyo": "戸籍の附票の写し",
}
"""Document types a kiosk may ask for (a 戸籍証明書 would be added with its own issuing function)."""

# The document ledger's type of each (kiban.core.documents); 附票 is this package's own.
LEDGER_TYPES: dict[str, str] = {
    "resident_copy": "register.resident_copy",
    "entry_certificate": "register.entry_certificate",
    "seal_certificate": "register.seal_certificate",
    "tax_certificate": "register.tax_certificate",
    "koseki_fuhyo": "kiosk.koseki_fuhyo",
}
HOUSEHOLD_TYPES = frozenset({"resident_copy", "entry_certificate"})
ENTRY_ITEMS_AT_KIOSK = ("name", "birth_date", "sex", "address")
KIOSK_ACTOR = "kiosk-centre"


@dataclass(frozen=True, slots=True)
class MunicipalRequest:
    """What the centre asks a municipality for; ``request_hash`` binds every field."""

    request_id: str
    session_id: str
    municipality_code: str
    resident_code: str
    document_type: str
    household: bool = False
    fiscal_year: int | None = None

    @property
    def request_hash(self) -> str:
        body: dict[str, Any] = {
            "request_id": self.request_id,
            "session_id": self.session_id,
            "municipality_code": self.municipality_code,
            "resident_code": self.resident_code,
            "document_type": self.document_type,
            "household": self.household,
            "fiscal_year": self.fiscal_year,
        }
        return hashlib.sha256(rfc8785.dumps(body)).hexdigest()


@dataclass(frozen=True, slots=True)
class MunicipalResponse:
    """The municipality's answer: the document, or a refusal (``refusal`` = (field, rule, message))."""

    request_id: str
    session_id: str
    request_hash: str
    serial: str | None = None
    pdf: bytes = b""
    data: Mapping[str, Any] = field(default_factory=dict)
    content_hash: str | None = None
    refusal: tuple[str, str, str] | None = None


class IssuingFunction(Protocol):
    """A municipality's issuing function (証明書発行サーバ): one request in, one response out."""

    def __call__(self, request: MunicipalRequest) -> MunicipalResponse: ...


class Router:
    """Routes a request by municipality (and document type) to an issuing function."""

    def __init__(self, default: IssuingFunction | None = None) -> None:
        self.default = default
        self._by_municipality: dict[str, IssuingFunction] = {}
        self._by_type: dict[tuple[str, str], IssuingFunction] = {}

    def add(
        self, municipality_code: str, function: IssuingFunction, document_type: str | None = None
    ) -> None:
        if document_type is None:
            self._by_municipality[municipality_code] = function
        else:
            self._by_type[(municipality_code, document_type)] = function

    def route(self, municipality_code: str, document_type: str) -> IssuingFunction | None:
        return (
            self._by_type.get((municipality_code, document_type))
            or self._by_municipality.get(municipality_code)
            or self.default
        )


def _default_year(today: datetime) -> int:
    # 所得・課税証明書 of the newest 課税年度: from June the year's own, before that the previous one.
    return today.year if today.month >= 6 else today.year - 1


class RegisterIssuer:
    """The issuing function of municipalities that keep their register in Kiban.

    Runs in its own transaction (another node in production): the register's generators write the
    ledger row and the audit entries; a refusal of the register (a DV restriction, no seal, no
    assessment) comes back as ``refusal`` and nothing is written.
    """

    def __init__(
        self,
        session_maker: sessionmaker[Session],
        *,
        signers: ledger.SignerProvider | None = None,
        finish: Finisher = finish_pdf,
    ) -> None:
        self.session_maker = session_maker
        self.signers = signers
        self.finish = finish

    def __call__(self, request: MunicipalRequest) -> MunicipalResponse:
        actor = Actor(username=KIOSK_ACTOR, municipality_code=request.municipality_code)
        try:
            with self.session_maker.begin() as session:
                printed = self._issue(session, actor, request)
        except (RegisterError, ledger.DocumentError) as exc:
            return MunicipalResponse(
                request.request_id,
                request.session_id,
                request.request_hash,
                refusal=(getattr(exc, "field", "request"), getattr(exc, "rule", "refused"), str(exc)),
            )
        return MunicipalResponse(
            request.request_id,
            request.session_id,
            request.request_hash,
            serial=printed.serial,
            pdf=self.finish(printed.pdf, request.municipality_code, printed.serial),
            data=printed.data,
            content_hash=printed.issuance.content_hash,
        )

    def _issue(self, session: Session, actor: Actor, request: MunicipalRequest) -> IssuedPdf:
        code, kind = request.resident_code, request.document_type
        # A household copy names others: any of them under a 支援措置 stops it (the register refuses
        # restricted records to anyone but the person themselves).
        asker = Requester.HOUSEHOLD_MEMBER if request.household else Requester.SELF
        if kind == "resident_copy":
            return issuance.resident_copy(
                session,
                actor,
                code,
                household=request.household,
                requester=asker,
                signers=self.signers,
            )
        if kind == "entry_certificate":
            return issuance.entry_certificate(
                session,
                actor,
                code,
                ENTRY_ITEMS_AT_KIOSK,
                household=request.household,
                requester=asker,
                signers=self.signers,
            )
        if kind == "seal_certificate":
            return issuance.seal_certificate(session, actor, code, signers=self.signers)
        if kind == "tax_certificate":
            year = request.fiscal_year or _default_year(utcnow())
            return issuance.tax_certificate(session, actor, code, year, signers=self.signers)
        if kind == "koseki_fuhyo":
            return koseki_fuhyo(session, actor, code, signers=self.signers)
        raise RegisterError("document_type", "known_type", f"this municipality issues no {kind}")


# --------------------------------------------------------------------------- 戸籍の附票の写し


def koseki_fuhyo(
    session: Session,
    actor: Actor,
    resident_code: str,
    *,
    signers: ledger.SignerProvider | None = None,
    issued_at: datetime | None = None,
) -> IssuedPdf:
    """戸籍の附票の写し, minimal: 本籍, 筆頭者, the person and their addresses known to the register.

    The real 附票 is kept by the 本籍地 (with the 戸籍); Kiban has no family register, so the
    register's own records stand in for it: the current address and the previous one.
    """
    rows = issuance.records_here(session, actor, resident_code)
    active = [r for r in rows if r.status == ResidentStatus.ACTIVE.value]
    if not active:
        raise RegisterError("resident_code", "dead_or_removed", "the record is removed (除票)")
    r = active[0]
    if r.nationality is not None or not r.honseki:
        raise RegisterError("resident_code", "no_honseki", "戸籍の附票 exists only for persons with a 本籍")
    addresses = []
    if r.previous_address:
        addresses.append({"住所": r.previous_address, "住所を定めた日": ""})
    current = f"{r.prefecture}{r.municipality}{r.town}{r.banchi}"
    addresses.append(
        {"住所": current, "住所を定めた日": to_wareki(r.address_since) if r.address_since else ""}
    )
    data: dict[str, Any] = {
        "本籍": r.honseki,
        "筆頭者": r.hittousha or "",
        "記載事項": [
            {
                "氏名": f"{r.family_name}　{r.given_name}",
                "生年月日": to_wareki(r.birth_date),
                "住所の履歴": addresses,
            }
        ],
    }
    when = issued_at or utcnow()
    issued = ledger.issue(
        session,
        document_type=LEDGER_TYPES["koseki_fuhyo"],
        municipality_code=actor.municipality_code,
        data=data,
        issuer=actor.username,
        subject_resident_code=r.resident_code,
        signers=signers,
        issued_at=when,
    )
    pdf = _draw_fuhyo(data, issued, actor.municipality_code)
    audit.record(
        session,
        actor=actor.username,
        role=actor.role,
        action="read",
        purpose="戸籍の附票の写しの交付",
        subject=r.resident_code,
        items=["本籍", "筆頭者", "氏名", "生年月日", "住所"],
        organisation=actor.municipality_code,
        detail={"serial": issued.serial, "document_type": "koseki_fuhyo", "requester": "self"},
    )
    return IssuedPdf(pdf=pdf, issuance=issued, data=data, missing_glyphs=(), pages=1)


def _draw_fuhyo(data: Mapping[str, Any], issued: ledger.Issuance, municipality_code: str) -> bytes:
    buffer = io.BytesIO()
    canvas = Canvas(buffer, pagesize=A4)
    width, height = A4
    y = height - 30 * mm
    ledger.draw_text(canvas, width / 2, y, "戸籍の附票の写し", 18, align="center")
    y -= 14 * mm
    person = data["記載事項"][0]
    lines = [
        f"本籍　{data['本籍']}",
        f"筆頭者　{data['筆頭者']}",
        f"氏名　{person['氏名']}",
        f"生年月日　{person['生年月日']}",
    ]
    lines += [f"住所　{a['住所']}　{a['住所を定めた日']}" for a in person["住所の履歴"]]
    for line in lines:
        ledger.draw_text(canvas, 20 * mm, y, line, 11)
        y -= 8 * mm
    y -= 6 * mm
    ledger.draw_text(canvas, 20 * mm, y, "この写しは、戸籍の附票の原本と相違ないことを証明する。", 11)
    ledger.draw_text(canvas, 20 * mm, y - 10 * mm, mayor_line(municipality_code), 11)
    ledger.draw_text(canvas, 20 * mm, 40 * mm, f"証明書番号　{issued.serial}", 9)
    ledger.draw_text(canvas, 20 * mm, 34 * mm, f"検証コード　{issued.verification_code}", 9)
    ledger.draw_qr(canvas, issued.qr_payload, width - 55 * mm, 25 * mm, 35 * mm)
    canvas.showPage()
    canvas.save()
    return buffer.getvalue()
