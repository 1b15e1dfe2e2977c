"""有効期限通知: expiry notices for cards and their certificates, in batches, never twice.

A daily job picks issued cards whose card expires, or whose user-authentication certificate
expires, within ``ahead`` (default 3 months — REFERENCE: notices 2–3 months ahead) and makes one
notice per (card, subject, expiry date): a PDF letter, or an e-mail record for a holder abroad
(国外転出 with continued use). ``cards_expiry_notices`` has a unique index on that triple, so a
second run — or two runs at once — never makes a second notice for the same expiry; a renewed
certificate has a new expiry date and gets its own notice.
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
from kiban.cards.models import Card, ExpiryNotice
from kiban.core import audit
from kiban.core.documents import FONT_NAME, document_font, draw_text
from kiban.core.wareki import to_wareki
from kiban.jpki import service as jpki
from kiban.register.documents import mayor_line

DEFAULT_AHEAD = timedelta(days=92)
SUBJECT_JA = {"card": "個人番号カード", "certificates": "電子証明書"}


@dataclass(frozen=True)
class ExpiryLetter:
    card_id: str
    subject: str  # card | certificates
    expires_on: date
    channel: str  # mail | email
    pdf: bytes | None  # the letter for mail; None for an e-mail record


def _letter(card: Card, subject: str, expires_on: date, name: str, address: str, today: date) -> bytes:
    document_font()
    buffer = io.BytesIO()
    width, height = A4
    c = Canvas(buffer, pagesize=A4, pageCompression=1, invariant=True, initialFontName=FONT_NAME)
    c.setTitle(f"{SUBJECT_JA[subject]}有効期限通知書")
    left = 25 * mm
    draw_text(c, left, height - 30 * mm, address, 11)
    draw_text(c, left, height - 38 * mm, f"{name}　様", 14)
    draw_text(c, width / 2, height - 60 * mm, f"{SUBJECT_JA[subject]}有効期限通知書", 18, align="centre")
    draw_text(c, width - 25 * mm, height - 72 * mm, to_wareki(today), 10.5, align="right")
    draw_text(c, width - 25 * mm, height - 79 * mm, mayor_line(card.municipality_code), 10.5, align="right")
    lines = [
        f"あなたの{SUBJECT_JA[subject]}は{to_wareki(expires_on)}に有効期限を迎えます。",
        "お住まいの市区町村の窓口で更新の手続きをしてください（手数料はかかりません）。",
        f"カード番号　{card.card_id}",
    ]
    y = height - 100 * mm
    for line in lines:
        draw_text(c, left, y, line, 11)
        y -= 8 * mm
    c.showPage()
    c.save()
    return buffer.getvalue()


def generate_expiry_notices(
    session: Session,
    actor: service.Actor,
    *,
    today: date,
    ahead: timedelta = DEFAULT_AHEAD,
    limit: int = 1000,
    now: datetime | None = None,
) -> list[ExpiryLetter]:
    """One batch of notices due by ``today + ahead``; cards already notified for that expiry are skipped."""
    moment = service.aware_now(now)
    horizon = today + ahead
    done = {
        (n.card_id, n.subject, n.expires_on)
        for n in session.scalars(select(ExpiryNotice).where(ExpiryNotice.expires_on >= today))
    }
    out: list[ExpiryLetter] = []
    cards = session.scalars(
        select(Card).where(Card.state.in_(states.ISSUED), Card.expires_on.is_not(None)).order_by(Card.card_id)
    )
    for card in cards:
        if len(out) >= limit:
            break
        due: list[tuple[str, date]] = []
        if card.expires_on is not None and today <= card.expires_on <= horizon:
            due.append(("card", card.expires_on))
        if card.user_auth_serial:
            cert = jpki.find_certificate(session, card.user_auth_serial)
            cert_end = cert.not_after.astimezone(service.JST).date()
            # the certificate notice is for a certificate that ends before the card does
            if cert.status == "good" and today <= cert_end <= horizon and cert_end != card.expires_on:
                due.append(("certificates", cert_end))
        due = [d for d in due if (card.card_id, d[0], d[1]) not in done]
        if not due:
            continue
        record = (
            service.resident_record(
                session,
                service.Actor(actor.username, actor.role, card.municipality_code),
                card.resident_code,
                card.municipality_code,
                today,
                "card_id",
            )
            if not card.overseas
            else None
        )
        for subject, expires_on in due:
            channel = "email" if card.overseas else "mail"
            pdf = None
            if record is not None:
                pdf = _letter(
                    card,
                    subject,
                    expires_on,
                    f"{record.family_name}　{record.given_name}",
                    service.address_text(record),
                    today,
                )
            session.add(
                ExpiryNotice(
                    card_id=card.card_id,
                    subject=subject,
                    expires_on=expires_on,
                    channel=channel,
                    created_at=moment,
                )
            )
            audit.record(
                session,
                actor=actor.username,
                role=actor.role,
                action="print",
                purpose="有効期限通知",
                subject=card.resident_code,
                items=[SUBJECT_JA[subject]],
                detail={"card_id": card.card_id, "expires_on": expires_on.isoformat(), "channel": channel},
            )
            out.append(ExpiryLetter(card.card_id, subject, expires_on, channel, pdf))
    session.flush()
    return out
