"""The card chapter of the demo (SPEC K4): applications to hand-over, a lost card, a return, notices.

``cards_chapter(ctx)`` runs after the CA's key ceremony (it needs the CA). For a sample of adult
residents it issues 申請書, takes applications on every channel (paper, online, an employer's bulk
file), checks them (one defective), orders production in a batch, lets the manufacturer consume
its queue and the municipalities take the cards in, prints the 交付通知書, and hands the cards over
at the counter (PINs set on the software cards, certificates from the CA). Then the call centre
takes a call and suspends a lost card, the card is found again, another is returned, a death
reaches a card through the events, and the expiry notices run. The report gives each count; the
files land in ``<data>/cards/`` (a sample card, its passphrase in ``cards/README.txt``, a notice).
"""

from __future__ import annotations

from collections import Counter
from datetime import date, timedelta
from pathlib import Path

from sqlalchemy import func, select

from kiban.cards import callcentre, service, states, storage
from kiban.cards.documents import issue_notice
from kiban.cards.intake import apply_many
from kiban.cards.manufacturer import Manufacturer, receive_shipments
from kiban.cards.models import Card
from kiban.cards.notices import generate_expiry_notices
from kiban.cards.service import Actor, Application, IdentityCheck
from kiban.cards.softcard import SoftCard
from kiban.demo.context import DemoContext, ReportSection
from kiban.jpki.keys import keystore_from_settings
from kiban.register.models import Resident

MAX_CARDS = 40
PINS = {"user_auth": "1234", "signature": "DEMO2026", "juki": "5678", "face": "9012"}
HOLDER_PASSPHRASE = "demo card passphrase"


def _sample(ctx: DemoContext, limit: int) -> list[tuple[str, str]]:
    today = date.today()
    with ctx.sessions() as s:
        rows = s.execute(
            select(Resident.resident_code, Resident.municipality_code, Resident.birth_date)
            .where(Resident.status == "active", Resident.period_of_stay_end.is_(None))
            .order_by(Resident.resident_code)
        ).all()
    adults = [(code, town) for code, town, born in rows if (today - born).days > 20 * 366]
    step = max(1, len(adults) // limit)
    return adults[::step][:limit]


def cards_chapter(ctx: DemoContext, *, cards: int = MAX_CARDS) -> ReportSection:
    keystore = keystore_from_settings(ctx.settings)
    operator = Actor("jlis-operator", "national_operator")
    agent = Actor("callcentre-agent", "call_centre")
    people = _sample(ctx, cards)
    counts: Counter[str] = Counter()
    shipped = storage.shipped_dir(ctx.data_dir)
    transport = storage.transport_passphrase(ctx.settings.keys_dir)
    with ctx.step("cards: applications", total=len(people)) as advance, ctx.sessions.begin() as s:
        forms: dict[str, str] = {}
        by_town: dict[str, list[str]] = {}
        for code, town in people:
            by_town.setdefault(town, []).append(code)
        for town, codes in by_town.items():
            forms.update(service.issue_forms(s, Actor(f"clerk-{town}", "clerk", town), codes, town))
        counts["forms"] = len(forms)
        codes = [code for code, _ in people]
        third = max(1, len(codes) // 3)
        for code in codes[:third]:
            service.apply(s, operator, Application(forms[code], channel="paper"))
            counts["paper"] += 1
        for code in codes[third : 2 * third]:
            service.apply(s, operator, Application(forms[code], channel="online"))
            counts["online"] += 1
        bulk = apply_many(
            s,
            operator,
            [Application(forms[c], "bulk", employer="株式会社デモ商事") for c in codes[2 * third :]],
        )
        counts["bulk"] = len(bulk.accepted)
        unknown = apply_many(s, operator, [Application("0" * 23, "online")])
        counts["refused_unknown_form"] = len(unknown.refused)
        applied = list(s.scalars(select(Card).where(Card.state == states.APPLIED).order_by(Card.card_id)))
        for i, card in enumerate(applied):
            service.check(s, operator, card.card_id, defect_code="photo_unclear" if i == 0 else None)
        counts["defective"] = 1 if applied else 0
        batch = service.order_production(s, operator, limit=len(applied) or 1)
        counts["ordered"] = batch.size if batch else 0
        advance(len(people))
    with ctx.step("cards: manufacturer and shipping"):
        depth_before = _depths(ctx)
        counts["produced"] = Manufacturer(shipped, transport).run(ctx.sessions)
        counts["arrived"] = receive_shipments(ctx.sessions)
    notice_path: Path | None = None
    with ctx.step("cards: 交付通知書 and hand-over"):
        with ctx.sessions.begin() as s:
            arrived = list(s.scalars(select(Card).where(Card.state == states.SHIPPED).order_by(Card.card_id)))
            for card in arrived:
                notice = issue_notice(
                    s, Actor(f"clerk-{card.municipality_code}", "clerk", card.municipality_code), card.card_id
                )
                counts["notices"] += 1
                if notice_path is None:
                    notice_path = storage.cards_dir(ctx.data_dir) / f"交付通知書-{card.card_id}.pdf"
                    notice_path.write_bytes(notice.pdf)
        handed: list[str] = []
        for card_id, town in _notified(ctx):
            source = shipped / town / f"{card_id}.kcard"
            soft = SoftCard.open(source, transport)
            target = storage.issued_path(ctx.data_dir, card_id)
            target.parent.mkdir(parents=True, exist_ok=True)
            soft.save(target, HOLDER_PASSPHRASE)
            with ctx.sessions.begin() as s:
                service.hand_over(
                    s,
                    Actor(f"clerk-{town}", "clerk", town),
                    card_id,
                    soft=soft,
                    identity=IdentityCheck(("driving_licence",)),
                    pins=PINS,
                    keystore=keystore,
                )
            source.unlink(missing_ok=True)
            handed.append(card_id)
        counts["handed_over"] = len(handed)
    with ctx.step("cards: call centre, return, notices"):
        if handed:
            lost = handed[0]
            with ctx.sessions.begin() as s:
                card = service.get_card(s, lost)
                call = callcentre.receive_call(s)
                callcentre.answer_call(s, agent, call.id)
                person = s.scalar(
                    select(Resident).where(
                        Resident.resident_code == card.resident_code, Resident.status == "active"
                    )
                )
                assert person is not None  # the caller knows their own data; the agent checks it
                answers = callcentre.KnowledgeAnswers(
                    person.birth_date, f"{person.family_name_kana}{person.given_name_kana}", person.town
                )
                if callcentre.identify_caller(s, agent, call.id, lost, answers):
                    callcentre.suspend_by_call(
                        s, agent, call.id, lost, reason="lost", request_id=f"demo-{lost}"
                    )
                    counts["suspended_by_phone"] += 1
            with ctx.sessions.begin() as s:
                service.record_found(
                    s, Actor("clerk", "clerk", service.get_card(s, lost).municipality_code), lost
                )
                counts["found_again"] += 1
        if len(handed) > 1:
            with ctx.sessions.begin() as s:
                town = service.get_card(s, handed[1]).municipality_code
                service.abolish(s, Actor(f"clerk-{town}", "clerk", town), handed[1], reason="returned")
                counts["returned"] += 1
        with ctx.sessions.begin() as s:
            horizon = date.today() + timedelta(days=366 * 6)
            letters = generate_expiry_notices(s, operator, today=date.today(), ahead=horizon - date.today())
            counts["expiry_notices"] = len(letters)
            counts["expiry_notices_again"] = len(
                generate_expiry_notices(s, operator, today=date.today(), ahead=horizon - date.today())
            )
        with ctx.sessions() as s:
            states_now = dict(s.execute(select(Card.state, func.count()).group_by(Card.state)).all())
            express = service.express_report(s, today=date.today())
    readme = storage.cards_dir(ctx.data_dir) / "README.txt"
    readme.write_text(
        "Software cards handed over in the demo are in issued/ (one file per card).\n"
        f"Their file passphrase is: {HOLDER_PASSPHRASE}\n"
        f"PINs: 利用者証明用 {PINS['user_auth']}, 署名用 {PINS['signature']}, "
        f"住基 {PINS['juki']}, 券面入力補助 {PINS['face']} (synthetic).\n"
        "Try: kiban card inspect <file>; kiban card sign <file> --challenge 00ff\n",
        encoding="utf-8",
    )
    ctx.facts["cards"] = dict(counts) | {"states": states_now}
    c = counts
    lines = [
        f"- 申請書 issued: {c['forms']}; applications: paper {c['paper']}, online {c['online']}, "
        f"employer bulk {c['bulk']}; refused (unknown 申請書ID): {c['refused_unknown_form']}",
        f"- checked: one defective (photo), the rest ordered in one batch: {c['ordered']}; "
        f"the manufacturer's queue held {depth_before['manufacturer']} messages and drained to 0",
        f"- produced {c['produced']}, arrived {c['arrived']}, 交付通知書 {c['notices']}, "
        f"handed over {c['handed_over']} (PINs on the card, both certificates from the CA)",
        f"- call centre: {c['suspended_by_phone']} card suspended by phone (certificates on hold), "
        f"{c['found_again']} found again, {c['returned']} returned",
        f"- expiry notices: {c['expiry_notices']} made; a second run made {c['expiry_notices_again']}",
        f"- express (特急) cards: {len(express)}",
        "- cards by state: " + ", ".join(f"{states.STATE_JA[k]} {v}" for k, v in sorted(states_now.items())),
        "- files: `cards/issued/` (software cards), `cards/README.txt`"
        + (f", `{notice_path.relative_to(ctx.data_dir)}`" if notice_path else ""),
    ]
    return ReportSection("My Number cards", "\n".join(lines))


def _depths(ctx: DemoContext) -> dict[str, int]:
    with ctx.sessions() as s:
        return service.queue_depths(s)


def _notified(ctx: DemoContext) -> list[tuple[str, str]]:
    with ctx.sessions() as s:
        return [
            (card_id, town)
            for card_id, town in s.execute(
                select(Card.card_id, Card.municipality_code)
                .where(Card.state == states.NOTIFIED)
                .order_by(Card.card_id)
            )
        ]


__all__ = ["cards_chapter"]
