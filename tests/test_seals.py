"""Seal registration (印鑑登録): the 要領's rules, image checks, 印鑑登録証 numbers, history, audit."""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from kiban.core import audit
from kiban.core.identifiers import ResidentCodeGenerator
from kiban.register.models import Household, Resident, kana_search_key, name_search_key
from kiban.register.seals import (
    SealError,
    SealImagePolicy,
    SealRegistration,
    abolish_for_resident,
    abolish_seal,
    active_seal,
    find_by_card_number,
    format_card_number,
    lost_card,
    normalise_card_number,
    register_seal,
    seal_history,
    validate_seal_image,
)
from kiban.register.seals import service as seals

TOKYO = "131016"  # 千代田区
SHINJUKU = "131041"  # 新宿区
TODAY = seals.today_jst()


@dataclass(frozen=True)
class Clerk:
    username: str
    role: str = "clerk"
    municipality_code: str | None = TOKYO


CLERK = Clerk("clerk-chiyoda")
OTHER_CLERK = Clerk("clerk-shinjuku", municipality_code=SHINJUKU)

_codes = ResidentCodeGenerator(random.Random(20261125))


def add_resident(
    session: Session,
    birth_date: date,
    *,
    municipality: str = TOKYO,
    status: str = "active",
    since: date | None = None,
) -> str:
    """One person alone in a household; returns the 住民票コード."""
    household = Household(
        municipality_code=municipality,
        prefecture="東京都",
        municipality="千代田区",
        town="丸の内一丁目",
        banchi="1",
    )
    session.add(household)
    session.flush()
    code = _codes.generate()
    session.add(
        Resident(
            municipality_code=municipality,
            household_id=household.id,
            resident_code=code,
            family_name="印鑑",
            given_name="花子",
            family_name_kana="インカン",
            given_name_kana="ハナコ",
            name_search_key=name_search_key("印鑑", "花子"),
            kana_search_key=kana_search_key("インカン", "ハナコ"),
            birth_date=birth_date,
            sex=2,
            relationship="世帯主",
            prefecture="東京都",
            municipality="千代田区",
            town="丸の内一丁目",
            banchi="1",
            address_since=since or birth_date,
            resident_since=since or birth_date,
            status=status,
            removed_reason="死亡" if status == "removed" else None,
            removed_on=TODAY if status == "removed" else None,
        )
    )
    session.flush()
    return code


def seal_png(size: tuple[int, int] = (240, 240), *, mode: str = "RGB", **save: Any) -> bytes:
    img = Image.new(mode, size, "white")
    draw = ImageDraw.Draw(img)
    draw.ellipse((8, 8, size[0] - 8, size[1] - 8), outline="red", width=10)
    draw.line((size[0] // 2, 20, size[0] // 2, size[1] - 20), fill="red", width=12)
    out = io.BytesIO()
    img.save(out, format="PNG", **save)
    return out.getvalue()


def seal_jpeg(size: tuple[int, int] = (240, 240), **save: Any) -> bytes:
    img = Image.open(io.BytesIO(seal_png(size))).convert("RGB")
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90, **save)
    return out.getvalue()


def png_chunks(data: bytes) -> list[bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append(data[pos + 4 : pos + 8])
        pos += 12 + length
    return chunks


def png_bomb_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width``×``height`` with a few bytes of data: a decompression bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def snapshot(factory: sessionmaker[Session]) -> dict[str, list[tuple[Any, ...]]]:
    with factory() as s:
        return {
            table: sorted(tuple(map(str, row)) for row in s.execute(text(f"SELECT * FROM {table}")))
            for table in ("seal_registrations", "audit_log", "audit_head", "residents")
        }


def refused(
    factory: sessionmaker[Session], call: Callable[[Session], object], field: str, rule: str
) -> SealError:
    """``call`` raises SealError(field, rule), and nothing it left in the session would be written."""
    before = snapshot(factory)
    with factory() as s:
        with pytest.raises(SealError) as info:
            call(s)
        s.commit()  # anything the refused call added or changed would be written now
    assert (info.value.field, info.value.rule) == (field, rule), info.value
    assert info.value.message and "rule" not in info.value.message
    assert snapshot(factory) == before
    return info.value


@pytest.fixture
def person(session_maker: sessionmaker[Session]) -> str:
    with session_maker.begin() as s:
        return add_resident(s, date(1980, 5, 5))


def register(
    factory: sessionmaker[Session],
    code: str,
    *,
    actor: Clerk = CLERK,
    image: bytes | None = None,
    content_type: str = "image/png",
    notified_on: date = TODAY,
) -> SealRegistration:
    with factory.begin() as s:
        return register_seal(s, actor, code, image or seal_png(), content_type, notified_on)


# --- the registrant -----------------------------------------------------------------------------


def test_a_png_seal_is_registered_with_a_card_number_and_audited(
    session_maker: sessionmaker[Session], person: str
) -> None:
    registration = register(session_maker, person)
    assert registration.is_active and registration.source_format == "PNG"
    assert normalise_card_number(format_card_number(registration.card_number)) == registration.card_number
    with session_maker() as s:
        entries = audit.history(s, person)
        assert [(e.action, e.purpose) for e in entries] == [("create", "印鑑登録")]
        assert entries[0].detail["registrations"] == [seals.audit_id(registration)]
        assert entries[0].organisation == TOKYO and entries[0].actor == CLERK.username
        assert audit.verify(s).ok


def test_the_fifteenth_birthday_is_the_first_day_allowed(session_maker: sessionmaker[Session]) -> None:
    with session_maker.begin() as s:
        teen = add_resident(s, date(2008, 6, 15))
        leap = add_resident(s, date(2008, 2, 29))
    refused(
        session_maker,
        lambda s: register_seal(s, CLERK, teen, seal_png(), "image/png", date(2023, 6, 14)),
        "resident_code",
        "age",
    )
    assert register(session_maker, teen, notified_on=date(2023, 6, 15)).registered_on == date(2023, 6, 15)
    # Born on 29 February: in a common year the age is reached at the end of 28 February.
    refused(
        session_maker,
        lambda s: register_seal(s, CLERK, leap, seal_png(), "image/png", date(2023, 2, 28)),
        "resident_code",
        "age",
    )
    assert register(session_maker, leap, notified_on=date(2023, 3, 1)).is_active


def test_a_second_registration_is_refused(session_maker: sessionmaker[Session], person: str) -> None:
    register(session_maker, person)
    refused(
        session_maker,
        lambda s: register_seal(s, CLERK, person, seal_jpeg(), "image/jpeg", TODAY),
        "resident_code",
        "already_registered",
    )


def test_the_database_refuses_two_active_registrations_whatever_the_code_path(
    session_maker: sessionmaker[Session], person: str
) -> None:
    first = register(session_maker, person)
    with session_maker() as s, pytest.raises(IntegrityError):
        s.add(
            SealRegistration(
                municipality_code=TOKYO,
                resident_id=first.resident_id,
                resident_code=person,
                card_number="ZZZZZZZZZZZZ",
                image_png=b"x",
                image_sha256="0" * 64,
                width=1,
                height=1,
                source_format="PNG",
                registered_on=TODAY,
                registered_by="someone",
            )
        )
        s.flush()


def test_a_clerk_of_another_municipality_or_another_role_is_refused(
    session_maker: sessionmaker[Session], person: str
) -> None:
    error = refused(
        session_maker,
        lambda s: register_seal(s, OTHER_CLERK, person, seal_png(), "image/png", TODAY),
        "resident_code",
        "not_in_municipality",
    )
    # The same answer as for a code that exists nowhere: no leak across municipalities.
    unknown = _codes.generate()
    other = refused(
        session_maker,
        lambda s: register_seal(s, OTHER_CLERK, unknown, seal_png(), "image/png", TODAY),
        "resident_code",
        "not_in_municipality",
    )
    assert error.message == other.message
    operator = Clerk("ops", role="national_operator", municipality_code=None)
    refused(
        session_maker,
        lambda s: register_seal(s, operator, person, seal_png(), "image/png", TODAY),
        "actor",
        "role",
    )
    refused(
        session_maker,
        lambda s: active_seal(s, person, actor=OTHER_CLERK),
        "resident_code",
        "not_in_municipality",
    )


def test_a_removed_resident_cannot_register(session_maker: sessionmaker[Session]) -> None:
    with session_maker.begin() as s:
        removed = add_resident(s, date(1970, 1, 1), status="removed")
    refused(
        session_maker,
        lambda s: register_seal(s, CLERK, removed, seal_png(), "image/png", TODAY),
        "resident_code",
        "not_active",
    )


def test_other_application_checks(session_maker: sessionmaker[Session]) -> None:
    with session_maker.begin() as s:
        newcomer = add_resident(s, date(1990, 1, 1), since=TODAY - timedelta(days=3))
    refused(
        session_maker,
        lambda s: register_seal(s, CLERK, newcomer, seal_png(), "image/png", TODAY - timedelta(days=4)),
        "notified_on",
        "before_residence",
    )
    refused(
        session_maker,
        lambda s: register_seal(s, CLERK, newcomer, seal_png(), "image/png", TODAY + timedelta(days=1)),
        "notified_on",
        "future_date",
    )
    refused(
        session_maker,
        lambda s: register_seal(s, CLERK, newcomer, seal_png(), "image/png", TODAY, adult_ward=True),
        "adult_ward",
        "adult_ward",
    )
    refused(
        session_maker,
        lambda s: register_seal(
            s, CLERK, newcomer[:-1] + str((int(newcomer[-1]) + 1) % 10), seal_png(), "image/png", TODAY
        ),
        "resident_code",
        "check_digit",
    )
    # Full-width digits typed through an IME are the same code.
    wide = newcomer.translate(str.maketrans("0123456789", "０１２３４５６７８９"))
    assert register(session_maker, wide).resident_code == newcomer


# --- the image ----------------------------------------------------------------------------------


def test_png_and_jpeg_are_stored_as_clean_png(session_maker: sessionmaker[Session]) -> None:
    with session_maker.begin() as s:
        a, b = add_resident(s, date(1960, 1, 1)), add_resident(s, date(1961, 1, 1))
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # Make
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    jpeg = seal_jpeg((200, 120), exif=exif.tobytes())
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "someone's name")
    png = seal_png((150, 150), mode="RGBA", pnginfo=info)
    for code, data, kind in ((a, png, "image/png"), (b, jpeg, "image/jpeg; charset=binary")):
        row = register(session_maker, code, image=data, content_type=kind)
        assert png_chunks(row.image_png) == [b"IHDR", b"IDAT", b"IEND"]
        stored = Image.open(io.BytesIO(row.image_png))
        assert stored.mode == "RGB" and stored.size == (row.width, row.height)
    jpeg_row = register_result = None
    with session_maker() as s:
        jpeg_row = s.scalars(select(SealRegistration).where(SealRegistration.resident_code == b)).one()
        register_result = s.scalars(select(SealRegistration).where(SealRegistration.resident_code == a)).one()
    # EXIF orientation applied before the metadata was dropped; transparency became white.
    assert (jpeg_row.width, jpeg_row.height, jpeg_row.source_format) == (120, 200, "JPEG")
    assert Image.open(io.BytesIO(register_result.image_png)).getpixel((2, 2)) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "I;16", "RGBA", "CMYK"])
def test_every_common_pixel_format_is_normalised_to_rgb(mode: str) -> None:
    grey = Image.new("L", (100, 100), 128)
    img = grey.convert("I").point(lambda v: v * 257).convert("I;16") if mode == "I;16" else grey.convert(mode)
    out = io.BytesIO()
    img.save(out, format="JPEG" if mode == "CMYK" else "PNG")
    kind = "image/jpeg" if mode == "CMYK" else "image/png"
    seal = validate_seal_image(out.getvalue(), kind)
    pixel = Image.open(io.BytesIO(seal.png)).getpixel((50, 50))
    assert isinstance(pixel, tuple) and len(pixel) == 3
    expected = 255 if mode == "1" else 128  # "1" dithers: the middle pixel is white or black
    assert all(abs(channel - expected) <= 3 for channel in pixel) or mode == "1"


def _gif() -> bytes:
    out = io.BytesIO()
    Image.new("P", (100, 100)).save(out, format="GIF")
    return out.getvalue()


def _noise_png(side: int) -> bytes:
    rng = random.Random(1)
    img = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
    out = io.BytesIO()
    img.save(out, format="PNG", compress_level=0)
    return out.getvalue()


@pytest.mark.parametrize(
    ("make", "content_type", "field", "rule"),
    [
        (_gif, "image/gif", "image", "format"),
        (_gif, "image/png", "image", "format"),
        (lambda: b"", "image/png", "image", "empty"),
        (lambda: seal_png(), "image/jpeg", "content_type", "mismatch"),
        (lambda: seal_jpeg(), "image/png", "content_type", "mismatch"),
        (lambda: seal_png(), "application/octet-stream", "content_type", "format"),
        (lambda: seal_png()[: len(seal_png()) // 2], "image/png", "image", "decode"),
        (lambda: seal_jpeg()[: len(seal_jpeg()) // 2], "image/jpeg", "image", "decode"),
        (lambda: seal_png()[:20], "image/png", "image", "decode"),
        (lambda: png_bomb_header(20000, 20000), "image/png", "image", "dimensions"),
        (lambda: png_bomb_header(1000, 1000), "image/png", "image", "decode"),
        (lambda: seal_png((1300, 1300)), "image/png", "image", "dimensions"),
        (lambda: seal_png((40, 40)), "image/png", "image", "dimensions"),
        (lambda: seal_png((300, 100)), "image/png", "image", "aspect_ratio"),
        (lambda: _noise_png(820), "image/png", "image", "too_large"),
        (lambda: "not bytes", "image/png", "image", "type"),
    ],
    ids=[
        "gif",
        "gif-declared-png",
        "zero-bytes",
        "png-declared-jpeg",
        "jpeg-declared-png",
        "octet-stream",
        "truncated-png",
        "truncated-jpeg",
        "png-header-only",
        "bomb-20000x20000",
        "bomb-small-idat",
        "too-wide",
        "too-small",
        "not-square",
        "2mb",
        "str",
    ],
)
def test_bad_images_are_refused_and_change_nothing(
    session_maker: sessionmaker[Session],
    person: str,
    make: Callable[[], bytes],
    content_type: str,
    field: str,
    rule: str,
) -> None:
    data = make()
    refused(session_maker, lambda s: register_seal(s, CLERK, person, data, content_type, TODAY), field, rule)


def test_the_size_limit_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    data = seal_png()
    assert len(_noise_png(820)) > 2_000_000
    monkeypatch.setenv(seals.MAX_BYTES_ENV, str(len(data) - 1))
    with pytest.raises(SealError, match="too_large"):
        validate_seal_image(data, "image/png")
    monkeypatch.setenv(seals.MAX_BYTES_ENV, str(len(data)))
    assert validate_seal_image(data, "image/png").width == 240
    assert validate_seal_image(data, "image/png", SealImagePolicy(max_side=300)).height == 240
    with pytest.raises(SealError, match="dimensions"):
        validate_seal_image(data, "image/png", SealImagePolicy(max_side=200))


def test_pillow_guard_is_set() -> None:
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS <= seals.PILLOW_PIXEL_CEILING


# --- 印鑑登録証 numbers ------------------------------------------------------------------------


def test_card_numbers_stay_unique_over_many_registrations(session_maker: sessionmaker[Session]) -> None:
    with session_maker.begin() as s:
        codes = [add_resident(s, date(1950, 1, 1) + timedelta(days=i)) for i in range(120)]
    image = seal_png((80, 80))
    with session_maker.begin() as s:
        for code in codes:
            register_seal(s, CLERK, code, image, "image/png", TODAY)
        for code in codes[:40]:
            abolish_seal(s, CLERK, code, "廃止届", TODAY)
            register_seal(s, CLERK, code, image, "image/png", TODAY)
    with session_maker() as s:
        cards = s.scalars(select(SealRegistration.card_number)).all()
    assert len(cards) == 160 and len(set(cards)) == 160
    assert all(normalise_card_number(c) == c and not c.isdigit() for c in cards)


def test_a_drawn_number_already_taken_is_drawn_again(
    session_maker: sessionmaker[Session], person: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = register(session_maker, person).card_number
    with session_maker.begin() as s:
        other = add_resident(s, date(1981, 1, 1))
    fresh = seals.new_card_number()
    draws = iter([taken, taken, fresh])
    monkeypatch.setattr(seals, "new_card_number", lambda: next(draws))
    assert register(session_maker, other).card_number == fresh


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_single_typo_in_a_card_number_is_caught(data: st.DataObject) -> None:
    payload = data.draw(st.text(alphabet=seals.CARD_ALPHABET, min_size=11, max_size=11))
    card = payload + seals._check_symbol(payload)
    assert normalise_card_number(card.lower()) == card
    position = data.draw(st.integers(0, 11))
    wrong = data.draw(st.sampled_from(seals.CARD_ALPHABET).filter(lambda c: c != card[position]))
    typo = card[:position] + wrong + card[position + 1 :]
    with pytest.raises(SealError) as info:
        normalise_card_number(typo)
    assert info.value.rule == "check_digit"


def test_new_card_numbers_are_well_formed() -> None:
    cards = {seals.new_card_number() for _ in range(2000)}
    assert len(cards) == 2000
    assert all(len(c) == 12 and not c.isdigit() and normalise_card_number(c) == c for c in cards)


@given(st.text(max_size=20))
def test_card_number_parsing_never_crashes(value: str) -> None:
    try:
        assert len(normalise_card_number(value)) == 12
    except SealError as exc:
        assert exc.field == "card_number"


def test_a_card_number_is_found_as_typed_at_the_counter(
    session_maker: sessionmaker[Session], person: str
) -> None:
    card = register(session_maker, person).card_number
    typed = format_card_number(card).lower().translate(str.maketrans("0123456789-", "０１２３４５６７８９－"))
    with session_maker.begin() as s:
        assert find_by_card_number(s, CLERK, typed).resident_code == person
    refused(session_maker, lambda s: find_by_card_number(s, OTHER_CLERK, card), "card_number", "not_found")


# --- abolition and history ----------------------------------------------------------------------


def test_abolish_then_register_again_keeps_the_history(
    session_maker: sessionmaker[Session], person: str
) -> None:
    first = register(session_maker, person, notified_on=TODAY - timedelta(days=30))
    refused(session_maker, lambda s: abolish_seal(s, CLERK, person, "", TODAY), "reason", "required")
    refused(
        session_maker,
        lambda s: abolish_seal(s, CLERK, person, "廃止", TODAY - timedelta(days=31)),
        "notified_on",
        "before_registration",
    )
    with session_maker.begin() as s:
        ended = abolish_seal(s, CLERK, person, "印鑑の変更のため", TODAY - timedelta(days=1))
        assert (ended.status, ended.abolition_cause, ended.abolished_on) == (
            "abolished",
            "notified",
            TODAY - timedelta(days=1),
        )
    refused(
        session_maker,
        lambda s: abolish_seal(s, CLERK, person, "廃止", TODAY),
        "resident_code",
        "not_registered",
    )
    second = register(session_maker, person, image=seal_jpeg(), content_type="image/jpeg")
    assert second.card_number != first.card_number
    with session_maker.begin() as s:
        history = seal_history(s, person, actor=CLERK)
        assert [(r.id, r.status) for r in history] == [(first.id, "abolished"), (second.id, "active")]
        current = active_seal(s, person)
        assert current is not None and current.id == second.id
    with session_maker() as s:
        actions = [(e.action, e.purpose, e.actor) for e in audit.history(s, person)]
    assert actions == [
        ("create", "印鑑登録", CLERK.username),
        ("update", "印鑑登録の廃止", CLERK.username),
        ("create", "印鑑登録", CLERK.username),
        ("read", "印鑑登録原票の閲覧", CLERK.username),
        ("read", "印鑑登録証明書の交付", seals.SYSTEM_ACTOR),
    ]


def test_a_lost_card_ends_the_registration(session_maker: sessionmaker[Session], person: str) -> None:
    card = register(session_maker, person).card_number
    other_card = seals.new_card_number()
    refused(
        session_maker,
        lambda s: lost_card(s, CLERK, person, TODAY, card_number=other_card),
        "card_number",
        "mismatch",
    )
    refused(
        session_maker,
        lambda s: lost_card(s, CLERK, person, TODAY, card_number="ABC"),
        "card_number",
        "length",
    )
    with session_maker.begin() as s:
        ended = lost_card(s, CLERK, person, TODAY, card_number=format_card_number(card))
        assert (ended.status, ended.abolition_cause) == ("abolished", "card_lost")
        assert active_seal(s, person, actor=CLERK) is None


def test_death_or_move_out_abolishes_through_the_hook(session_maker: sessionmaker[Session]) -> None:
    with session_maker.begin() as s:
        dying, leaving, sealless = (add_resident(s, date(1940 + i, 1, 1)) for i in range(3))
    register(session_maker, dying)
    register(session_maker, leaving)
    with session_maker.begin() as s:
        ended = abolish_for_resident(s, dying, "死亡", effective_on=TODAY - timedelta(days=2))
        assert ended is not None and (ended.abolition_cause, ended.abolished_on) == (
            "death",
            TODAY - timedelta(days=2),
        )
        moved = abolish_for_resident(s, leaving, "move_out")
        assert moved is not None and (moved.abolition_cause, moved.abolished_by) == (
            "move_out",
            "kiban.register",
        )
        # Nothing to do: no error, nothing logged.
        assert abolish_for_resident(s, dying, "死亡") is None
        assert abolish_for_resident(s, sealless, "転出") is None
    with session_maker() as s:
        assert [(e.action, e.role) for e in audit.history(s, dying)] == [
            ("create", "clerk"),
            ("update", "system"),
        ]
        assert audit.history(s, sealless) == []
    refused(session_maker, lambda s: abolish_for_resident(s, leaving, "x", cause="eaten"), "cause", "enum")


def test_a_removed_record_never_yields_a_seal(session_maker: sessionmaker[Session], person: str) -> None:
    register(session_maker, person)
    with session_maker.begin() as s:
        # The register closed the record without calling the hook (a bug elsewhere): still no seal.
        s.execute(text("UPDATE residents SET status = 'removed' WHERE resident_code = :c"), {"c": person})
    with session_maker.begin() as s:
        assert active_seal(s, person) is None


def test_two_clerks_registering_at_once_get_one_registration(
    session_maker: sessionmaker[Session], person: str
) -> None:
    """The second clerk's pre-check cannot see the first's uncommitted row: the database index decides."""
    import threading
    import time

    outcome: list[BaseException | SealRegistration] = []
    jpeg = seal_jpeg()

    def second_clerk() -> None:
        try:
            with session_maker.begin() as s:
                outcome.append(register_seal(s, CLERK, person, jpeg, "image/jpeg", TODAY))
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            outcome.append(exc)

    with session_maker() as first:
        winner = register_seal(first, CLERK, person, seal_png(), "image/png", TODAY)  # flushed, not committed
        thread = threading.Thread(target=second_clerk)
        thread.start()
        time.sleep(0.5)  # the second clerk is now waiting on the first's lock
        first.commit()
        thread.join(timeout=30)
    assert len(outcome) == 1 and isinstance(outcome[0], SealError), outcome
    assert outcome[0].rule == "already_registered"
    with session_maker() as s:
        rows = s.scalars(select(SealRegistration)).all()
        assert [(r.id, r.status) for r in rows] == [(winner.id, "active")]
        assert [e.action for e in audit.history(s, person)] == ["create"]
        assert audit.verify(s).ok


_OPS = st.lists(
    st.tuples(st.sampled_from(["register", "abolish", "lost", "hook", "read"]), st.integers(0, 3)),
    max_size=12,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_OPS)
def test_random_sequences_keep_one_seal_per_person_and_refusals_change_nothing(
    session_maker: sessionmaker[Session], ops: list[tuple[str, int]]
) -> None:
    with session_maker.begin() as s:
        # Three adults and one child, who can never register.
        people = [add_resident(s, date(1970 + i, 1, 1)) for i in range(3)]
        people.append(add_resident(s, date(TODAY.year - 10, 1, 1)))
    image = seal_png((80, 80))
    active: dict[str, str | None] = dict.fromkeys(people)  # the model: person -> active card number
    registered = 0
    for op, who in ops:
        code = people[who]
        before = snapshot(session_maker)
        with session_maker() as s:
            try:
                if op == "register":
                    active[code] = register_seal(s, CLERK, code, image, "image/png", TODAY).card_number
                    registered += 1
                elif op == "abolish":
                    abolish_seal(s, CLERK, code, "廃止届", TODAY)
                    active[code] = None
                elif op == "lost":
                    lost_card(s, CLERK, code, TODAY, card_number=active[code])
                    active[code] = None
                elif op == "hook":
                    ended = abolish_for_resident(s, code, "転出")
                    assert (ended.card_number if ended else None) == active[code]
                    active[code] = None
                else:
                    current = active_seal(s, code, actor=CLERK)
                    assert (current.card_number if current else None) == active[code]
                s.commit()
            except SealError as exc:
                s.commit()
                assert snapshot(session_maker) == before
                expected = {
                    "register": "age" if who == 3 else "already_registered",
                    "abolish": "not_registered",
                    "lost": "not_registered",
                }
                assert exc.rule == expected[op], (op, who, exc)
        with session_maker() as s:
            rows = s.scalars(select(SealRegistration).where(SealRegistration.resident_code.in_(people))).all()
        live = {r.resident_code: r.card_number for r in rows if r.is_active}
        assert live == {c: n for c, n in active.items() if n is not None}
        assert len(rows) == registered and len({r.card_number for r in rows}) == len(rows)
        assert all(r.abolished_on is not None for r in rows if not r.is_active)


def _red_pixels(png: bytes) -> int:
    raw = Image.open(io.BytesIO(png)).convert("RGB").tobytes()
    return sum(1 for i in range(0, len(raw), 3) if raw[i] > 150 and raw[i + 1] < 100)


def test_synthetic_seals_are_deterministic_and_pass_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    first = seals.synthetic_seal_image("渡邊", seed=1)
    assert first == seals.synthetic_seal_image("渡邊", seed=1) != seals.synthetic_seal_image("渡邊", seed=2)
    assert validate_seal_image(first, "image/png").width == 240
    assert _red_pixels(first) > 240 * 4  # a ring and the name, not a blank square
    # Without a Japanese font, strokes stand in for the name.
    monkeypatch.setattr(seals, "SEAL_FONTS", ())
    fontless = seals.synthetic_seal_image("渡邊", seed=1)
    assert fontless != first and validate_seal_image(fontless, "image/png").height == 240
    assert _red_pixels(fontless) > 240 * 4
