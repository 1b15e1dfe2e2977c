"""`kiban card` (the holder's side of the software card), through the module's Typer app."""

from __future__ import annotations

import base64
import json
from datetime import date
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kiban.cards.softcard import CardFace, SoftCard, verify_signature
from kiban.cli.card import app

PASS = "correct horse battery"
runner = CliRunner()


@pytest.fixture
def card_file(tmp_path: Path) -> Path:
    card = SoftCard.blank(
        CardFace(
            "K1B2C3D4E5F6",
            "佐藤　一郎",
            "東京都新宿区西新宿二丁目8番1号",
            date(1985, 2, 28),
            1,
            date(2036, 2, 28),
            "131041",
            "123456789018",
        ),
        algorithm="p256",
    )
    card.set_initial_pins({"user_auth": "1234", "signature": "SIGN2026", "juki": "1111", "face": "2222"})
    card.generate_key_pair("user_auth", "1234")
    card.generate_key_pair("signature", "SIGN2026")
    path = tmp_path / "card.kcard"
    card.save(path, PASS)
    return path


def test_inspect_shows_the_face_and_counters_but_no_number(card_file: Path) -> None:
    result = runner.invoke(app, ["inspect", str(card_file), "--passphrase", PASS, "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["face"]["card_id"] == "K1B2C3D4E5F6"
    assert info["pins"]["user_auth"] == {"set": True, "tries_left": 3, "locked": False}
    assert "123456789018" not in result.output
    assert len(info["keys"]["user_auth"]["public_key_sha256"]) == 64
    text = runner.invoke(app, ["inspect", str(card_file)], env={"KIBAN_CARD_PASSPHRASE": PASS})
    assert text.exit_code == 0 and "佐藤　一郎" in text.output and "残り3回" in text.output


def test_sign_challenge_and_document(card_file: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["sign", str(card_file), "--passphrase", PASS, "--challenge", "00ff10", "--pin", "1234"]
    )
    assert result.exit_code == 0, result.output
    card = SoftCard.open(card_file, PASS)
    assert verify_signature(
        card.public_key("user_auth"), base64.b64decode(result.output.strip()), b"\x00\xff\x10"
    )
    doc = tmp_path / "doc.txt"
    doc.write_bytes("申請書".encode())
    result = runner.invoke(
        app, ["sign", str(card_file), "--passphrase", PASS, "--document", str(doc), "--pin", "SIGN2026"]
    )
    assert result.exit_code == 0, result.output
    assert verify_signature(
        card.public_key("signature"), base64.b64decode(result.output.strip()), doc.read_bytes()
    )


def test_wrong_pin_spends_a_try_in_the_file_and_locks(card_file: Path) -> None:
    for left in (2, 1):
        result = runner.invoke(
            app, ["sign", str(card_file), "--passphrase", PASS, "--challenge", "01", "--pin", "9999"]
        )
        assert result.exit_code == 2 and f"{left} tries left" in result.output
    result = runner.invoke(
        app, ["sign", str(card_file), "--passphrase", PASS, "--challenge", "01", "--pin", "9999"]
    )
    assert result.exit_code == 2 and "pin_locked" in result.output
    result = runner.invoke(
        app, ["sign", str(card_file), "--passphrase", PASS, "--challenge", "01", "--pin", "1234"]
    )
    assert result.exit_code == 2 and "pin_locked" in result.output


def test_change_pin(card_file: Path) -> None:
    bad = runner.invoke(
        app,
        [
            "change-pin",
            str(card_file),
            "--passphrase",
            PASS,
            "--kind",
            "signature",
            "--old",
            "SIGN2026",
            "--new",
            "lower1",
        ],
    )
    assert bad.exit_code == 1 and "pin_format" in bad.output
    ok = runner.invoke(
        app,
        [
            "change-pin",
            str(card_file),
            "--passphrase",
            PASS,
            "--kind",
            "signature",
            "--old",
            "SIGN2026",
            "--new",
            "NEWSIGN7",
        ],
    )
    assert ok.exit_code == 0, ok.output
    SoftCard.open(card_file, PASS).sign_document("NEWSIGN7", b"x")


def test_refusals(card_file: Path) -> None:
    wrong = runner.invoke(app, ["inspect", str(card_file), "--passphrase", "wrong passphrase"])
    assert wrong.exit_code == 1 and "decrypt_failed" in wrong.output
    both = runner.invoke(app, ["sign", str(card_file), "--passphrase", PASS])
    assert both.exit_code == 1
    nothex = runner.invoke(
        app, ["sign", str(card_file), "--passphrase", PASS, "--challenge", "zz", "--pin", "1234"]
    )
    assert nothex.exit_code == 1 and "hex" in nothex.output
    kind = runner.invoke(app, ["change-pin", str(card_file), "--passphrase", PASS, "--kind", "nope"])
    assert kind.exit_code == 1
    # A missing file is refused before any passphrase is asked for (no input given here).
    missing = runner.invoke(app, ["inspect", str(card_file.parent / "nope.card")])
    assert missing.exit_code == 1 and "file_exists" in missing.output
