"""The software card chip (SPEC K4): PIN rules and counters, keys inside, encrypted file at rest."""

from __future__ import annotations

import json
import pickle
import stat
from datetime import date
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from kiban.cards.softcard import PIN_RULES, CardError, CardFace, SoftCard, check_pin, verify_signature

FACE = CardFace(
    card_id="A1B2C3D4E5F6",
    name="山田　花子",
    address="東京都千代田区霞が関一丁目1番1号",
    birth_date=date(1990, 4, 1),
    sex=2,
    expires_on=date(2036, 4, 1),
    municipality_code="131016",
    individual_number="123456789018",
)
PINS = {"user_auth": "1234", "signature": "ABC123", "juki": "5678", "face": "9012"}
PASS = "correct horse battery"


def issued(algorithm: str = "p256") -> SoftCard:
    card = SoftCard.blank(FACE, algorithm=algorithm)  # type: ignore[arg-type]
    card.set_initial_pins(PINS)
    card.generate_key_pair("user_auth", PINS["user_auth"])
    card.generate_key_pair("signature", PINS["signature"])
    return card


def test_blank_card_has_no_pins_and_no_keys() -> None:
    card = SoftCard.blank(FACE)
    assert all(not s.is_set for s in card.pin_status())
    assert card.public_key("user_auth") is None
    with pytest.raises(CardError) as err:
        card.sign_challenge("1234", b"nonce")
    assert err.value.rule == "no_key"


@pytest.mark.parametrize(
    ("kind", "pin", "ok"),
    [
        ("user_auth", "1234", True),
        ("user_auth", "123", False),
        ("user_auth", "12345", False),
        ("user_auth", "12a4", False),
        ("user_auth", "１２３４", False),  # full-width digits are not digits on a card
        ("signature", "ABC123", True),
        ("signature", "A" * 16, True),
        ("signature", "ABC12", False),
        ("signature", "A" * 17, False),
        ("signature", "abc123", False),
        ("signature", "ABC 123", False),
        ("juki", "0000", True),
        ("face", "99999", False),
    ],
)
def test_pin_rules(kind: str, pin: str, ok: bool) -> None:
    if ok:
        assert check_pin(kind, pin) == pin
    else:
        with pytest.raises(CardError) as err:
            check_pin(kind, pin)
        assert err.value.rule == "pin_format"


def test_a_bad_pin_in_the_set_leaves_every_pin_unset() -> None:
    card = SoftCard.blank(FACE)
    with pytest.raises(CardError) as err:
        card.set_initial_pins({"user_auth": "1234", "signature": "short"})
    assert err.value.field == "pins.signature"
    assert all(not s.is_set for s in card.pin_status())
    card.set_initial_pins({"user_auth": "1234"})
    with pytest.raises(CardError) as err:
        card.set_initial_pins({"user_auth": "4321"})
    assert err.value.rule == "pin_already_set"


def test_signs_only_after_the_right_pin_and_signatures_verify() -> None:
    card = issued()
    signature = card.sign_challenge("1234", b"challenge")
    assert verify_signature(card.public_key("user_auth"), signature, b"challenge")
    assert not verify_signature(card.public_key("user_auth"), signature, b"other")
    # the document key is another key, unlocked by the other PIN
    doc = card.sign_document("ABC123", b"%PDF document")
    assert verify_signature(card.public_key("signature"), doc, b"%PDF document")
    assert not verify_signature(card.public_key("user_auth"), doc, b"%PDF document")
    with pytest.raises(CardError) as err:
        card.sign_document("1234", b"doc")  # the user-authentication PIN does not unlock signing
    assert err.value.rule == "pin_wrong"


@pytest.mark.parametrize("kind", ["user_auth", "signature", "juki", "face"])
def test_pin_locks_exactly_at_its_limit(kind: str) -> None:
    card = issued()
    limit = PIN_RULES[kind].max_tries
    wrong = "0000" if kind != "signature" else "WRONG1"
    for attempt in range(1, limit):
        with pytest.raises(CardError) as err:
            card.verify_pin(kind, wrong)  # type: ignore[arg-type]
        assert err.value.rule == "pin_wrong"
        assert err.value.tries_left == limit - attempt
    with pytest.raises(CardError) as err:
        card.verify_pin(kind, wrong)  # type: ignore[arg-type]
    assert err.value.rule == "pin_locked" and err.value.tries_left == 0
    # locked: even the right PIN is refused
    with pytest.raises(CardError) as err:
        card.verify_pin(kind, PINS[kind])  # type: ignore[arg-type]
    assert err.value.rule == "pin_locked"
    # reset at the counter: a new PIN, the counter restored
    new = "4321" if kind != "signature" else "NEWPIN9"
    card.reset_pin(kind, new)  # type: ignore[arg-type]
    card.verify_pin(kind, new)  # type: ignore[arg-type]
    assert next(s for s in card.pin_status() if s.kind == kind).tries_left == limit


def test_a_right_pin_restores_the_counter() -> None:
    card = issued()
    with pytest.raises(CardError):
        card.sign_challenge("0000", b"x")
    with pytest.raises(CardError):
        card.sign_challenge("0001", b"x")
    card.sign_challenge("1234", b"x")
    assert next(s for s in card.pin_status() if s.kind == "user_auth").tries_left == 3


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), max_size=12))
def test_property_user_auth_pin_locks_after_three_consecutive_failures(attempts: list[bool]) -> None:
    card = SoftCard.blank(FACE)
    card.set_initial_pins({"user_auth": "1234"})
    consecutive = 0
    for right in attempts:
        locked_before = consecutive >= 3
        try:
            card.verify_pin("user_auth", "1234" if right else "9999")
            assert right and not locked_before
            consecutive = 0
        except CardError as exc:
            if locked_before:
                assert exc.rule == "pin_locked"
            else:
                assert not right
                consecutive += 1
                assert exc.rule == ("pin_locked" if consecutive == 3 else "pin_wrong")


def test_change_pin_checks_the_new_one_first() -> None:
    card = issued()
    with pytest.raises(CardError) as err:
        card.change_pin("signature", "ABC123", "abc")
    assert err.value.rule == "pin_format"
    assert next(s for s in card.pin_status() if s.kind == "signature").tries_left == 5  # nothing spent
    with pytest.raises(CardError) as err:
        card.change_pin("signature", "WRONG00", "NEWPIN1")
    assert err.value.rule == "pin_wrong"
    card.change_pin("signature", "ABC123", "NEWPIN1")
    card.sign_document("NEWPIN1", b"doc")


def test_individual_number_needs_the_face_pin() -> None:
    card = issued()
    assert "individual_number" not in card.face
    assert card.read_individual_number("9012") == "123456789018"
    with pytest.raises(CardError):
        card.read_individual_number("0000")


def test_private_keys_do_not_leave_the_card() -> None:
    card = issued()
    with pytest.raises(TypeError):
        pickle.dumps(card)
    assert "PRIVATE" not in repr(card)
    exported = [name for name in dir(card) if "private" in name.lower() or "export" in name.lower()]
    assert exported == []
    assert isinstance(card.public_key("user_auth"), ec.EllipticCurvePublicKey)


def test_rsa_2048_is_the_default() -> None:
    card = SoftCard.blank(FACE)
    card.set_initial_pins({"user_auth": "1234"})
    key = card.generate_key_pair("user_auth", "1234")
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
    assert verify_signature(key, card.sign_challenge("1234", b"n"), b"n")


def test_file_at_rest_is_encrypted_and_counters_persist(tmp_path: Path) -> None:
    path = tmp_path / "card.kcard"
    card = issued()
    card.write_area("kenpo", b"insurer=06130012", "1234")
    card.save(path, PASS)
    raw = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for secret in ("山田", "123456789018", "PRIVATE", "ABC123", "kenpo"):
        assert secret not in raw
    blob = json.loads(raw)
    assert blob["header"]["kdf"]["name"] == "scrypt" and blob["header"]["aead"]["name"] == "AES-256-GCM"
    # a wrong try is written back at once: reopening does not give the try back
    with pytest.raises(CardError):
        card.sign_challenge("0000", b"x")
    again = SoftCard.open(path, PASS)
    assert next(s for s in again.pin_status() if s.kind == "user_auth").tries_left == 2
    assert again.area() == {"kenpo": b"insurer=06130012"}
    signature = again.sign_challenge("1234", b"x")
    assert verify_signature(card.public_key("user_auth"), signature, b"x")  # the same key came back


def test_wrong_passphrase_and_tampering_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "card.kcard"
    issued().save(path, PASS)
    with pytest.raises(CardError) as err:
        SoftCard.open(path, "not the passphrase")
    assert err.value.rule == "decrypt_failed"
    blob = json.loads(path.read_text())
    blob["header"]["card_id"] = "ZZZZZZZZZZZZ"  # the header is authenticated too
    path.write_text(json.dumps(blob))
    with pytest.raises(CardError) as err:
        SoftCard.open(path, PASS)
    assert err.value.rule == "decrypt_failed"
    path.write_text("not json")
    with pytest.raises(CardError) as err:
        SoftCard.open(path, PASS)
    assert err.value.rule == "format"
    with pytest.raises(CardError) as err:
        SoftCard.open(tmp_path / "missing", PASS)
    assert err.value.rule == "not_found"


def test_bad_input_is_refused() -> None:
    card = issued()
    with pytest.raises(CardError) as err:
        card.sign_challenge("1234", b"")
    assert err.value.field == "challenge"
    with pytest.raises(CardError):
        card.sign_challenge("1234", b"x" * 1025)
    with pytest.raises(CardError) as err:
        card.write_area("Bad Name", b"", "1234")
    assert err.value.rule == "format"
    with pytest.raises(CardError):
        card.write_area("ok", b"x" * 5000, "1234")
    with pytest.raises(CardError) as err:
        SoftCard.blank(CardFace(**{**FACE.__dict__, "card_id": "short"}))
    assert err.value.field == "face.card_id"
    # none of those spent a try
    assert next(s for s in card.pin_status() if s.kind == "user_auth").tries_left == 3
