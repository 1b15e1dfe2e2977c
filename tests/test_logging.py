"""Structured logging: JSON lines with the expected fields, and no secret or 個人番号 in any line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiban.core.logging import REDACTED, configure_logging, is_secret_name, redact_text


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def emit(message: str, *args: Any, level: int = logging.INFO, **extra: Any) -> dict[str, Any]:
    """Log once through a freshly configured handler; return the one JSON line it wrote."""
    buffer = io.StringIO()
    configure_logging("DEBUG", stream=buffer)
    logging.getLogger("kiban.test").log(level, message, *args, extra=extra)
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 1, lines
    parsed: dict[str, Any] = json.loads(lines[0])
    return parsed


def test_a_line_is_json_with_time_level_logger_message_and_extras() -> None:
    before = datetime.now(UTC)
    line = emit("resident %s moved", "R-1", level=logging.WARNING, municipality="131016", count=3)
    assert {k: line[k] for k in ("level", "logger", "message", "municipality", "count")} == {
        "level": "WARNING",
        "logger": "kiban.test",
        "message": "resident R-1 moved",
        "municipality": "131016",
        "count": 3,
    }
    logged_at = datetime.fromisoformat(line["time"])
    assert logged_at.utcoffset() is not None and logged_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert (logged_at - before).total_seconds() < 5


def test_logs_go_to_stderr_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO")
    logging.getLogger("kiban.x").info("hello")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert json.loads(captured.err.splitlines()[-1])["message"] == "hello"


def test_level_filters_and_configuring_twice_keeps_one_handler() -> None:
    buffer = io.StringIO()
    configure_logging("INFO", stream=buffer)
    configure_logging("WARNING", stream=buffer)
    log = logging.getLogger("kiban.levels")
    log.info("quiet")
    log.warning("loud")
    assert [json.loads(x)["message"] for x in buffer.getvalue().splitlines()] == ["loud"]


@pytest.mark.parametrize(
    "field",
    [
        "password",
        "pin",
        "user_pin",
        "card_PIN",
        "apiKey",
        "access_token",
        "client_secret",
        "private_key",
        "暗証番号",
    ],
)
def test_secret_named_fields_are_redacted(field: str) -> None:
    line = emit("login", **{field: "hunter2-1234"})
    assert line[field] == REDACTED
    assert "hunter2" not in json.dumps(line, ensure_ascii=False)


@pytest.mark.parametrize("field", ["pinned", "monkey", "municipality", "tokenizer_name", "hash", "keyword"])
def test_ordinary_fields_are_kept(field: str) -> None:
    assert not is_secret_name(field)
    assert emit("x", **{field: "value"})[field] == "value"


def test_nested_secrets_are_redacted() -> None:
    line = emit("request", body={"card": {"pin": "4321", "serial": "ab12"}, "items": [{"token": "t0k"}]})
    assert line["body"] == {"card": {"pin": REDACTED, "serial": "ab12"}, "items": [{"token": REDACTED}]}


@pytest.mark.parametrize(
    "text",
    ["123456789018", "1234 5678 9018", "1234-5678-9018", "１２３４５６７８９０１８", "no.123456789018."],
)
def test_twelve_digit_numbers_are_redacted_everywhere(text: str) -> None:
    line = emit("number %s", text, note=f"holder {text}", values=[text], number=123456789018)
    flat = json.dumps(line, ensure_ascii=False)
    for digits in ("123456789018", "9018", "１２３４５６７８９０１８"):
        assert digits not in flat, flat
    assert line["number"] != 123456789018


@pytest.mark.parametrize("text", ["38472916503", "1234567890123", "2026-11-25", "131016"])
def test_other_numbers_are_kept(text: str) -> None:
    # A 住民票コード (11), 13 digits, dates and municipality codes are not 個人番号.
    assert emit("value %s", text)["message"] == f"value {text}"


@pytest.mark.parametrize(
    "message",
    [
        "password=hunter2",
        "pin: 9876",
        "Authorization: Bearer hunter2",
        'secret="hunter2 with spaces"',
        "暗証番号=9876",
        "PIN：9876",
    ],
)
def test_secrets_in_free_text_are_redacted(message: str) -> None:
    out = emit(message)["message"]
    assert REDACTED in out
    assert "hunter2" not in out and "9876" not in out


def test_words_about_secrets_are_not_mangled() -> None:
    assert emit("PIN locked after 3 wrong attempts")["message"] == "PIN locked after 3 wrong attempts"


def test_exception_text_is_redacted() -> None:
    buffer = io.StringIO()
    configure_logging("INFO", stream=buffer)
    try:
        raise ValueError("bad 個人番号 123456789018 with password=hunter2")
    except ValueError:
        logging.getLogger("kiban.exc").exception("failed")
    line = json.loads(buffer.getvalue())
    assert "ValueError" in line["exc"]
    assert "123456789018" not in line["exc"] and "hunter2" not in line["exc"]


def test_plain_text_mode_is_redacted_too() -> None:
    buffer = io.StringIO()
    configure_logging("INFO", json=False, stream=buffer)
    logging.getLogger("kiban.plain").info("number %s password=x1", "123456789018")
    out = buffer.getvalue()
    assert "kiban.plain" in out and "123456789018" not in out and "x1" not in out


@given(
    before=st.text(alphabet="abc 住民-:", max_size=10),
    number=st.from_regex(r"[0-9]{12}", fullmatch=True),
    after=st.text(alphabet="abc 住民-:", max_size=10),
)
def test_property_no_twelve_digit_number_survives(before: str, number: str, after: str) -> None:
    assert number not in redact_text(before + number + after)
    assert number[4:] not in redact_text(f"{before}{number[:4]} {number[4:8]} {number[8:]}{after}")
