"""The 提供状況の開示 letter (本人確認情報の提供状況の開示について): a Japanese PDF.

It lists who received the person's 本人確認情報 in a year, when (和暦, JST), for which 事務 and
which items. Drawn with :mod:`kiban.core.documents` (IPAex Mincho embedded, serial, verification
code and QR code in the ledger, as every Kiban document); the ledger entry is written in the
caller's transaction. The document data (what is hashed) is exactly what is printed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm
from reportlab.pdfgen.canvas import Canvas
from sqlalchemy.orm import Session

from kiban.core.database import utcnow
from kiban.core.documents import (
    FONT_NAME,
    Issuance,
    PdfText,
    SignerProvider,
    document_font,
    draw_qr,
    draw_text,
    issue,
)
from kiban.core.wareki import to_wareki
from kiban.network.operations import ITEM_NAMES_JA, REQUESTERS_JA, Disclosure, municipality_label

JST = ZoneInfo("Asia/Tokyo")
DOCUMENT_TYPE = "network.disclosure"
TITLE = "本人確認情報の提供状況の開示について"
ISSUER = "地方公共団体情報システム機構"
_WIDTH, _HEIGHT = A4
_LEFT = 20 * mm
_RIGHT = _WIDTH - 20 * mm
_FOOTER_TOP = 50 * mm  # QR and codes below this line on every page


@dataclass(frozen=True)
class DisclosurePdf:
    pdf: bytes
    issuance: Issuance
    data: dict[str, Any]
    pages: int
    missing_glyphs: tuple[str, ...]


def wareki_time(moment: datetime) -> str:
    """「令和8年3月1日 14時05分」 in JST."""
    local = moment.astimezone(JST)
    return f"{to_wareki(local.date())} {local.hour}時{local.minute:02d}分"


def disclosure_data(disclosure: Disclosure, *, counter: str, issued_at: datetime) -> dict[str, Any]:
    """What the letter prints (and the ledger hashes)."""
    person = disclosure.person
    request = disclosure.request
    lines = [
        {
            "提供日時": wareki_time(e.provided_at),
            "提供先": e.agency_name,
            "事務": e.use_name,
            "提供項目": "・".join(ITEM_NAMES_JA.get(i, i) for i in e.items),
        }
        for e in disclosure.entries
    ]
    requester = REQUESTERS_JA[request.requester]
    if request.requester == "proxy":
        requester += f"（{request.proxy_name}）"
    return {
        "様式": TITLE,
        "対象者氏名": f"{person.family_name}　{person.given_name}",
        "生年月日": to_wareki(person.birth_date),
        "住民票コード": person.resident_code,
        "対象期間": f"{to_wareki(date(request.year, 1, 1))}から{to_wareki(date(request.year, 12, 31))}まで",
        "請求者": requester,
        "本文": (
            "あなたの本人確認情報の提供状況は、次のとおりです。"
            if lines
            else "対象期間に、あなたの本人確認情報を提供した記録はありません。"
        ),
        "提供状況": lines,
        "件数": f"{len(lines)}件",
        "交付窓口": counter,
        "発行日": to_wareki(issued_at.astimezone(JST).date()),
        "発行者": ISSUER,
    }


def _wrap(text: str, width: int = 56) -> list[str]:
    """Cut a long line (a 事務's full name) into lines of ``width`` characters; nothing is dropped."""
    return [text[i : i + width] for i in range(0, len(text), width)] or [""]


class _Letter:
    def __init__(self, issuance: Issuance, data: dict[str, Any]) -> None:
        document_font()
        self.buffer = io.BytesIO()
        self.c = Canvas(
            self.buffer, pagesize=A4, pageCompression=1, invariant=True, initialFontName=FONT_NAME
        )
        self.c.setTitle(TITLE)
        self.c.setCreator("Kiban")
        self.issuance = issuance
        self.data = data
        self.text = PdfText()
        self.pages = 0
        self.y = 0.0

    def put(self, x: float, text: str, size: float, align: str = "left") -> None:
        draw_text(self.c, x, self.y, self.text.add(text), size, align)

    def page(self) -> None:
        if self.pages:
            self.c.showPage()
        self.pages += 1
        self.y = _HEIGHT - 14 * mm
        self.put(_RIGHT, f"発行番号　{self.issuance.serial}", 8, "right")
        self.y = _HEIGHT - 26 * mm
        self.put(_WIDTH / 2, TITLE, 16, "centre")
        self.c.setLineWidth(0.8)
        self.c.line(_LEFT, _HEIGHT - 30 * mm, _RIGHT, _HEIGHT - 30 * mm)
        self.y = _HEIGHT - 38 * mm
        self.footer()

    def footer(self) -> None:
        size = 30 * mm
        draw_qr(self.c, self.issuance.qr_payload, _LEFT, 12 * mm, size)
        saved = self.y
        x = _LEFT + size + 4 * mm
        for y, line in (
            (36 * mm, f"発行番号　{self.issuance.serial}"),
            (30 * mm, f"照合番号　{self.issuance.verification_code}"),
            (24 * mm, "この文書の真正性は、発行番号と照合番号（二次元コード）で確認できます。"),
            (18 * mm, f"{self.pages}枚目"),
        ):
            self.y = y
            self.put(x, line, 8)
        self.y = saved

    def need(self, height: float) -> None:
        if self.y - height < _FOOTER_TOP:
            self.y = _FOOTER_TOP - 4 * mm
            self.put(_WIDTH / 2, "（次葉に続く）", 9, "centre")
            self.page()

    def row(self, label: str, value: str) -> None:
        self.need(8 * mm)
        self.put(_LEFT + 2 * mm, label, 9)
        self.put(_LEFT + 36 * mm, value, 10.5)
        self.c.setLineWidth(0.3)
        self.c.line(_LEFT, self.y - 2 * mm, _RIGHT, self.y - 2 * mm)
        self.y -= 7.5 * mm

    def entry(self, number: int, line: dict[str, str]) -> None:
        self.need(30 * mm)
        self.put(_LEFT, f"{number}.", 9)
        self.put(_LEFT + 8 * mm, line["提供日時"], 9.5)
        self.put(_LEFT + 62 * mm, line["提供先"], 9.5)
        self.y -= 5 * mm
        for text in (*_wrap(f"事務　{line['事務']}"), *_wrap(f"提供項目　{line['提供項目']}")):
            self.put(_LEFT + 8 * mm, text, 8)
            self.y -= 4.5 * mm
        self.y += 4.5 * mm
        self.c.setLineWidth(0.2)
        self.c.line(_LEFT, self.y - 2 * mm, _RIGHT, self.y - 2 * mm)
        self.y -= 7 * mm

    def finish(self) -> bytes:
        self.c.showPage()
        self.c.save()
        return self.buffer.getvalue()


def issue_disclosure_letter(
    session: Session,
    disclosure: Disclosure,
    *,
    municipality_code: str,
    issuer: str,
    signers: SignerProvider | None = None,
    issued_at: datetime | None = None,
) -> DisclosurePdf:
    """Record the letter in the document ledger and draw it (A4, as many sheets as needed)."""
    when = issued_at or utcnow()
    counter = f"{municipality_label(municipality_code)}（団体コード {municipality_code}）"
    data = disclosure_data(disclosure, counter=counter, issued_at=when)
    issuance = issue(
        session,
        document_type=DOCUMENT_TYPE,
        municipality_code=municipality_code,
        data=data,
        issuer=issuer,
        subject_resident_code=disclosure.person.resident_code,
        signers=signers,
        issued_at=when,
    )
    letter = _Letter(issuance, data)
    letter.page()
    for label in ("対象者氏名", "生年月日", "住民票コード", "対象期間", "請求者", "交付窓口"):
        letter.row(label, str(data[label]))
    letter.y -= 4 * mm
    letter.put(_LEFT, str(data["本文"]), 10.5)
    letter.y -= 8 * mm
    for number, line in enumerate(data["提供状況"], start=1):
        letter.entry(number, line)
    letter.need(24 * mm)
    letter.put(_LEFT, f"以上　{data['件数']}", 10.5)
    letter.y -= 10 * mm
    letter.put(_LEFT, str(data["発行日"]), 10.5)
    letter.y -= 8 * mm
    letter.put(_RIGHT, str(data["発行者"]), 12, "right")
    pdf = letter.finish()
    return DisclosurePdf(pdf, issuance, data, letter.pages, letter.text.missing())
