"""Register documents as PDF: read back, options, 個人番号 rule, verification, bad input."""

from __future__ import annotations

import dataclasses
import io
import random
import re
import shutil
import subprocess
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw
from pypdf import PdfReader
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from kiban.core.documents import (
    DocumentError,
    KeyDirectorySigners,
    content_hash,
    fallback_font,
    parse_qr_payload,
    verify_document,
)
from kiban.core.identifiers import ResidentCodeGenerator
from kiban.core.models.documents import IssuedDocument
from kiban.numbering import service as numbering
from kiban.register import documents as docs
from kiban.register.loader import load_population
from kiban.register.models import Household, Resident
from kiban.register.population import generate_population

ISSUED_AT = datetime(2025, 4, 1, 0, 30, tzinfo=UTC)  # 令和7年4月1日 in JST
CODE = "212016"


@pytest.fixture
def signers(tmp_path: Path) -> KeyDirectorySigners:
    return KeyDirectorySigners(tmp_path / "keys")


@pytest.fixture
def household(engine: Engine, session_maker: sessionmaker[Session]) -> list[docs.ResidentEntry]:
    """Entries of the largest household of a small synthetic 岐阜市, head first."""
    households = list(generate_population([CODE], 40, seed=5, as_of=date(2025, 3, 1)))
    with session_maker.begin() as s:
        codes = numbering.issue_resident_codes(s, 40, ResidentCodeGenerator(random.Random(5)))
    load_population(engine, households, iter(codes))
    with session_maker() as s:
        rows = s.scalars(select(Resident)).all()
        by_household: dict = {}
        for row in rows:
            by_household.setdefault(row.household_id, []).append(row)
        members = max(by_household.values(), key=len)
        head_id = s.get(Household, members[0].household_id).head_resident_id  # type: ignore[union-attr]
        head = next(m for m in members if m.id == head_id)
        members.sort(key=lambda m: (m.id != head_id, m.birth_date))
        head_name = f"{head.family_name}　{head.given_name}"
        entries = [docs.entry_from_resident(m, head_name) for m in members]
    assert len(entries) >= 3
    return [dataclasses.replace(e, individual_number=f"12345678901{i}"[:12]) for i, e in enumerate(entries)]


def embedded_truetype_fonts(reader: PdfReader) -> set[str]:
    """BaseFont names of the fonts embedded as TrueType programs (FontFile2) on any page."""
    names = set()
    for page in reader.pages:
        fonts = page["/Resources"].get("/Font", {})
        for key in fonts:
            font = fonts[key].get_object()
            descriptor = font.get("/FontDescriptor")
            if descriptor is not None and "/FontFile2" in descriptor.get_object():
                names.add(str(font["/BaseFont"]))
    return names


def text_of(pdf: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)


def seal_png(size: int = 240) -> bytes:
    picture = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    ImageDraw.Draw(picture).ellipse((8, 8, size - 8, size - 8), outline=(200, 0, 0, 255), width=10)
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return buffer.getvalue()


def test_household_copy_reads_back_with_names_address_wareki_and_serial(
    session: Session, household: list[docs.ResidentEntry], signers: KeyDirectorySigners
) -> None:
    request = docs.ResidentCopyRequest(
        CODE, household, "clerk1", household=True, options=docs.CopyOptions(relationship=True)
    )
    issued = docs.issue_resident_copy(session, request, signers=signers, issued_at=ISSUED_AT)
    text = text_of(issued.pdf)
    for entry in household:
        assert entry.name in text
        assert docs.to_wareki(entry.birth_date) in text
        assert entry.relationship in text
    assert household[0].address in text
    assert "令和7年4月1日" in text  # issue date, JST
    assert issued.serial in text and issued.issuance.verification_code in text
    assert "この写しは、住民票の原本と相違ないことを証明する。" in text
    assert "岐阜市長　山田　太郎" in text
    # Items not requested are not printed.
    assert "住民票コード" not in text and "個人番号" not in text and "本籍" not in text
    assert household[0].resident_code not in text
    assert embedded_truetype_fonts(PdfReader(io.BytesIO(issued.pdf))) == {"/AAAAAA+IPAexMincho"}
    assert issued.missing_glyphs == ()


def test_one_person_copy_with_every_option_for_the_person(
    session: Session, household: list[docs.ResidentEntry], signers: KeyDirectorySigners
) -> None:
    entry = household[0]
    options = docs.CopyOptions(honseki=True, relationship=True, resident_code=True, individual_number=True)
    issued = docs.issue_resident_copy(
        session,
        docs.ResidentCopyRequest(CODE, [entry], "clerk1", options=options),
        signers=signers,
        issued_at=ISSUED_AT,
    )
    text = text_of(issued.pdf)
    assert entry.resident_code in text and entry.individual_number in text  # type: ignore[operator]
    assert entry.honseki in text  # type: ignore[operator]
    assert household[1].name not in text  # 個人票: only the person
    assert issued.pages == 1


@pytest.mark.parametrize("requester", [docs.Requester.AGENT, docs.Requester.THIRD_PARTY])
def test_individual_number_refused_unless_the_person_asks(
    session: Session,
    household: list[docs.ResidentEntry],
    signers: KeyDirectorySigners,
    requester: docs.Requester,
) -> None:
    request = docs.ResidentCopyRequest(
        CODE, household[:1], "clerk1", options=docs.CopyOptions(individual_number=True), requester=requester
    )
    with pytest.raises(DocumentError) as caught:
        docs.issue_resident_copy(session, request, signers=signers)
    assert (caught.value.field, caught.value.rule) == ("options.individual_number", "only_to_the_person")
    assert session.scalar(select(func.count()).select_from(IssuedDocument)) == 0
    # A third party gets the copy without the number.
    plain = dataclasses.replace(request, options=docs.CopyOptions())
    issued = docs.issue_resident_copy(session, plain, signers=signers)
    assert household[0].individual_number not in text_of(issued.pdf)  # type: ignore[operator]


def test_verification_of_an_issued_pdf(
    session: Session, household: list[docs.ResidentEntry], signers: KeyDirectorySigners
) -> None:
    issued = docs.issue_resident_copy(
        session, docs.ResidentCopyRequest(CODE, household[:1], "clerk1"), signers=signers
    )
    session.commit()
    # The hash is reproducible from the document's data; the QR and text carry serial and code.
    assert content_hash(issued.data) == issued.issuance.content_hash
    code = issued.issuance.verification_code
    assert verify_document(session, issued.serial, issued.issuance.content_hash, code, signers=signers).valid
    altered = {**issued.data, "記載事項": [{**issued.data["記載事項"][0], "氏名": "偽造　太郎"}]}
    assert verify_document(session, issued.serial, content_hash(altered), code, signers=signers).reason == (
        "hash_mismatch"
    )
    serial_in_pdf = re.search(r"発行番号\s*(\d{6}-\d{4}-[0-9A-Z]{16})", text_of(issued.pdf))
    assert serial_in_pdf is not None and serial_in_pdf.group(1) == issued.serial


def test_entry_certificate_prints_only_chosen_items(
    session: Session, household: list[docs.ResidentEntry], signers: KeyDirectorySigners
) -> None:
    entry = household[0]
    request = docs.EntryCertificateRequest(
        CODE, [entry], frozenset({"name", "birth_date", "address"}), "clerk1"
    )
    text = text_of(docs.issue_entry_certificate(session, request, signers=signers, issued_at=ISSUED_AT).pdf)
    assert entry.name in text and entry.address in text and docs.to_wareki(entry.birth_date) in text
    assert "住民票記載事項証明書" in text
    assert entry.kana not in text and "続柄" not in text
    with pytest.raises(DocumentError) as caught:
        docs.issue_entry_certificate(
            session, dataclasses.replace(request, items=frozenset({"individual_number"})), signers=signers
        )
    assert (caught.value.field, caught.value.rule) == ("items", "known_item")


def test_removed_record_copy_needs_a_removed_record(
    session: Session, household: list[docs.ResidentEntry], signers: KeyDirectorySigners
) -> None:
    active = household[1]
    with pytest.raises(DocumentError) as caught:
        docs.issue_removed_record_copy(
            session, docs.RemovedRecordCopyRequest(CODE, active, "clerk1"), signers=signers
        )
    assert caught.value.rule == "removed"
    removed = dataclasses.replace(active, removed_reason="死亡", removed_on=date(2019, 5, 1))
    text = text_of(
        docs.issue_removed_record_copy(
            session, docs.RemovedRecordCopyRequest(CODE, removed, "clerk1"), signers=signers
        ).pdf
    )
    assert "除票の写し" in text and "死亡" in text and "令和元年5月1日" in text and removed.name in text


def test_move_out_certificate(
    session: Session, household: list[docs.ResidentEntry], signers: KeyDirectorySigners
) -> None:
    request = docs.MoveOutCertificateRequest(
        CODE, household[:2], "東京都千代田区霞が関1丁目1番1号", date(2025, 4, 20), date(2025, 4, 1), "clerk1"
    )
    text = text_of(docs.issue_move_out_certificate(session, request, signers=signers).pdf)
    assert "転出証明書" in text and "東京都千代田区霞が関1丁目1番1号" in text and "令和7年4月20日" in text
    assert household[0].resident_code in text and household[1].name in text


def test_seal_certificate_draws_the_image(
    session: Session, household: list[docs.ResidentEntry], signers: KeyDirectorySigners
) -> None:
    request = docs.SealCertificateRequest(CODE, household[0], seal_png(), "A-000123", "clerk1")
    issued = docs.issue_seal_certificate(session, request, signers=signers)
    page = PdfReader(io.BytesIO(issued.pdf)).pages[0]
    assert len(page.images) == 1
    text = page.extract_text()
    assert "印鑑登録証明書" in text and household[0].name in text and "A-000123" in text
    # A different seal image is a different document.
    other = docs.issue_seal_certificate(
        session, dataclasses.replace(request, seal_image=seal_png(200)), signers=signers
    )
    assert other.issuance.content_hash != issued.issuance.content_hash


@pytest.mark.parametrize(
    ("image", "rule"),
    [
        (b"", "not_empty"),
        (b"not an image at all", "image_format"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "image_format"),
        (b"x" * (docs.MAX_SEAL_IMAGE_BYTES + 1), "max_bytes"),
        ("a string", "type"),
    ],
)
def test_bad_seal_images_are_refused(
    session: Session,
    household: list[docs.ResidentEntry],
    signers: KeyDirectorySigners,
    image: object,
    rule: str,
) -> None:
    request = docs.SealCertificateRequest(CODE, household[0], image, "1", "clerk1")  # type: ignore[arg-type]
    with pytest.raises(DocumentError) as caught:
        docs.issue_seal_certificate(session, request, signers=signers)
    assert (caught.value.field, caught.value.rule) == ("seal_image", rule)
    assert session.scalar(select(func.count()).select_from(IssuedDocument)) == 0


def test_oversized_seal_pixels_are_refused(household: list[docs.ResidentEntry]) -> None:
    buffer = io.BytesIO()
    Image.new("1", (docs.MAX_SEAL_PIXELS + 1, 20)).save(buffer, "PNG")
    with pytest.raises(DocumentError) as caught:
        docs.check_seal_image(buffer.getvalue())
    assert caught.value.rule == "pixel_size"


def test_tax_certificate(
    session: Session, household: list[docs.ResidentEntry], signers: KeyDirectorySigners
) -> None:
    request = docs.TaxCertificateRequest(CODE, household[0], 2025, 3_456_000, 245_600, "kiosk:test")
    text = text_of(docs.issue_tax_certificate(session, request, signers=signers).pdf)
    assert "令和7年度（令和6年分）" in text and "3,456,000円" in text and "245,600円" in text
    with pytest.raises(DocumentError) as caught:
        docs.issue_tax_certificate(session, dataclasses.replace(request, tax_amount=-1), signers=signers)
    assert (caught.value.field, caught.value.rule) == ("tax_amount", "non_negative")


@pytest.mark.parametrize(
    ("change", "field", "rule"),
    [
        (lambda r, h: dataclasses.replace(r, entries=[]), "entries", "not_empty"),
        (lambda r, h: dataclasses.replace(r, entries=[h[0], h[0]], household=True), "entries", "unique"),
        (lambda r, h: dataclasses.replace(r, entries=h[:2]), "entries", "one_person"),
        (lambda r, h: dataclasses.replace(r, entries=["not an entry"]), "entries[0]", "type"),
        (
            lambda r, h: dataclasses.replace(r, municipality_code="131016"),
            "entries[0].municipality_code",
            "same_municipality",
        ),
        (lambda r, h: dataclasses.replace(r, municipality_code="abc"), "municipality_code", "six_digits"),
        (lambda r, h: dataclasses.replace(r, issuer=""), "issuer", "required"),
        (lambda r, h: dataclasses.replace(r, household="yes"), "household", "type"),
        (
            lambda r, h: dataclasses.replace(r, entries=[dataclasses.replace(h[0], birth_date="1990-01-01")]),
            "entries[0].birth_date",
            "type",
        ),
        (
            lambda r, h: dataclasses.replace(r, entries=[dataclasses.replace(h[0], family_name="")]),
            "entries[0].family_name",
            "required",
        ),
        (
            lambda r, h: dataclasses.replace(
                r, entries=[h[0], dataclasses.replace(h[1], address="別の住所")], household=True
            ),
            "entries",
            "same_household",
        ),
        (lambda r, h: dataclasses.replace(r, options=docs.CopyOptions(honseki=1)), "options.honseki", "type"),
    ],
)
def test_bad_copy_requests_name_field_and_rule(
    session: Session,
    household: list[docs.ResidentEntry],
    signers: KeyDirectorySigners,
    change,
    field: str,
    rule: str,
) -> None:
    request = change(docs.ResidentCopyRequest(CODE, household[:1], "clerk1"), household)
    with pytest.raises(DocumentError) as caught:
        docs.issue_resident_copy(session, request, signers=signers)
    assert (caught.value.field, caught.value.rule) == (field, rule)
    assert session.scalar(select(func.count()).select_from(IssuedDocument)) == 0


def test_names_are_printed_as_stored_and_unprintable_characters_reported(
    session: Session, household: list[docs.ResidentEntry], signers: KeyDirectorySigners
) -> None:
    entry = dataclasses.replace(household[0], family_name="\ufa10田", given_name="𠮷\U000e0100男")
    issued = docs.issue_resident_copy(
        session, docs.ResidentCopyRequest(CODE, [entry], "clerk1"), signers=signers
    )
    # 𠮷 is drawn from IPAmj明朝 when installed, else reported as unprintable.
    assert issued.missing_glyphs == (() if fallback_font() is not None else ("𠮷",))
    assert issued.data["記載事項"][0]["氏名"] == "\ufa10田　𠮷\U000e0100男"  # hashed as stored
    assert "\ufa10田" in text_of(issued.pdf)  # compatibility ideograph not folded to 塚


@pytest.mark.parametrize(
    ("code", "line"),
    [
        ("212016", "岐阜市長　山田　太郎"),
        ("215015", "坂祝町長　木曽　花子"),
        ("131041", "新宿区長　戸山　涼子"),
    ],
)
def test_mayor_lines(code: str, line: str) -> None:
    assert docs.mayor_line(code) == line
    assert docs.mayor_line("011011").startswith("札幌市長　")  # a ward issues in the city's name


@pytest.mark.skipif(
    not (shutil.which("pdftoppm") and shutil.which("zbarimg")), reason="needs poppler-utils and zbar-tools"
)
def test_the_printed_qr_code_scans_and_verifies(
    session: Session, household: list[docs.ResidentEntry], signers: KeyDirectorySigners, tmp_path: Path
) -> None:
    issued = docs.issue_resident_copy(
        session, docs.ResidentCopyRequest(CODE, household[:1], "c"), signers=signers
    )
    session.commit()
    (tmp_path / "d.pdf").write_bytes(issued.pdf)
    subprocess.run(
        ["pdftoppm", "-r", "150", "-png", str(tmp_path / "d.pdf"), str(tmp_path / "p")], check=True
    )
    png = sorted(tmp_path.glob("p*.png"))[-1]
    scanned = subprocess.run(["zbarimg", "-q", "--raw", str(png)], capture_output=True, text=True, check=True)
    serial, digest, code = parse_qr_payload(scanned.stdout.strip())
    assert (serial, digest) == (issued.serial, issued.issuance.content_hash)
    assert verify_document(session, serial, digest, code, signers=signers).valid


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    honseki=st.booleans(),
    relationship=st.booleans(),
    resident_code=st.booleans(),
    individual_number=st.booleans(),
    requester=st.sampled_from(list(docs.Requester)),
)
def test_optional_items_appear_exactly_when_requested_and_allowed(
    session: Session,
    household: list[docs.ResidentEntry],
    signers: KeyDirectorySigners,
    honseki: bool,
    relationship: bool,
    resident_code: bool,
    individual_number: bool,
    requester: docs.Requester,
) -> None:
    entry = household[1]
    options = docs.CopyOptions(honseki, relationship, resident_code, individual_number)
    request = docs.ResidentCopyRequest(CODE, [entry], "c", options=options, requester=requester)
    allowed = not individual_number or requester in (docs.Requester.SELF, docs.Requester.HOUSEHOLD_MEMBER)
    before = session.scalar(select(func.count()).select_from(IssuedDocument))
    if not allowed:
        with pytest.raises(DocumentError):
            docs.issue_resident_copy(session, request, signers=signers)
        assert session.scalar(select(func.count()).select_from(IssuedDocument)) == before
        return
    text = text_of(docs.issue_resident_copy(session, request, signers=signers).pdf)
    assert (entry.resident_code in text) == resident_code
    assert (str(entry.individual_number) in text) == individual_number
    assert ("本籍" in text and str(entry.honseki) in text) == honseki
    assert ("続柄" in text and entry.relationship in text) == relationship
