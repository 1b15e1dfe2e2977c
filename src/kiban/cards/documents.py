"""交付通知書 (card-ready notice): the PDF letter that calls the holder to the counter.

Drawn with the project's document font (IPAex Mincho, subset and embedded) and 和暦 dates. A notice
is a letter, not a certificate: it carries no verification code and is not entered in the
certificate ledger (``issued_documents``); the transition to ``notified`` and its audit entry are
the record that it was sent.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm
from reportlab.pdfgen.canvas import Canvas
from sqlalchemy import select
from sqlalchemy.orm import Session

from kiban.cards import service, states
from kiban.cards.models import Card
from kiban.core import master
from kiban.core.documents import FONT_NAME, PdfText, document_font, draw_text
from kiban.core.wareki import to_wareki
from kiban.register.documents import mayor_line

# The holder is asked to come within three months (交付期限), as municipalities' notices do.
COLLECTION_PERIOD = timedelta(days=90)
_W, _H = A4


@dataclass(frozen=True)
class Notice:
    card_id: str
    municipality_code: str
    pdf: bytes
    text: tuple[str, ...]  # every string drawn (tests and missing-glyph checks read it)


def _draw(card: Card, name: str, address: str, sent_on: date) -> tuple[bytes, tuple[str, ...]]:
    document_font()
    buffer = io.BytesIO()
    c = Canvas(buffer, pagesize=A4, pageCompression=1, invariant=True, initialFontName=FONT_NAME)
    c.setTitle("個人番号カード交付通知書")
    c.setCreator("Kiban")
    text = PdfText()
    body = master.municipality(card.municipality_code)
    left = 25 * mm
    draw_text(c, left, _H - 30 * mm, text.add(address), 11)
    draw_text(c, left, _H - 38 * mm, text.add(f"{name}　様"), 14)
    draw_text(c, _W / 2, _H - 60 * mm, text.add("個人番号カード交付通知書"), 20, align="centre")
    draw_text(c, _W - 25 * mm, _H - 72 * mm, text.add(to_wareki(sent_on)), 10.5, align="right")
    draw_text(
        c, _W - 25 * mm, _H - 79 * mm, text.add(mayor_line(card.municipality_code)), 10.5, align="right"
    )
    lines = [
        "申請された個人番号カードの準備ができましたので、お知らせします。",
        "本通知書と本人確認書類をお持ちのうえ、交付場所でお受け取りください。",
        "",
        f"交付場所　　{body.name}役所　窓口",
        f"交付期限　　{to_wareki(sent_on + COLLECTION_PERIOD)}",
        f"申請書ID　　{card.application_id}",
        f"カード番号　{card.card_id}",
        f"有効期限　　{to_wareki(card.expires_on) if card.expires_on else '交付時に定めます'}",
        "",
        "持ち物　本通知書、本人確認書類（A書類1点またはB書類2点）、",
        "　　　　通知カード又は個人番号通知書（お持ちの方）",
        "受け取りの際に暗証番号（4種類）を設定していただきます。",
    ]
    if card.express:
        lines.append("特急発行のお申請です。お早めにお受け取りください。")
    y = _H - 100 * mm
    for line in lines:
        if line:
            draw_text(c, left, y, text.add(line), 11)
        y -= 8 * mm
    c.showPage()
    c.save()
    return buffer.getvalue(), tuple(text.drawn)


def issue_notice(
    session: Session, actor: service.Actor, card_id: str, *, now: datetime | None = None
) -> Notice:
    """Make the 交付通知書 of a card that arrived (``shipped``) and move it to ``notified``."""
    moment = service.aware_now(now)
    card = service.get_card(session, card_id, lock=True)
    if card.state != states.SHIPPED:
        raise service.CardsError("card_id", "transition_not_allowed", f"the card is {card.state}", status=409)
    record = service.resident_record(
        session, actor, card.resident_code, card.municipality_code, service.today_jst(moment), "card_id"
    )
    pdf, drawn = _draw(
        card,
        f"{record.family_name}　{record.given_name}",
        service.address_text(record),
        service.today_jst(moment),
    )
    service.record_notified(session, actor, card.card_id, now=moment)
    return Notice(card.card_id, card.municipality_code, pdf, drawn)


def issue_notices(
    session: Session,
    actor: service.Actor,
    municipality_code: str,
    *,
    limit: int = 500,
    now: datetime | None = None,
) -> list[Notice]:
    """The batch job: a notice for every card of the municipality that arrived, express ones first."""
    ids = list(
        session.scalars(
            select(Card.card_id)
            .where(Card.state == states.SHIPPED, Card.municipality_code == municipality_code)
            .order_by(Card.express.desc(), Card.applied_on, Card.card_id)
            .limit(limit)
        )
    )
    return [issue_notice(session, actor, card_id, now=now) for card_id in ids]
