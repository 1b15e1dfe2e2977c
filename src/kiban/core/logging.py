"""Structured logging (構造化ログ): one JSON object per line on stderr, with secrets redacted.

``configure_logging()`` installs a single handler on the root logger. Every record passes a
redaction filter before it is formatted, so neither a field named like a secret (password, PIN,
token, key…) nor anything that looks like a 個人番号 (12 digits, also written 4-4-4 or in
full-width digits) reaches a log line, whichever library logged it.
"""

from __future__ import annotations

import json as _json
import logging
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

REDACTED = "[REDACTED]"
REDACTED_NUMBER = "[REDACTED-12DIGITS]"

# Parts of a field name that mark its value as secret. Matched against the name's words
# ("user_pin", "apiKey", "X-Auth-Token"), so "pinned" or "monkey" are not caught.
SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "pin",
        "token",
        "secret",
        "key",
        "apikey",
        "authorization",
        "cookie",
        "credential",
        "credentials",
        "private",
        "暗証番号",
        "パスワード",
    }
)

# A 個人番号 is 12 digits; people also write it 4-4-4 with spaces or hyphens. \d matches
# full-width digits too. Any such run is redacted: a false positive costs a log line's detail,
# a false negative leaks a number.
TWELVE_DIGITS = re.compile(r"(?<!\d)\d{4}[ \-]?\d{4}[ \-]?\d{4}(?!\d)")
# "password=hunter2", "pin: 1234", "Authorization: Bearer x" inside free text. Only with "=" or
# ":", so that "PIN locked after 3 attempts" keeps its meaning.
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)\b(password|passwd|pwd|passphrase|pin|token|secret|api[_-]?key|private[_-]?key|authorization"
    r"|暗証番号|パスワード)(\s*[=:：]\s*(?:bearer\s+|basic\s+)?)(?!\[REDACTED)(\"[^\"]*\"|'[^']*'|[^\s,;&]+)"
)
_JAPANESE_SECRET_WORDS = ("暗証番号", "パスワード", "秘密鍵")
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+|[^\x00-\x7f]+")

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def is_secret_name(name: str) -> bool:
    """True when a field called ``name`` should never have its value logged or audited."""
    words = {w.lower() for w in _WORDS.findall(name)}
    if words & SECRET_WORDS:
        return True
    if any(word in name for word in _JAPANESE_SECRET_WORDS):
        return True
    squashed = re.sub(r"[^0-9a-z]", "", name.lower())
    return squashed in SECRET_WORDS


def redact_text(text: str) -> str:
    """``text`` with 12-digit numbers and ``secret=value`` pairs replaced."""
    text = _SECRET_ASSIGNMENT.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    return TWELVE_DIGITS.sub(REDACTED_NUMBER, text)


def redact(value: Any, name: str | None = None) -> Any:
    """``value`` made safe to log: secret-named fields blanked, strings scrubbed, containers walked."""
    if name is not None and is_secret_name(name):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        return redact_text(str(value)) if TWELVE_DIGITS.fullmatch(str(abs(value))) else value
    if isinstance(value, Mapping):
        return {str(k): redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(v) for v in value]
    return redact_text(str(value))


class RedactingFilter(logging.Filter):
    """Rewrites a record in place so that its message and extra fields carry no secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg = redact_text(message)
        record.args = None
        for attr in list(vars(record)):
            if attr not in _STANDARD_ATTRS:
                setattr(record, attr, redact(getattr(record, attr), attr))
        if record.exc_info and record.exc_info[1] is not None:
            # Exception messages often quote the offending input; format once and scrub.
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for attr, value in vars(record).items():
            if attr not in _STANDARD_ATTRS and attr not in entry:
                entry[attr] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return _json.dumps(entry, ensure_ascii=False, default=str)


class _KibanHandler(logging.StreamHandler):
    """Marks the handler this module installed, so that configuring twice replaces it."""


def configure_logging(level: int | str = "INFO", json: bool = True, stream: TextIO | None = None) -> None:
    """Send every log record to ``stream`` (stderr) as JSON lines (or plain text), redacted.

    Idempotent: calling it again replaces the handler it installed before and leaves other
    handlers alone.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _KibanHandler):
            root.removeHandler(handler)
    handler = _KibanHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(RedactingFilter())
    if json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
