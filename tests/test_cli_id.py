"""`kiban id check VALUE` (SPEC §7): exit 0 and "valid", or exit 1 and the failed rule."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kiban.cli.main import app

runner = CliRunner()


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("123456789018", "個人番号"),
        ("24727059608", "住民票コード"),
        ("131016", "地方公共団体コード"),
        ("１２３４５６７８９０１８", "個人番号"),
        (" 011002\t", "地方公共団体コード"),
    ],
)
def test_valid_identifiers(value: str, kind: str) -> None:
    result = runner.invoke(app, ["id", "check", value])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("valid")
    assert kind in result.output


def test_check_digit_failure_names_the_rule() -> None:
    result = runner.invoke(app, ["id", "check", "123456789012"])
    assert result.exit_code == 1
    assert result.output.startswith("invalid")
    assert "check digit is 2, expected 8" in result.output
    assert "rule: check_digit" in result.output


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("", "length"),
        ("9" * 10_000, "length"),
        ("z" * 10_000, "digits_only"),
        ("1234\x0056789018", "digits_only"),
        ("12345678901😀", "digits_only"),
        ("-123456789018", "digits_only"),
        ("--123456789018", "digits_only"),
        ("−123456789018", "digits_only"),
        ("١٢٣٤٥٦٧٨٩٠١٨", "digits_only"),
        ("\x1b[31m123456789018", "digits_only"),
        ("123456789019", "check_digit"),
        ("25208017644", "check_digit"),
        ("131017", "check_digit"),
        ("1234567", "length"),
    ],
)
def test_hostile_input(value: str, rule: str) -> None:
    result = runner.invoke(app, ["id", "check", value])
    assert result.exit_code == 1, result.output
    assert f"rule: {rule}" in result.output
    # Nothing the user typed reaches the terminal raw: no NUL, no escape sequence, short output.
    assert "\x00" not in result.output and "\x1b" not in result.output
    assert len(result.output) < 400


def test_missing_value_is_a_usage_error() -> None:
    result = runner.invoke(app, ["id", "check"])
    assert result.exit_code == 2


def _kiban() -> str:
    beside = Path(sys.executable).parent / "kiban"
    found = str(beside) if beside.exists() else shutil.which("kiban")
    assert found, "the kiban console script is not installed"
    return found


def test_real_subprocess() -> None:
    kiban = _kiban()
    ok = subprocess.run([kiban, "id", "check", "123456789018"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("valid")
    bad = subprocess.run([kiban, "id", "check", "123456789012"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert "rule: check_digit" in bad.stdout
    wide = subprocess.run([kiban, "id", "check", "１３１０１６"], capture_output=True, text=True, timeout=60)
    assert wide.returncode == 0 and "131016" in wide.stdout
