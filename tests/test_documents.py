"""Document ledger, verification codes, signers, fonts and the QR block (kiban.core.documents)."""

from __future__ import annotations

import io
import os
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pypdf import PdfReader
from reportlab.pdfgen.canvas import Canvas
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kiban.core import documents
from kiban.core.documents import (
    DocumentError,
    FontMissingError,
    HmacSigner,
    KeyDirectorySigners,
    Signer,
    content_hash,
    issue,
    missing_glyphs,
    parse_qr_payload,
    verify_document,
)
from kiban.core.models.documents import IssuedDocument

DATA = {"氏名": "山田　太郎", "生年月日": "昭和54年10月12日", "n": 1}


@pytest.fixture
def signers(tmp_path: Path) -> KeyDirectorySigners:
    return KeyDirectorySigners(tmp_path / "keys")


def _issue(session: Session, signers: documents.SignerProvider, **overrides: object) -> documents.Issuance:
    kwargs: dict = {
        "document_type": "register.resident_copy",
        "municipality_code": "212016",
        "data": DATA,
        "issuer": "clerk1",
        "subject_resident_code": "12345678901",
        "signers": signers,
    }
    kwargs.update(overrides)
    return issue(session, **kwargs)


def test_an_untouched_document_verifies(session: Session, signers: KeyDirectorySigners) -> None:
    issued = _issue(session, signers)
    session.commit()
    result = verify_document(
        session, issued.serial, issued.content_hash, issued.verification_code, signers=signers
    )
    assert result.valid and result.reason == "valid"
    assert result.document_type == "register.resident_copy" and result.municipality_code == "212016"
    # The printed code may be typed back in lower case or without dashes.
    typed = issued.verification_code.replace("-", "").lower().replace("o", "0").replace("i", "1")
    assert verify_document(session, issued.serial, issued.content_hash, typed, signers=signers).valid
    row = session.scalars(select(IssuedDocument)).one()
    assert row.content_hash == content_hash(DATA) and row.subject_resident_code == "12345678901"


def test_changed_hash_forged_code_unknown_serial_all_fail(
    session: Session, signers: KeyDirectorySigners
) -> None:
    issued = _issue(session, signers)
    other = _issue(session, signers, data={**DATA, "氏名": "山田　次郎"})
    session.commit()
    changed = content_hash({**DATA, "氏名": "山田　花子"})
    assert verify_document(
        session, issued.serial, changed, issued.verification_code, signers=signers
    ).reason == ("hash_mismatch")
    forged = "AAAA-" + issued.verification_code[5:]
    assert verify_document(session, issued.serial, issued.content_hash, forged, signers=signers).reason == (
        "bad_code"
    )
    assert verify_document(
        session, issued.serial, issued.content_hash, "!!not base32", signers=signers
    ).reason == ("bad_code")
    # A genuine code of another document does not vouch for this one.
    swapped = verify_document(
        session, issued.serial, issued.content_hash, other.verification_code, signers=signers
    )
    assert swapped.reason == "bad_code"
    unknown = issued.serial[:-4] + "ZZZZ"
    assert verify_document(
        session, unknown, issued.content_hash, issued.verification_code, signers=signers
    ).reason == ("unknown_serial")


def test_another_municipality_key_does_not_verify(session: Session, tmp_path: Path) -> None:
    issued = _issue(session, KeyDirectorySigners(tmp_path / "a"))
    result = verify_document(
        session,
        issued.serial,
        issued.content_hash,
        issued.verification_code,
        signers=KeyDirectorySigners(tmp_path / "b"),
    )
    assert not result.valid and result.reason == "bad_code"


def test_a_plugged_in_signer_is_used_and_recorded(session: Session) -> None:
    class Reversing:
        signer_id = "test:reverse"

        def sign(self, message: bytes) -> bytes:
            return message[::-1][:10]

        def verify(self, message: bytes, signature: bytes) -> bool:
            return self.sign(message) == signature

    signer = Reversing()
    assert isinstance(signer, Signer)
    issued = _issue(session, lambda code: signer)
    assert session.scalars(select(IssuedDocument.signer_id)).one() == "test:reverse"
    ok = verify_document(
        session, issued.serial, issued.content_hash, issued.verification_code, signers=lambda c: signer
    )
    assert ok.valid


def test_keys_are_per_municipality_private_and_stable(tmp_path: Path) -> None:
    provider = KeyDirectorySigners(tmp_path / "keys")
    gifu, chiyoda = provider("212016"), provider("131016")
    assert gifu.sign(b"m") != chiyoda.sign(b"m")
    key = tmp_path / "keys" / "document-hmac-212016.key"
    assert oct(os.stat(key).st_mode & 0o777) == "0o600"
    assert KeyDirectorySigners(tmp_path / "keys")("212016").sign(b"m") == gifu.sign(b"m")
    with pytest.raises(DocumentError) as caught:
        HmacSigner("212016", b"short")
    assert caught.value.rule == "min_length"


def test_serials_are_unique_random_and_carry_municipality_and_year(
    session: Session, signers: KeyDirectorySigners
) -> None:
    when = datetime(2025, 4, 1, 1, 0, tzinfo=UTC)
    serials = [documents.new_serial("212016", when) for _ in range(2000)]
    assert len(set(serials)) == 2000
    assert all(re.fullmatch(r"212016-2025-[0-9A-Z]{16}", s) for s in serials)
    # Not sequential: consecutive serials share no long common prefix after the year.
    tails = sorted(s[12:] for s in serials)
    assert sum(a[:4] == b[:4] for a, b in zip(tails, tails[1:], strict=False)) < 20


@pytest.mark.parametrize(
    ("overrides", "field", "rule"),
    [
        ({"municipality_code": "21201"}, "municipality_code", "six_digits"),
        ({"municipality_code": "２１２０１６"}, "municipality_code", "six_digits"),
        ({"document_type": ""}, "document_type", "length"),
        ({"issuer": " "}, "issuer", "required"),
        ({"subject_resident_code": "123"}, "subject_resident_code", "eleven_digits"),
        ({"issued_at": datetime(2025, 4, 1)}, "issued_at", "timezone"),
        ({"data": {"x": object()}}, "data", "canonical_json"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_written(
    session: Session, signers: KeyDirectorySigners, overrides: dict, field: str, rule: str
) -> None:
    with pytest.raises(DocumentError) as caught:
        _issue(session, signers, **overrides)
    assert (caught.value.field, caught.value.rule) == (field, rule)
    assert session.scalar(select(func.count()).select_from(IssuedDocument)) == 0


@given(
    st.dictionaries(
        st.text(max_size=5), st.one_of(st.integers(-(2**40), 2**40), st.text(max_size=8)), max_size=6
    )
)
def test_hash_ignores_key_order_and_sees_every_change(data: dict) -> None:
    reordered = dict(reversed(list(data.items())))
    assert content_hash(data) == content_hash(reordered)
    changed = {**data, "\u0000extra": 1}
    assert content_hash(changed) != content_hash(data)


def test_qr_payload_round_trip_and_rejects_other_codes(
    session: Session, signers: KeyDirectorySigners
) -> None:
    issued = _issue(session, signers)
    assert parse_qr_payload(issued.qr_payload) == (
        issued.serial,
        issued.content_hash,
        issued.verification_code,
    )
    with pytest.raises(DocumentError) as caught:
        parse_qr_payload("https://example.invalid/")
    assert caught.value.rule == "format"


def test_missing_glyphs_are_reported_and_variation_selectors_are_not() -> None:
    assert missing_glyphs("山田　太郎") == ()
    assert missing_glyphs("葛\U000e0100城") == ()  # IVS: base glyph drawn, selector dropped
    assert missing_glyphs("\ue000田") == ("\ue000",)  # private use: in no font
    assert documents.drawable("葛\U000e0100城") == "葛城"


def test_without_the_fallback_font_characters_beyond_ipaex_are_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(documents, "_fallback_loaded", True)
    monkeypatch.setattr(documents, "_fallback", None)
    assert missing_glyphs("𠮷野　𠮷野") == ("𠮷",)  # U+20BB7 is not in IPAex
    assert documents.font_runs("𠮷野") == [(documents.FONT_NAME, "𠮷野")]


@pytest.mark.skipif(documents.fallback_font() is None, reason="needs fonts-ipamj-mincho")
def test_the_fallback_font_draws_what_ipaex_lacks() -> None:
    assert missing_glyphs("𠮷野") == ()
    assert documents.font_runs("𠮷野\U000e0100家") == [
        (documents.FALLBACK_FONT_NAME, "𠮷"),
        (documents.FONT_NAME, "野家"),
    ]
    buffer = io.BytesIO()
    canvas = Canvas(buffer, initialFontName=documents.FONT_NAME)
    documents.draw_text(canvas, 300, 700, "𠮷野　太郎", 12, align="right")
    canvas.save()
    reader = PdfReader(io.BytesIO(buffer.getvalue()))
    assert {name.split("+")[1] for name in embedded_truetype_fonts(reader)} == {"IPAexMincho", "IPAmjMincho"}


def test_font_is_embedded_as_truetype_subset() -> None:
    documents.document_font()
    buffer = io.BytesIO()
    canvas = Canvas(buffer)
    canvas.setFont(documents.FONT_NAME, 12)
    canvas.drawString(50, 700, "令和7年4月1日　住民票")
    canvas.save()
    reader = PdfReader(io.BytesIO(buffer.getvalue()))
    assert embedded_truetype_fonts(reader) and all(
        name.endswith("+IPAexMincho") for name in embedded_truetype_fonts(reader)
    )
    assert "令和7年4月1日" in reader.pages[0].extract_text()


def embedded_truetype_fonts(reader: PdfReader) -> set[str]:
    """BaseFont names of fonts whose descriptor carries an embedded TrueType program (FontFile2)."""
    names = set()
    for page in reader.pages:
        fonts = page["/Resources"].get("/Font", {})
        for key in fonts:
            font = fonts[key].get_object()
            candidates = [font] + [d.get_object() for d in font.get("/DescendantFonts", [])]
            for candidate in candidates:
                descriptor = candidate.get("/FontDescriptor")
                if descriptor is not None and "/FontFile2" in descriptor.get_object():
                    names.add(str(candidate["/BaseFont"]))
    return names


def test_missing_font_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KIBAN_DOCUMENT_FONT", str(tmp_path / "none.ttf"))
    with pytest.raises(FontMissingError, match="KIBAN_DOCUMENT_FONT"):
        documents.font_path()
    monkeypatch.delenv("KIBAN_DOCUMENT_FONT")
    monkeypatch.setattr(documents, "FONT_CANDIDATES", (tmp_path / "x.ttf",))
    with pytest.raises(FontMissingError, match="fonts-ipaexfont-mincho"):
        documents.font_path()
