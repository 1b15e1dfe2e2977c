"""個人番号通知書 (the letter telling a person their 個人番号) and 個人番号の変更 (reissue on leak).

SPEC K3: each newly assigned number gets a letter; a number changed after a leak gets a new one
and the card is re-issued. Letters are produced in batches (:func:`produce_letters`) by the
national role for the municipality of residence (番号法7条: the mayor notifies; J-LIS prints).

- **One letter per number, ever.** ``numbering_letters`` has a row per letter, unique on the
  number; :func:`pending_numbers` finds active numbers without one. A second batch, or two
  producers at once (PostgreSQL: ``FOR UPDATE SKIP LOCKED`` on the numbers), never prints twice.
- **Verifiable like the register's documents.** Each letter goes through
  :func:`kiban.core.documents.issue`: serial, content hash over exactly what is printed, the
  municipality's verification code, printed with the QR code. The ledger keeps the hash, not
  the data, so the 個人番号 is stored nowhere new.
- **The number appears only on the letter.** Not in the audit entries (item names only), not
  in the ledger, not in this module's log lines. The caller gets the PDF bytes to print.
- **The addressee** (name, reading, birth date, address) comes from the national copy
  (機構保存本人確認情報): numbering holds no names. A number whose holder the copy does not know
  yet (its ``register.identity_changed`` not applied) waits for the next batch.
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm
from reportlab.pdfgen.canvas import Canvas
from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from kiban.core import audit, master
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
from kiban.core.events import emit
from kiban.core.identifiers import FIELD_RESIDENT_CODE, validate_resident_code
from kiban.core.wareki import to_wareki
from kiban.network.models import current_version
from kiban.numbering.models import (
    LETTER_ASSIGNED,
    LETTER_CHANGED,
    NUMBER_ACTIVE,
    NUMBER_RETIRED,
    IndividualNumber,
    NumberLetter,
)
from kiban.numbering.notices import NUMBER_REISSUED
from kiban.numbering.service import (
    NumberCipher,
    NumberingError,
    current_resident_code,
    number_history,
    reissue_individual_number,
)

JST = ZoneInfo("Asia/Tokyo")
DOCUMENT_TYPE = "numbering.number_notice"
TITLE = "個人番号通知書"
PURPOSE = "個人番号通知書の作成"
CHANGE_PURPOSE = "個人番号の変更"
BATCH_LIMIT = 5_000
NOTICE = "この通知書は、個人番号を証明する書類や本人確認書類として使用することはできません。"
KIND_JA = {LETTER_ASSIGNED: "指定", LETTER_CHANGED: "変更"}
SENTENCE = {
    LETTER_ASSIGNED: "あなたの個人番号を次のとおり指定しましたので通知します。",
    LETTER_CHANGED: "あなたの個人番号を変更しましたので、変更後の個人番号を通知します。",
}


@dataclass(frozen=True, slots=True)
class Addressee:
    """The holder of a number, as printed (names exactly as stored)."""

    resident_code: str
    municipality_code: str
    family_name: str
    given_name: str
    family_name_kana: str
    given_name_kana: str
    birth_date: date
    address: str


@dataclass(frozen=True, slots=True)
class Letter:
    """A produced 個人番号通知書: the PDF to print and what the ledger recorded."""

    pdf: bytes
    issuance: Issuance
    resident_code: str
    municipality_code: str
    kind: str
    data: dict[str, Any]
    missing_glyphs: tuple[str, ...]

    @property
    def serial(self) -> str:
        return self.issuance.serial


@dataclass
class LetterBatch:
    """One batch: the letters made and the numbers left for a later batch (holder not in the copy)."""

    batch_id: uuid.UUID
    letters: list[Letter] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # 住民票コード (never numbers)


# --- which numbers need a letter -------------------------------------------------------------------


def pending_numbers(
    session: Session, *, limit: int = BATCH_LIMIT, assigned_since: datetime | None = None
) -> list[IndividualNumber]:
    """Active numbers without a letter, oldest first (``assigned_since``: leave out an initial load)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= BATCH_LIMIT:
        raise NumberingError("limit", "range", f"must be an integer from 1 to {BATCH_LIMIT}")
    query = select(IndividualNumber).where(
        IndividualNumber.status == NUMBER_ACTIVE,
        ~exists().where(NumberLetter.number == IndividualNumber.number),
    )
    if assigned_since is not None:
        if assigned_since.tzinfo is None:
            raise NumberingError("assigned_since", "timezone", "must be timezone-aware")
        query = query.where(IndividualNumber.assigned_at >= assigned_since)
    query = query.order_by(IndividualNumber.assigned_at, IndividualNumber.number).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        # Two producers at once each take different numbers instead of printing the same letter.
        query = query.with_for_update(skip_locked=True, of=IndividualNumber)
    return list(session.scalars(query))


def addressee(session: Session, number: IndividualNumber) -> Addressee | None:
    """The holder as the national copy has them now (their current 住民票コード), or None."""
    from kiban.network.models import NationalIdentity

    code = current_resident_code(session, number.number)
    if code is None:
        return None
    row = session.scalars(
        select(NationalIdentity).where(
            NationalIdentity.resident_code == code, current_version(NationalIdentity)
        )
    ).one_or_none()
    if row is None or row.status != "active":
        return None
    return Addressee(
        resident_code=code,
        municipality_code=row.municipality_code,
        family_name=row.family_name,
        given_name=row.given_name,
        family_name_kana=row.family_name_kana,
        given_name_kana=row.given_name_kana,
        birth_date=row.birth_date,
        address=row.address,
    )


def _kind(session: Session, number: IndividualNumber) -> str:
    earlier = session.scalar(
        select(IndividualNumber.number).where(
            IndividualNumber.resident_code == number.resident_code,
            IndividualNumber.status == NUMBER_RETIRED,
            IndividualNumber.generation < number.generation,
        )
    )
    return LETTER_CHANGED if earlier is not None else LETTER_ASSIGNED


# --- the letter ------------------------------------------------------------------------------------


def _mayor(municipality_code: str) -> str:
    from kiban.register.documents import mayor_line

    return mayor_line(municipality_code)


def letter_data(person: Addressee, number: str, kind: str, issued_at: datetime) -> dict[str, Any]:
    """Exactly what the letter prints (hashed for the verification code)."""
    return {
        "様式": TITLE,
        "区分": KIND_JA[kind],
        "市区町村コード": person.municipality_code,
        "宛先住所": person.address,
        "宛名": f"{person.family_name}　{person.given_name}　様",
        "氏名": f"{person.family_name}　{person.given_name}",
        "フリガナ": f"{person.family_name_kana}　{person.given_name_kana}",
        "生年月日": to_wareki(person.birth_date),
        "個人番号": f"{number[:4]} {number[4:8]} {number[8:]}",
        "通知文": SENTENCE[kind],
        "注意": NOTICE,
        "発行日": to_wareki(issued_at.astimezone(JST).date()),
        "発行者": _mayor(person.municipality_code),
    }


_WIDTH, _HEIGHT = A4
_LEFT = 20 * mm
_RIGHT = _WIDTH - 20 * mm


def draw_letter(issuance: Issuance, data: dict[str, Any]) -> tuple[bytes, tuple[str, ...]]:
    """One A4 page: the address window, the notice, the number in large type, issuer, QR code."""
    document_font()
    buffer = io.BytesIO()
    c = Canvas(buffer, pagesize=A4, pageCompression=1, invariant=True, initialFontName=FONT_NAME)
    c.setTitle(TITLE)
    c.setCreator("Kiban")
    text = PdfText()
    c.setFont(FONT_NAME, 8)
    c.drawRightString(_RIGHT, _HEIGHT - 14 * mm, text.add(f"発行番号　{issuance.serial}"))
    # The address window of the envelope (窓あき封筒).
    draw_text(c, _LEFT + 4 * mm, _HEIGHT - 32 * mm, text.add(str(data["宛先住所"])), 10.5)
    draw_text(c, _LEFT + 4 * mm, _HEIGHT - 42 * mm, text.add(str(data["宛名"])), 14)
    c.setFont(FONT_NAME, 20)
    c.drawCentredString(_WIDTH / 2, _HEIGHT - 70 * mm, text.add(TITLE))
    c.setFont(FONT_NAME, 10.5)
    c.drawString(_LEFT, _HEIGHT - 84 * mm, text.add(str(data["通知文"])))
    y = _HEIGHT - 100 * mm
    for label in ("氏名", "フリガナ", "生年月日"):
        c.setFont(FONT_NAME, 9)
        c.drawString(_LEFT + 2 * mm, y, text.add(label))
        draw_text(c, _LEFT + 40 * mm, y, text.add(str(data[label])), 13 if label == "氏名" else 10.5)
        c.setLineWidth(0.3)
        c.line(_LEFT, y - 2.5 * mm, _RIGHT, y - 2.5 * mm)
        y -= 10 * mm
    c.setFont(FONT_NAME, 9)
    c.drawString(_LEFT + 2 * mm, y - 4 * mm, text.add("個人番号"))
    c.setLineWidth(1.0)
    c.rect(_LEFT + 38 * mm, y - 9 * mm, 100 * mm, 15 * mm, stroke=1, fill=0)
    c.setFont(FONT_NAME, 20)
    c.drawString(_LEFT + 44 * mm, y - 4 * mm, text.add(str(data["個人番号"])))
    c.setFont(FONT_NAME, 9)
    c.drawString(_LEFT, y - 22 * mm, text.add(str(data["注意"])))
    c.setFont(FONT_NAME, 10.5)
    c.drawString(_LEFT, 84 * mm, text.add(str(data["発行日"])))
    c.setFont(FONT_NAME, 13)
    c.drawRightString(_RIGHT, 74 * mm, text.add(str(data["発行者"])))
    size = 32 * mm
    draw_qr(c, issuance.qr_payload, _LEFT, 14 * mm, size)
    c.setFont(FONT_NAME, 8)
    x = _LEFT + size + 4 * mm
    c.drawString(x, 38 * mm, text.add(f"発行番号　{issuance.serial}"))
    c.drawString(x, 32 * mm, text.add(f"照合番号　{issuance.verification_code}"))
    c.drawString(
        x, 26 * mm, text.add("この通知書の真正性は、発行番号と照合番号（二次元コード）で確認できます。")
    )
    c.showPage()
    c.save()
    return buffer.getvalue(), text.missing()


def _produce(
    session: Session,
    number: IndividualNumber,
    person: Addressee,
    *,
    batch_id: uuid.UUID,
    issuer: str,
    signers: SignerProvider | None,
    issued_at: datetime | None,
) -> Letter:
    when = issued_at or utcnow()
    if when.tzinfo is None:
        raise NumberingError("issued_at", "timezone", "must be timezone-aware")
    kind = _kind(session, number)
    data = letter_data(person, number.number, kind, when)
    issuance = issue(
        session,
        document_type=DOCUMENT_TYPE,
        municipality_code=person.municipality_code,
        data=data,
        issuer=issuer,
        subject_resident_code=person.resident_code,
        signers=signers,
        issued_at=when,
    )
    # The record first: a concurrent producer that slipped past the lock fails here, before drawing.
    session.add(
        NumberLetter(
            number=number.number,
            resident_code=person.resident_code,
            municipality_code=person.municipality_code,
            kind=kind,
            serial=issuance.serial,
            batch_id=batch_id,
            produced_at=when,
        )
    )
    session.flush()
    pdf, missing = draw_letter(issuance, data)
    return Letter(pdf, issuance, person.resident_code, person.municipality_code, kind, data, missing)


def produce_letters(
    session: Session,
    *,
    issuer: str = "numbering",
    limit: int = 500,
    assigned_since: datetime | None = None,
    signers: SignerProvider | None = None,
    issued_at: datetime | None = None,
) -> LetterBatch:
    """A batch of 個人番号通知書 for active numbers that have none, in the caller's transaction.

    Each letter writes its ledger row, its ``numbering_letters`` row and one audit entry (item
    names only). A rollback of the caller's transaction drops the whole batch, so a batch is
    printed only after its commit.
    """
    if not isinstance(issuer, str) or not issuer.strip() or len(issuer) > 64:
        raise NumberingError("issuer", "required", "who produces the letters must be named (≤ 64 characters)")
    batch = LetterBatch(batch_id=uuid.uuid4())
    for number in pending_numbers(session, limit=limit, assigned_since=assigned_since):
        person = addressee(session, number)
        if person is None:
            batch.waiting.append(number.resident_code)
            continue
        batch.letters.append(
            _produce(
                session,
                number,
                person,
                batch_id=batch.batch_id,
                issuer=issuer,
                signers=signers,
                issued_at=issued_at,
            )
        )
    if batch.letters:
        audit.record_many(
            session,
            [
                {
                    "actor": issuer,
                    "role": "national_operator",
                    "action": "create",
                    "purpose": PURPOSE,
                    "subject": letter.resident_code,
                    "items": ["氏名", "フリガナ", "生年月日", "住所", "個人番号"],
                    "organisation": letter.municipality_code,
                    "detail": {"serial": letter.serial, "kind": letter.kind, "batch": str(batch.batch_id)},
                }
                for letter in batch.letters
            ],
        )
    return batch


def letters_of(session: Session, resident_code: str) -> list[NumberLetter]:
    """Every letter produced for the person, in the order of their numbers (generation)."""
    numbers = [n.number for n in number_history(session, resident_code)]
    if not numbers:
        return []
    rows = {
        row.number: row
        for row in session.scalars(select(NumberLetter).where(NumberLetter.number.in_(numbers)))
    }
    return [rows[n] for n in numbers if n in rows]


# --- 個人番号の変更 ----------------------------------------------------------------------------------


RequestedBy = Literal["person", "mayor"]


def change_individual_number(
    session: Session,
    resident_code: str,
    cipher: NumberCipher,
    reason: str,
    *,
    actor: str,
    municipality_code: str | None = None,
    requested_by: RequestedBy = "person",
) -> str:
    """個人番号の変更 (番号法7条2項: the number leaked and may be misused): a new number, the old retired.

    On top of :func:`~kiban.numbering.service.reissue_individual_number` (the store: next
    generation, old number retired forever, history kept), this emits
    ``numbering.number_reissued`` with ``card_reissue_required: true`` — the register writes the
    new number, the copies record it, and the cards capability must re-issue the card (the old
    number is printed on it) — and writes an audit entry. The new letter comes with the next
    :func:`produce_letters` batch (the new number has none). ``requested_by``: the person asked
    (本人の請求) or the mayor acted ex officio (職権). The free-text ``reason`` stays in the
    numbering store; it does not travel.
    """
    code = validate_resident_code(resident_code)
    if requested_by not in ("person", "mayor"):
        raise NumberingError("requested_by", "one_of", "must be 'person' or 'mayor'")
    if not isinstance(actor, str) or not actor.strip():
        raise NumberingError("actor", "required", "who changes the number must be named")
    if municipality_code is None:
        municipality_code = _municipality_of(session, code)
    else:
        try:
            municipality_code = master.municipality(municipality_code).code
        except master.MasterError as exc:
            raise NumberingError("municipality_code", exc.rule, str(exc)) from exc
    new_number = reissue_individual_number(session, code, cipher, reason)
    emit(
        session,
        NUMBER_REISSUED,
        code,
        {
            "resident_code": code,
            "individual_number": new_number,
            "municipality_code": municipality_code,
            "card_reissue_required": True,
            "requested_by": requested_by,
            "changed_on": utcnow().astimezone(JST).date().isoformat(),
        },
    )
    audit.record(
        session,
        actor=actor,
        role="national_operator",
        action="update",
        purpose=CHANGE_PURPOSE,
        subject=code,
        items=["個人番号"],
        organisation=municipality_code,
        detail={"requested_by": requested_by},
    )
    return new_number


def _municipality_of(session: Session, code: str) -> str:
    from kiban.network.models import NationalIdentity

    found = session.scalar(
        select(NationalIdentity.municipality_code).where(
            NationalIdentity.resident_code == code,
            current_version(NationalIdentity),
            NationalIdentity.status == "active",
        )
    )
    if found is None:
        raise NumberingError(
            FIELD_RESIDENT_CODE,
            "unknown_residence",
            "the national copy has no active record: name the municipality",
        )
    return str(found)
