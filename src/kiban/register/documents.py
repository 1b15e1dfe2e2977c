"""Documents of the resident register (証明書), printed as PDF in Japanese.

Layouts: 住民票の写し (個人票 or 世帯連記式), 住民票記載事項証明書, 除票の写し, 転出証明書,
印鑑登録証明書 and 所得・課税証明書. Each takes a plain request dataclass defined here (built by
the register service, the kiosk or tests; :func:`entry_from_resident` builds an entry from a
:class:`~kiban.register.models.Resident` row), records the document in the ledger
(:func:`kiban.core.documents.issue`) and returns the PDF with its serial and verification code.

What is printed is first collected as a plain dict (the *document data*); the ledger hashes that
dict and the PDF is drawn from it, so the hash covers exactly what the paper shows.
"""

from __future__ import annotations

import enum
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from PIL import Image, UnidentifiedImageError
from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm
from reportlab.lib.utils import ImageReader
from reportlab.pdfgen.canvas import Canvas
from sqlalchemy.orm import Session

from kiban.core import master
from kiban.core.database import utcnow
from kiban.core.documents import (
    FONT_NAME,
    DocumentError,
    Issuance,
    PdfText,
    SignerProvider,
    document_font,
    draw_qr,
    draw_text,
    issue,
)
from kiban.core.wareki import to_wareki
from kiban.register.models import Household, Resident

JST = ZoneInfo("Asia/Tokyo")
MAX_SEAL_IMAGE_BYTES = 512 * 1024
MAX_SEAL_PIXELS = 2000  # per side
MIN_SEAL_PIXELS = 16


class DocumentType(enum.StrEnum):
    """Kinds of register documents (the ledger's ``document_type``)."""

    RESIDENT_COPY = "register.resident_copy"  # 住民票の写し
    ENTRY_CERTIFICATE = "register.entry_certificate"  # 住民票記載事項証明書
    REMOVED_RECORD_COPY = "register.removed_record_copy"  # 除票の写し
    MOVE_OUT_CERTIFICATE = "register.move_out_certificate"  # 転出証明書
    SEAL_CERTIFICATE = "register.seal_certificate"  # 印鑑登録証明書
    TAX_CERTIFICATE = "register.tax_certificate"  # 所得・課税証明書


class Requester(enum.StrEnum):
    """Who asks for the document (請求者の区分)."""

    SELF = "self"  # 本人
    HOUSEHOLD_MEMBER = "household_member"  # 同一世帯の者
    AGENT = "agent"  # 代理人
    THIRD_PARTY = "third_party"  # 第三者 (住基法12条の3)


# Synthetic heads of the demo municipalities: made-up names, not the real office holders.
MAYOR_NAMES: dict[str, str] = {
    "212016": "山田　太郎",  # 岐阜市
    "212113": "川島　誠一",  # 美濃加茂市
    "215015": "木曽　花子",  # 坂祝町
    "131016": "神田　一郎",  # 千代田区
    "131041": "戸山　涼子",  # 新宿区
}
_FALLBACK_NAMES = ("佐藤　明", "鈴木　恵", "高橋　守", "田中　光", "伊藤　誠", "渡辺　望")


def mayor_line(municipality_code: str) -> str:
    """ "岐阜市長　山田　太郎": the issuing head's title and (synthetic) name.

    A designated city's ward (行政区) issues in the name of the city's mayor. Municipalities
    not in :data:`MAYOR_NAMES` get a made-up name chosen from the code, so tests stay stable.
    """
    try:
        body = master.municipality(municipality_code)
    except master.MasterError as exc:
        raise DocumentError("municipality_code", exc.rule, str(exc)) from exc
    if body.kind is master.MunicipalityKind.WARD and body.parent_code:
        body = master.municipality(body.parent_code)
    name = MAYOR_NAMES.get(body.code)
    if name is None:
        name = _FALLBACK_NAMES[int(hashlib.sha256(body.code.encode()).hexdigest(), 16) % len(_FALLBACK_NAMES)]
    return f"{body.name}長　{name}"  # 岐阜市長, 坂祝町長, 新宿区長


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class ResidentEntry:
    """住民票の記載事項 of one person, as printed (names exactly as stored, IVS kept)."""

    municipality_code: str
    resident_code: str  # 住民票コード
    family_name: str
    given_name: str
    family_name_kana: str
    given_name_kana: str
    birth_date: date
    sex: int  # 1 男, 2 女
    relationship: str  # 続柄
    household_head_name: str  # 世帯主の氏名
    address: str  # 住所, in full
    address_since: date  # 住所を定めた日
    resident_since: date  # 住民となった日
    previous_address: str | None = None  # 転入前住所
    honseki: str | None = None  # 本籍
    hittousha: str | None = None  # 筆頭者
    individual_number: str | None = None  # 個人番号
    old_family_name: str | None = None  # 旧氏
    alias: str | None = None  # 通称
    nationality: str | None = None  # 国籍・地域
    residence_status: str | None = None  # 在留資格
    period_of_stay_end: date | None = None  # 在留期間の満了の日
    removed_reason: str | None = None  # 消除事由 (除票)
    removed_on: date | None = None  # 消除の日

    @property
    def name(self) -> str:
        return f"{self.family_name}　{self.given_name}"

    @property
    def kana(self) -> str:
        return f"{self.family_name_kana}　{self.given_name_kana}"


def format_address(row: Resident | Household) -> str:
    """住所 in one line: 都道府県 市区町村 町字 番地 方書."""
    parts = [row.prefecture, row.municipality, row.town, row.banchi]
    text = "".join(parts)
    return f"{text}　{row.katagaki}" if row.katagaki else text


def entry_from_resident(resident: Resident, household_head_name: str | None = None) -> ResidentEntry:
    """The printable entry of a ``Resident`` row (the head's name given, or the resident's own)."""
    return ResidentEntry(
        municipality_code=resident.municipality_code,
        resident_code=resident.resident_code,
        family_name=resident.family_name,
        given_name=resident.given_name,
        family_name_kana=resident.family_name_kana,
        given_name_kana=resident.given_name_kana,
        birth_date=resident.birth_date,
        sex=resident.sex,
        relationship=resident.relationship,
        household_head_name=household_head_name or f"{resident.family_name}　{resident.given_name}",
        address=format_address(resident),
        address_since=resident.address_since,
        resident_since=resident.resident_since,
        previous_address=resident.previous_address,
        honseki=resident.honseki,
        hittousha=resident.hittousha,
        individual_number=resident.individual_number,
        old_family_name=resident.old_family_name,
        alias=resident.alias,
        nationality=resident.nationality,
        residence_status=resident.residence_status,
        period_of_stay_end=resident.period_of_stay_end,
        removed_reason=resident.removed_reason,
        removed_on=resident.removed_on,
    )


@dataclass(frozen=True, slots=True)
class CopyOptions:
    """Items printed only when the request asks for them (住基法7条, 12条)."""

    honseki: bool = False  # 本籍・筆頭者
    relationship: bool = False  # 世帯主・続柄
    resident_code: bool = False  # 住民票コード
    individual_number: bool = False  # 個人番号: only to the person or their household


@dataclass(frozen=True, slots=True)
class ResidentCopyRequest:
    """請求: 住民票の写し of one person (個人票) or of the household (世帯連記式)."""

    municipality_code: str
    entries: Sequence[ResidentEntry]
    issuer: str
    household: bool = False
    options: CopyOptions = field(default_factory=CopyOptions)
    requester: Requester = Requester.SELF


HouseholdCopyRequest = ResidentCopyRequest  # the same request with household=True


ENTRY_ITEMS: dict[str, str] = {
    "name": "氏名",
    "kana": "フリガナ",
    "birth_date": "生年月日",
    "sex": "性別",
    "address": "住所",
    "relationship": "続柄",
    "household_head": "世帯主",
    "address_since": "住所を定めた日",
    "resident_since": "住民となった日",
    "previous_address": "転入前住所",
    "honseki": "本籍",
    "resident_code": "住民票コード",
}


@dataclass(frozen=True, slots=True)
class EntryCertificateRequest:
    """請求: 住民票記載事項証明書, certifying only the chosen items (keys of :data:`ENTRY_ITEMS`)."""

    municipality_code: str
    entries: Sequence[ResidentEntry]
    items: frozenset[str]
    issuer: str
    requester: Requester = Requester.SELF


@dataclass(frozen=True, slots=True)
class RemovedRecordCopyRequest:
    """請求: 除票の写し (個人票 only)."""

    municipality_code: str
    entry: ResidentEntry
    issuer: str
    options: CopyOptions = field(default_factory=CopyOptions)
    requester: Requester = Requester.SELF


@dataclass(frozen=True, slots=True)
class MoveOutCertificateRequest:
    """転出証明書 for the persons moving out together."""

    municipality_code: str
    entries: Sequence[ResidentEntry]
    destination_address: str  # 転出先
    planned_move_on: date  # 転出予定日
    notified_on: date  # 届出日
    issuer: str


@dataclass(frozen=True, slots=True)
class SealCertificateRequest:
    """印鑑登録証明書 with the registered seal's image (PNG or JPEG bytes)."""

    municipality_code: str
    entry: ResidentEntry
    seal_image: bytes
    registration_number: str  # 印鑑登録番号
    issuer: str


@dataclass(frozen=True, slots=True)
class TaxCertificateRequest:
    """所得・課税証明書 for one fiscal year (年度) and the income of the year before."""

    municipality_code: str
    entry: ResidentEntry
    fiscal_year: int  # 課税年度 (e.g. 2025 → 令和7年度, on income of 令和6年分)
    taxable_income: int  # 課税標準額 (円)
    tax_amount: int  # 税額 (円)
    issuer: str


@dataclass(frozen=True, slots=True)
class IssuedPdf:
    """A printed document: the PDF, its ledger issuance, the data hashed, and any unprintable characters."""

    pdf: bytes
    issuance: Issuance
    data: dict[str, Any]
    missing_glyphs: tuple[str, ...]
    pages: int

    @property
    def serial(self) -> str:
        return self.issuance.serial


# --------------------------------------------------------------------------- validation


def _require(condition: bool, field_name: str, rule: str, message: str) -> None:
    if not condition:
        raise DocumentError(field_name, rule, message)


def _check_type(value: object, expected: type, field_name: str) -> None:
    _require(
        isinstance(value, expected),
        field_name,
        "type",
        f"{expected.__name__} required, got {type(value).__name__}",
    )


def _check_entry(entry: object, municipality_code: str, field_name: str) -> ResidentEntry:
    _check_type(entry, ResidentEntry, field_name)
    assert isinstance(entry, ResidentEntry)
    for spec in fields(ResidentEntry):
        value = getattr(entry, spec.name)
        if spec.name in ("birth_date", "address_since", "resident_since"):
            _check_type(value, date, f"{field_name}.{spec.name}")
        elif spec.name in ("period_of_stay_end", "removed_on"):
            _require(value is None or isinstance(value, date), f"{field_name}.{spec.name}", "type", "date")
        elif spec.name == "sex":
            _require(value in (1, 2), f"{field_name}.sex", "one_of", "1 (男) or 2 (女)")
        elif spec.type == "str":
            _require(
                isinstance(value, str) and value.strip() != "",
                f"{field_name}.{spec.name}",
                "required",
                "a non-empty string is required",
            )
        else:
            _require(value is None or isinstance(value, str), f"{field_name}.{spec.name}", "type", "str")
    _require(
        entry.municipality_code == municipality_code,
        f"{field_name}.municipality_code",
        "same_municipality",
        f"the resident is registered in {entry.municipality_code}, not in {municipality_code}",
    )
    return entry


def _check_common(municipality_code: object, issuer: object) -> None:
    _require(
        isinstance(municipality_code, str) and len(municipality_code) == 6 and municipality_code.isdigit(),
        "municipality_code",
        "six_digits",
        f"{municipality_code!r} is not a 6-digit code",
    )
    _require(isinstance(issuer, str) and issuer.strip() != "", "issuer", "required", "issuer is required")


def _check_entries(entries: object, municipality_code: str) -> list[ResidentEntry]:
    _require(
        isinstance(entries, Sequence) and not isinstance(entries, str),
        "entries",
        "type",
        "a list of ResidentEntry is required",
    )
    assert isinstance(entries, Sequence)
    _require(len(entries) > 0, "entries", "not_empty", "at least one person is required")
    checked = [_check_entry(e, municipality_code, f"entries[{i}]") for i, e in enumerate(entries)]
    codes = [e.resident_code for e in checked]
    _require(len(set(codes)) == len(codes), "entries", "unique", "a person appears twice")
    return checked


def _check_number_allowed(options: CopyOptions, requester: object) -> None:
    _check_type(options, CopyOptions, "options")
    _require(requester in set(Requester), "requester", "one_of", f"one of {[r.value for r in Requester]}")
    for spec in fields(CopyOptions):
        _check_type(getattr(options, spec.name), bool, f"options.{spec.name}")
    # 住基法12条: 個人番号 is printed only for the person or a member of their household.
    _require(
        not options.individual_number or requester in (Requester.SELF, Requester.HOUSEHOLD_MEMBER),
        "options.individual_number",
        "only_to_the_person",
        "個人番号 is printed only when the person or their household asks (requester must be self "
        "or household_member)",
    )


# --------------------------------------------------------------------------- data


def _wareki(day: date | None) -> str | None:
    return None if day is None else to_wareki(day)


def _person_data(entry: ResidentEntry, options: CopyOptions, *, removed: bool = False) -> dict[str, Any]:
    person: dict[str, Any] = {
        "氏名": entry.name,
        "フリガナ": entry.kana,
        "生年月日": to_wareki(entry.birth_date),
        "性別": "男" if entry.sex == 1 else "女",
        "住民となった日": to_wareki(entry.resident_since),
        "住所を定めた日": to_wareki(entry.address_since),
    }
    if entry.old_family_name:
        person["旧氏"] = entry.old_family_name
    if entry.alias:
        person["通称"] = entry.alias
    if entry.previous_address:
        person["転入前住所"] = entry.previous_address
    if options.relationship:
        person["続柄"] = entry.relationship
    if options.honseki and entry.nationality is None:
        person["本籍"] = entry.honseki or ""
        person["筆頭者"] = entry.hittousha or ""
    if entry.nationality is not None:
        person["国籍・地域"] = entry.nationality
        if entry.residence_status:
            person["在留資格"] = entry.residence_status
        if entry.period_of_stay_end:
            person["在留期間の満了の日"] = to_wareki(entry.period_of_stay_end)
    if options.resident_code:
        person["住民票コード"] = entry.resident_code
    if options.individual_number:
        person["個人番号"] = entry.individual_number or "（未指定）"
    if removed:
        person["消除事由"] = entry.removed_reason or ""
        person["消除日"] = to_wareki(entry.removed_on) if entry.removed_on else ""
    return person


def _issue_day(issued_at: datetime) -> date:
    return issued_at.astimezone(JST).date()


# --------------------------------------------------------------------------- drawing

_WIDTH, _HEIGHT = A4
_LEFT = 20 * mm
_RIGHT = _WIDTH - 20 * mm
_ROW = 6.5 * mm
_SHORT = 16  # characters that fit half the width
_BODY_BOTTOM = 92 * mm  # below: certification, issuer, QR code
_PAGE_BOTTOM = 25 * mm


class _Sheet:
    """One document's canvas: header, label/value rows, footer with the certification."""

    def __init__(self, title: str, issuance: Issuance, data: dict[str, Any]) -> None:
        document_font()
        self.buffer = io.BytesIO()
        self.canvas = Canvas(
            self.buffer, pagesize=A4, pageCompression=1, invariant=True, initialFontName=FONT_NAME
        )
        self.canvas.setTitle(title)
        self.canvas.setCreator("Kiban")
        self.title = title
        self.issuance = issuance
        self.data = data
        self.text = PdfText()
        self.pages = 0
        self.y = 0.0

    def start_page(self) -> None:
        if self.pages:
            self.canvas.showPage()
        self.pages += 1
        c = self.canvas
        c.setFont(FONT_NAME, 20)
        c.drawCentredString(_WIDTH / 2, _HEIGHT - 25 * mm, self.text.add(self.title))
        c.setFont(FONT_NAME, 8)
        c.drawRightString(_RIGHT, _HEIGHT - 14 * mm, self.text.add(f"発行番号　{self.issuance.serial}"))
        c.setLineWidth(0.8)
        c.line(_LEFT, _HEIGHT - 30 * mm, _RIGHT, _HEIGHT - 30 * mm)
        self.y = _HEIGHT - 38 * mm

    def heading(self, text: str) -> None:
        self.canvas.setFont(FONT_NAME, 10.5)
        self.canvas.drawString(_LEFT, self.y, self.text.add(text))
        self.y -= 6 * mm

    def row(self, label: str, value: str, *, size: float = 10.5) -> None:
        c = self.canvas
        c.setFont(FONT_NAME, 9)
        c.drawString(_LEFT + 2 * mm, self.y, self.text.add(label))
        draw_text(c, _LEFT + 42 * mm, self.y, self.text.add(value), size)
        c.setLineWidth(0.3)
        c.line(_LEFT, self.y - 2 * mm, _RIGHT, self.y - 2 * mm)
        self.y -= 7.5 * mm

    @staticmethod
    def person_rows(person: dict[str, Any]) -> list[list[tuple[str, str]]]:
        """Items laid out two to a row when both are short, long ones (addresses) alone."""
        rows: list[list[tuple[str, str]]] = []
        pending: tuple[str, str] | None = None
        for label, value in person.items():
            if label.startswith("_"):  # hashed but not printed as text (e.g. the seal image's hash)
                continue
            item = (label, str(value))
            if label == "氏名" or len(item[1]) > _SHORT:
                if pending:
                    rows.append([pending])
                    pending = None
                rows.append([item])
            elif pending is None:
                pending = item
            else:
                rows.append([pending, item])
                pending = None
        if pending:
            rows.append([pending])
        return rows

    @classmethod
    def person_height(cls, person: dict[str, Any], numbered: bool) -> float:
        return len(cls.person_rows(person)) * _ROW + (6 * mm if numbered else 0) + 3 * mm

    def person(self, number: int | None, person: dict[str, Any]) -> None:
        if number is not None:
            self.heading(f"（{number}）")
        c = self.canvas
        half = (_RIGHT - _LEFT) / 2
        for row in self.person_rows(person):
            for column, (label, value) in enumerate(row):
                x = _LEFT + column * half
                c.setFont(FONT_NAME, 8)
                c.drawString(x + 1 * mm, self.y, self.text.add(label))
                draw_text(c, x + 30 * mm, self.y, self.text.add(value), 13 if label == "氏名" else 10)
            c.setLineWidth(0.3)
            c.line(_LEFT, self.y - 2 * mm, _RIGHT, self.y - 2 * mm)
            self.y -= _ROW
        self.y -= 3 * mm

    def footer(self, sentence: str) -> None:
        c = self.canvas
        y = 62 * mm
        c.setFont(FONT_NAME, 11)
        c.drawString(_LEFT, y + 22 * mm, self.text.add(sentence))
        c.setFont(FONT_NAME, 10.5)
        c.drawString(_LEFT, y + 14 * mm, self.text.add(str(self.data["発行日"])))
        c.setFont(FONT_NAME, 13)
        c.drawRightString(_RIGHT - 22 * mm, y + 5 * mm, self.text.add(str(self.data["発行者"])))
        # 公印 placeholder: the real seal image comes with the organisation certificate (K8).
        c.saveState()
        c.setStrokeColorRGB(0.8, 0.1, 0.1)
        c.setFillColorRGB(0.8, 0.1, 0.1)
        c.setLineWidth(1.2)
        c.rect(_RIGHT - 19 * mm, y, 17 * mm, 17 * mm, stroke=1, fill=0)
        c.setFont(FONT_NAME, 9)
        c.drawCentredString(_RIGHT - 10.5 * mm, y + 7 * mm, self.text.add("公印"))
        c.restoreState()
        size = 32 * mm
        draw_qr(c, self.issuance.qr_payload, _LEFT, 14 * mm, size)
        c.setFont(FONT_NAME, 8)
        text_x = _LEFT + size + 4 * mm
        c.drawString(text_x, 38 * mm, self.text.add(f"発行番号　{self.issuance.serial}"))
        c.drawString(text_x, 32 * mm, self.text.add(f"照合番号　{self.issuance.verification_code}"))
        c.drawString(
            text_x,
            26 * mm,
            self.text.add("この証明書の真正性は、発行番号と照合番号（二次元コード）で確認できます。"),
        )

    def finish(self) -> tuple[bytes, int, tuple[str, ...]]:
        self.canvas.showPage()
        self.canvas.save()
        return self.buffer.getvalue(), self.pages, self.text.missing()


def _issue_and_draw(
    session: Session,
    *,
    document_type: DocumentType,
    title: str,
    municipality_code: str,
    subject_resident_code: str | None,
    issuer: str,
    body: dict[str, Any],
    persons: list[dict[str, Any]],
    sentence: str,
    signers: SignerProvider | None,
    issued_at: datetime | None,
    extra: Any = None,
) -> IssuedPdf:
    when = issued_at or utcnow()
    _require(when.tzinfo is not None, "issued_at", "timezone", "issued_at must be timezone-aware")
    data: dict[str, Any] = {
        "様式": title,
        "市区町村コード": municipality_code,
        **body,
        "世帯員" if len(persons) > 1 else "記載事項": persons,
        "証明文": sentence,
        "発行日": to_wareki(_issue_day(when)),
        "発行者": mayor_line(municipality_code),
    }
    issuance = issue(
        session,
        document_type=document_type.value,
        municipality_code=municipality_code,
        data=data,
        issuer=issuer,
        subject_resident_code=subject_resident_code,
        signers=signers,
        issued_at=when,
    )
    sheet = _Sheet(title, issuance, data)
    numbered = len(persons) > 1

    def new_page() -> None:
        sheet.start_page()
        for label, value in body.items():
            if isinstance(value, str):
                sheet.row(label, value)
        sheet.y -= 3 * mm

    def continue_on_next_page() -> None:
        sheet.canvas.setFont(FONT_NAME, 9)
        sheet.canvas.drawCentredString(_WIDTH / 2, 15 * mm, sheet.text.add("（次葉に続く）"))
        new_page()

    heights = [sheet.person_height(person, numbered) for person in persons]
    new_page()
    for index, person in enumerate(persons):
        # The certification needs the bottom of the last page; earlier pages use it for persons.
        rest_fits = sheet.y - sum(heights[index:]) >= _BODY_BOTTOM
        bottom = _BODY_BOTTOM if rest_fits else _PAGE_BOTTOM
        if sheet.y < _HEIGHT - 60 * mm and sheet.y - heights[index] < bottom:
            continue_on_next_page()
        sheet.person(index + 1 if numbered else None, person)
    if sheet.y < _BODY_BOTTOM:
        continue_on_next_page()
    if extra is not None:
        extra(sheet)
    sheet.footer(sentence)
    pdf, pages, missing = sheet.finish()
    return IssuedPdf(pdf=pdf, issuance=issuance, data=data, missing_glyphs=missing, pages=pages)


# --------------------------------------------------------------------------- layouts


def issue_resident_copy(
    session: Session,
    request: ResidentCopyRequest,
    *,
    signers: SignerProvider | None = None,
    issued_at: datetime | None = None,
) -> IssuedPdf:
    """住民票の写し: 個人票 (one entry) or 世帯連記式 (``household=True``, as many per sheet as fit)."""
    _check_type(request, ResidentCopyRequest, "request")
    _check_common(request.municipality_code, request.issuer)
    entries = _check_entries(request.entries, request.municipality_code)
    _check_type(request.household, bool, "household")
    _check_number_allowed(request.options, request.requester)
    if not request.household:
        _require(len(entries) == 1, "entries", "one_person", "a 個人票 copy is of exactly one person")
    else:
        _require(
            len({e.address for e in entries}) == 1,
            "entries",
            "same_household",
            "every member of a household copy lives at the same address",
        )
    head = entries[0]
    body: dict[str, Any] = {"住所": head.address}
    if request.options.relationship:
        body["世帯主"] = head.household_head_name
    persons = [_person_data(e, request.options) for e in entries]
    return _issue_and_draw(
        session,
        document_type=DocumentType.RESIDENT_COPY,
        title="住民票の写し",
        municipality_code=request.municipality_code,
        subject_resident_code=head.resident_code,
        issuer=request.issuer,
        body=body,
        persons=persons,
        sentence="この写しは、住民票の原本と相違ないことを証明する。",
        signers=signers,
        issued_at=issued_at,
    )


def issue_entry_certificate(
    session: Session,
    request: EntryCertificateRequest,
    *,
    signers: SignerProvider | None = None,
    issued_at: datetime | None = None,
) -> IssuedPdf:
    """住民票記載事項証明書: only the requested items of each entry."""
    _check_type(request, EntryCertificateRequest, "request")
    _check_common(request.municipality_code, request.issuer)
    entries = _check_entries(request.entries, request.municipality_code)
    _require(
        isinstance(request.items, frozenset | set) and len(request.items) > 0,
        "items",
        "not_empty",
        "choose at least one item",
    )
    unknown = sorted(set(request.items) - set(ENTRY_ITEMS))
    _require(
        not unknown, "items", "known_item", f"unknown items {unknown}; choose from {sorted(ENTRY_ITEMS)}"
    )
    _require(request.requester in set(Requester), "requester", "one_of", "a Requester")
    persons = []
    for entry in entries:
        full = _person_data(entry, CopyOptions(honseki=True, relationship=True, resident_code=True))
        full["世帯主"] = entry.household_head_name
        full["住所"] = entry.address
        person = {}
        for key, label in ENTRY_ITEMS.items():  # fixed order, whatever the request's order
            if key in request.items:
                value = full.get(label) if key != "name" else full["氏名"]
                person[label] = value if value is not None else ""
        persons.append(person)
    return _issue_and_draw(
        session,
        document_type=DocumentType.ENTRY_CERTIFICATE,
        title="住民票記載事項証明書",
        municipality_code=request.municipality_code,
        subject_resident_code=entries[0].resident_code,
        issuer=request.issuer,
        body={},
        persons=persons,
        sentence="上記の事項は、住民票に記載されている事項と相違ないことを証明する。",
        signers=signers,
        issued_at=issued_at,
    )


def issue_removed_record_copy(
    session: Session,
    request: RemovedRecordCopyRequest,
    *,
    signers: SignerProvider | None = None,
    issued_at: datetime | None = None,
) -> IssuedPdf:
    """除票の写し (個人票): the closed record with its 消除事由 and date."""
    _check_type(request, RemovedRecordCopyRequest, "request")
    _check_common(request.municipality_code, request.issuer)
    entry = _check_entry(request.entry, request.municipality_code, "entry")
    _check_number_allowed(request.options, request.requester)
    _require(
        entry.removed_on is not None, "entry.removed_on", "removed", "the record is not removed (no 除票)"
    )
    return _issue_and_draw(
        session,
        document_type=DocumentType.REMOVED_RECORD_COPY,
        title="除票の写し",
        municipality_code=request.municipality_code,
        subject_resident_code=entry.resident_code,
        issuer=request.issuer,
        body={"住所": entry.address},
        persons=[_person_data(entry, request.options, removed=True)],
        sentence="この写しは、除票の原本と相違ないことを証明する。",
        signers=signers,
        issued_at=issued_at,
    )


def issue_move_out_certificate(
    session: Session,
    request: MoveOutCertificateRequest,
    *,
    signers: SignerProvider | None = None,
    issued_at: datetime | None = None,
) -> IssuedPdf:
    """転出証明書: who moves, from where, to where and when (住基令23条)."""
    _check_type(request, MoveOutCertificateRequest, "request")
    _check_common(request.municipality_code, request.issuer)
    entries = _check_entries(request.entries, request.municipality_code)
    _require(
        isinstance(request.destination_address, str) and request.destination_address.strip() != "",
        "destination_address",
        "required",
        "転出先 is required",
    )
    _check_type(request.planned_move_on, date, "planned_move_on")
    _check_type(request.notified_on, date, "notified_on")
    options = CopyOptions(honseki=True, relationship=True, resident_code=True)
    body = {
        "住所": entries[0].address,
        "世帯主": entries[0].household_head_name,
        "転出先": request.destination_address,
        "転出予定日": to_wareki(request.planned_move_on),
        "届出日": to_wareki(request.notified_on),
    }
    return _issue_and_draw(
        session,
        document_type=DocumentType.MOVE_OUT_CERTIFICATE,
        title="転出証明書",
        municipality_code=request.municipality_code,
        subject_resident_code=entries[0].resident_code,
        issuer=request.issuer,
        body=body,
        persons=[_person_data(e, options) for e in entries],
        sentence="上記の者は、転出の届出をしたことを証明する。",
        signers=signers,
        issued_at=issued_at,
    )


def check_seal_image(image: object) -> tuple[int, int]:
    """(width, height) of a seal image; refuses non-bytes, oversize, non-PNG/JPEG and odd sizes."""
    _require(isinstance(image, bytes | bytearray), "seal_image", "type", "image bytes are required")
    assert isinstance(image, bytes | bytearray)
    _require(len(image) > 0, "seal_image", "not_empty", "the seal image is empty")
    _require(
        len(image) <= MAX_SEAL_IMAGE_BYTES,
        "seal_image",
        "max_bytes",
        f"the seal image has {len(image)} bytes, at most {MAX_SEAL_IMAGE_BYTES} are allowed",
    )
    try:
        with Image.open(io.BytesIO(image)) as picture:
            kind = picture.format
            width, height = picture.size
            picture.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DocumentError("seal_image", "image_format", "not a readable PNG or JPEG image") from exc
    _require(kind in ("PNG", "JPEG"), "seal_image", "image_format", f"PNG or JPEG required, got {kind}")
    _require(
        MIN_SEAL_PIXELS <= width <= MAX_SEAL_PIXELS and MIN_SEAL_PIXELS <= height <= MAX_SEAL_PIXELS,
        "seal_image",
        "pixel_size",
        f"{width}×{height} pixels; each side must be {MIN_SEAL_PIXELS}–{MAX_SEAL_PIXELS}",
    )
    return width, height


def issue_seal_certificate(
    session: Session,
    request: SealCertificateRequest,
    *,
    signers: SignerProvider | None = None,
    issued_at: datetime | None = None,
) -> IssuedPdf:
    """印鑑登録証明書: the registered seal's image in a box, with name, birth date and address."""
    _check_type(request, SealCertificateRequest, "request")
    _check_common(request.municipality_code, request.issuer)
    entry = _check_entry(request.entry, request.municipality_code, "entry")
    _require(
        isinstance(request.registration_number, str) and request.registration_number.strip() != "",
        "registration_number",
        "required",
        "印鑑登録番号 is required",
    )
    width, height = check_seal_image(request.seal_image)
    image = bytes(request.seal_image)
    person = {
        "氏名": entry.name,
        "フリガナ": entry.kana,
        "生年月日": to_wareki(entry.birth_date),
        "性別": "男" if entry.sex == 1 else "女",
        "住所": entry.address,
        "印鑑登録番号": request.registration_number,
        # The image is part of what is certified: its hash is in the hashed data.
        "_印影SHA-256": hashlib.sha256(image).hexdigest(),
    }
    if entry.alias:
        person["通称"] = entry.alias

    def draw_seal(sheet: _Sheet) -> None:
        box = 40 * mm
        x, y = _LEFT + 42 * mm, sheet.y - box
        sheet.canvas.setFont(FONT_NAME, 9)
        sheet.canvas.drawString(_LEFT + 2 * mm, sheet.y - 5 * mm, sheet.text.add("印影"))
        sheet.canvas.setLineWidth(0.6)
        sheet.canvas.rect(x, y, box, box)
        scale = min((box - 4 * mm) / width, (box - 4 * mm) / height)
        w, h = width * scale, height * scale
        sheet.canvas.drawImage(
            ImageReader(io.BytesIO(image)), x + (box - w) / 2, y + (box - h) / 2, w, h, mask="auto"
        )
        sheet.y = y - 6 * mm

    return _issue_and_draw(
        session,
        document_type=DocumentType.SEAL_CERTIFICATE,
        title="印鑑登録証明書",
        municipality_code=request.municipality_code,
        subject_resident_code=entry.resident_code,
        issuer=request.issuer,
        body={},
        persons=[person],
        sentence="この写しは、登録されている印影と相違ないことを証明する。",
        signers=signers,
        issued_at=issued_at,
        extra=draw_seal,
    )


def _yen(amount: int) -> str:
    return f"{amount:,}円"


def issue_tax_certificate(
    session: Session,
    request: TaxCertificateRequest,
    *,
    signers: SignerProvider | None = None,
    issued_at: datetime | None = None,
) -> IssuedPdf:
    """所得・課税証明書 of one 年度: taxable income of the previous year and the tax levied."""
    _check_type(request, TaxCertificateRequest, "request")
    _check_common(request.municipality_code, request.issuer)
    entry = _check_entry(request.entry, request.municipality_code, "entry")
    for name in ("fiscal_year", "taxable_income", "tax_amount"):
        value = getattr(request, name)
        _require(
            isinstance(value, int) and not isinstance(value, bool), name, "type", "an integer is required"
        )
        _require(value >= 0, name, "non_negative", "must not be negative")
    _require(1990 <= request.fiscal_year <= 2200, "fiscal_year", "range", "a 年度 between 1990 and 2200")
    fiscal = to_wareki(date(request.fiscal_year, 4, 1)).split("年")[0] + "年度"
    income_year = to_wareki(date(request.fiscal_year - 1, 12, 31)).split("年")[0] + "年分"
    person = {
        "氏名": entry.name,
        "フリガナ": entry.kana,
        "生年月日": to_wareki(entry.birth_date),
        "住所": entry.address,
        "課税年度": f"{fiscal}（{income_year}）",
        "課税標準額（所得）": _yen(request.taxable_income),
        "市町村民税・県民税額": _yen(request.tax_amount),
    }
    return _issue_and_draw(
        session,
        document_type=DocumentType.TAX_CERTIFICATE,
        title="所得・課税証明書",
        municipality_code=request.municipality_code,
        subject_resident_code=entry.resident_code,
        issuer=request.issuer,
        body={},
        persons=[person],
        sentence="上記のとおり相違ないことを証明する。",
        signers=signers,
        issued_at=issued_at,
    )
