"""The kiosk chapter of the demo (SPEC K6): residents use convenience-store kiosks.

``kiosk_chapter(ctx)`` runs after the cards chapter (it needs handed-over cards). Every
municipality opts in (one leaves out the 附票 to show a refusal), two operators register kiosks,
and each card holder prints documents at a kiosk of one or the other chain; a wrong PIN and a
kiosk of a withdrawn interface version show refusals. Samples land in ``<data>/documents/``, the
month's settlement in the report.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from sqlalchemy import select

from kiban.cards import states, storage
from kiban.cards.demo import HOLDER_PASSPHRASE
from kiban.cards.models import Card
from kiban.cards.softcard import CardError, SoftCard
from kiban.core.documents import KeyDirectorySigners
from kiban.demo.context import DemoContext, ReportSection
from kiban.jpki.keys import keystore_from_settings
from kiban.register.models import Resident

from . import service
from .issuing import RegisterIssuer
from .service import Centre, KioskCredential, KioskError
from .signing import pades_finisher

FEES = {"resident_copy": 200, "entry_certificate": 200, "seal_certificate": 200, "koseki_fuhyo": 200}
KINDS = ("resident_copy", "entry_certificate", "koseki_fuhyo")


def kiosk_chapter(ctx: DemoContext, *, limit: int = 40) -> ReportSection:
    counts: Counter[str] = Counter()
    documents = ctx.data_dir / "documents"
    documents.mkdir(parents=True, exist_ok=True)
    with ctx.sessions() as s:  # read-only: which cards are live, from the cards capability's table
        live = list(
            s.execute(
                select(Card.card_id, Card.resident_code)
                .where(Card.state == states.ACTIVE)
                .order_by(Card.card_id)
            )
        )
        towns = sorted({m for (m,) in s.execute(select(Resident.municipality_code).distinct())})
    with ctx.sessions.begin() as s:
        for i, town in enumerate(towns):
            for kind, fee in FEES.items():
                service.set_participation(
                    s, town, kind, fee=fee, enabled=not (i == 0 and kind == "koseki_fuhyo")
                )
        service.register_operator(s, "seven", "セブン・デモ")
        service.register_operator(s, "lawson", "ローソン・デモ")
        _, c1 = service.register_kiosk(s, "seven", "seven-0001", "駅前店", "2")
        _, c2 = service.register_kiosk(s, "lawson", "lawson-0001", "本町店", "1")
    kiosks = [KioskCredential("seven-0001", c1, "2"), KioskCredential("lawson-0001", c2, "1")]
    finish = pades_finisher(ctx.sessions, keystore_from_settings(ctx.settings))
    issuer = RegisterIssuer(ctx.sessions, signers=KeyDirectorySigners(ctx.settings.keys_dir), finish=finish)
    centre = Centre(ctx.sessions, issuer, require_signed=True)
    saved: set[str] = set()
    started = datetime.now()
    with ctx.step("kiosk: residents print certificates at convenience stores"):
        for n, (card_id, _code) in enumerate(live[:limit]):
            path = storage.issued_path(ctx.data_dir, card_id)
            if not path.exists():
                continue
            soft = SoftCard.open(path, HOLDER_PASSPHRASE)
            cred = kiosks[n % 2]
            try:
                ch = centre.open_session(cred)
                if n == 1:  # one resident mistypes the PIN once
                    try:
                        soft.sign_challenge("0000", ch.challenge)
                    except CardError:
                        counts["wrong_pin"] += 1
                sig = soft.sign_challenge("1234", ch.challenge)
                cert = soft.certificate("user_auth") or b""
                centre.authenticate(cred, ch.session_id, ch.challenge, cert, sig)
                # Everyone a 住民票の写し and a 附票 (one municipality does not offer it); every
                # third holder a 記載事項証明書 too.
                wanted = KINDS if n % 3 == 0 else ("resident_copy", "koseki_fuhyo")
                for kind in wanted:
                    try:
                        printed = centre.request_document(cred, ch.session_id, kind, household=(n % 5 == 0))
                    except KioskError as exc:
                        counts[f"refused_{exc.rule}"] += 1
                        continue
                    counts[kind] += 1
                    if kind not in saved:
                        (documents / f"kiosk-{kind}.pdf").write_bytes(printed.pdf)
                        saved.add(kind)
                centre.close(cred, ch.session_id)
            except KioskError as exc:
                counts[f"refused_{exc.rule}"] += 1
        with ctx.sessions.begin() as s:
            service.withdraw_version(s, "1", "demo drill: v1.9 update breaks the interface")
        try:
            centre.open_session(kiosks[1])
        except KioskError as exc:
            counts[f"refused_{exc.rule}"] += 1
        with ctx.sessions.begin() as s:
            service.restore_version(s, "1")
    elapsed = (datetime.now() - started).total_seconds()
    ctx.facts["kiosk"] = dict(counts)
    now = datetime.now(service.JST)
    with ctx.sessions() as s:
        lines = service.settlement(s, now.year, now.month)
    body = [
        f"{sum(counts[k] for k in KINDS)} documents printed at kiosks in {elapsed:.1f} s "
        + ", ".join(f"{service.DOCUMENT_TYPES[k]} {counts[k]}" for k in KINDS),
        "Refusals: "
        + (", ".join(f"{k[8:]} {v}" for k, v in sorted(counts.items()) if k.startswith("refused_")) or "none")
        + f"; wrong PINs typed {counts['wrong_pin']}",
        "",
        service.settlement_markdown(lines, now.year, now.month),
        "Samples: " + ", ".join(f"documents/kiosk-{k}.pdf" for k in sorted(saved)),
    ]
    return ReportSection("Kiosk issuance (コンビニ交付)", "\n".join(body))
