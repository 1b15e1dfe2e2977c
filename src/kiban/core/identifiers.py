"""Identifier rules (SPEC §3): check digits, validation, generation and the keyed 個人番号 transform.

Pure functions and small classes, no database. The numbering store (``kiban.numbering``) builds on
them; the ``kiban id check`` command exposes :func:`identify`.

Three identifiers:

- 地方公共団体コード (municipality code): 5 digits + 1 check digit.
- 住民票コード (resident code): 10 random digits + 1 check digit.
- 個人番号 (individual number, "My Number"): 11 digits + 1 check digit, derived from the resident
  code by format-preserving encryption (FF3-1) under a secret key.
"""

from __future__ import annotations

import os
import random
import re
import secrets
from pathlib import Path
from typing import Final

from ff3 import FF3Cipher

__all__ = [
    "FIELD_INDIVIDUAL_NUMBER",
    "FIELD_MUNICIPALITY_CODE",
    "FIELD_RESIDENT_CODE",
    "KIND_LABELS",
    "FixedPointError",
    "IdentifierError",
    "IndividualNumberCipher",
    "ResidentCodeGenerator",
    "identify",
    "individual_number_check_digit",
    "is_obvious_pattern",
    "load_or_create_key",
    "municipality_check_digit",
    "normalize_digits",
    "resident_code_check_digit",
    "validate_individual_number",
    "validate_municipality_code",
    "validate_resident_code",
]

FIELD_MUNICIPALITY_CODE: Final = "地方公共団体コード"
FIELD_RESIDENT_CODE: Final = "住民票コード"
FIELD_INDIVIDUAL_NUMBER: Final = "個人番号"
FIELD_IDENTIFIER: Final = "identifier"

# Kinds returned by identify(), with the Japanese term shown to people.
KIND_LABELS: Final[dict[str, str]] = {
    "municipality_code": FIELD_MUNICIPALITY_CODE,
    "resident_code": FIELD_RESIDENT_CODE,
    "individual_number": FIELD_INDIVIDUAL_NUMBER,
}
_KIND_BY_LENGTH: Final[dict[int, str]] = {
    6: "municipality_code",
    11: "resident_code",
    12: "individual_number",
}

# Only the ten full-width digits are folded; NFKC would also fold e.g. "①" or "²" into digits,
# which a clerk never meant as a number.
_FULL_WIDTH_DIGITS: Final = str.maketrans("０１２３４５６７８９", "0123456789")
_ASCII_DIGITS: Final = re.compile(r"[0-9]+")
# What a form or a terminal puts around a value. str.strip() would also drop control characters
# such as U+001C-U+001F, which are refused instead.
_SURROUNDING_SPACE: Final = " \t\r\n\u00a0\u3000"
_SHOWN_MAX: Final = 24


class IdentifierError(ValueError):
    """An identifier broke a rule. ``field`` names the identifier, ``rule`` is a stable rule id.

    Rule ids: ``length``, ``digits_only``, ``check_digit``, ``pattern``, and in the numbering store
    ``not_issued``, ``retired``, ``no_number``, ``reason_required``, ``key_mismatch``.
    """

    def __init__(self, field: str, rule: str, message: str, value: str | None = None) -> None:
        self.field = field
        self.rule = rule
        self.detail = message
        shown = f" {_shown(value)}" if value is not None else ""
        super().__init__(f"{field}{shown}: {message} (rule: {rule})")


def _shown(value: str) -> str:
    """The value as safe to print: short, and control or odd characters escaped."""
    if value == "":
        return '""'
    text = value if len(value) <= _SHOWN_MAX else value[:_SHOWN_MAX]
    rendered = text if text.isprintable() and text.strip() == text else repr(text)
    if len(value) > _SHOWN_MAX:
        rendered += f"… ({len(value)} characters)"
    return rendered


def normalize_digits(value: str) -> str:
    """Fold full-width digits (０-９) to ASCII and strip surrounding spaces, tabs and newlines
    (ASCII, no-break and ideographic spaces).

    Nothing else is converted: other Unicode digits (Arabic-Indic, Devanagari, superscripts) stay
    as they are, so the validators reject them with rule ``digits_only``.
    """
    return value.strip(_SURROUNDING_SPACE).translate(_FULL_WIDTH_DIGITS)


def _digits(value: str, field: str, length: int) -> str:
    """Normalise ``value`` and check that it is exactly ``length`` ASCII digits."""
    if not isinstance(value, str):
        raise IdentifierError(
            field, "digits_only", f"expected a string of digits, got {type(value).__name__}"
        )
    normalised = normalize_digits(value)
    if normalised == "":
        raise IdentifierError(field, "length", f"is empty; expected {length} digits", value)
    if not _ASCII_DIGITS.fullmatch(normalised):
        raise IdentifierError(field, "digits_only", _not_digits(normalised), value)
    if len(normalised) != length:
        raise IdentifierError(field, "length", f"has {len(normalised)} digits, expected {length}", value)
    return normalised


def _not_digits(normalised: str) -> str:
    position, char = next((i, c) for i, c in enumerate(normalised) if not "0" <= c <= "9")
    return f"must contain only the digits 0-9; U+{ord(char):04X} at position {position + 1}"


def _mod11_check_digit(digits: str) -> int:
    """Modulus-11 check digit of the 個人番号 (総務省令第85号第5条).

    Pn is the nth digit counted from the right (n = 1 is the rightmost), weight Qn = n + 1 for
    n ≤ 6 and n − 5 for n ≥ 7; check = 11 − (Σ Pn·Qn mod 11), and 0 when that remainder is ≤ 1.
    """
    total = 0
    for n, ch in enumerate(reversed(digits), start=1):
        total += (ord(ch) - 48) * (n + 1 if n <= 6 else n - 5)
    remainder = total % 11
    return 0 if remainder <= 1 else 11 - remainder


def municipality_check_digit(five: str) -> int:
    """Check digit of a 地方公共団体コード from its first five digits.

    check = (11 − (d1×6 + d2×5 + d3×4 + d4×3 + d5×2) mod 11) mod 10.
    """
    if len(five) != 5 or not _ASCII_DIGITS.fullmatch(five):
        raise IdentifierError(FIELD_MUNICIPALITY_CODE, "length", "check digit needs exactly 5 digits", five)
    total = sum((ord(ch) - 48) * w for ch, w in zip(five, (6, 5, 4, 3, 2), strict=True))
    return (11 - total % 11) % 10


def resident_code_check_digit(ten: str) -> int:
    """Check digit of a 住民票コード from its ten random digits.

    UNCONFIRMED RULE — this function is the only place it lives. 住民基本台帳法施行規則第1条 puts the
    formula in 平成14年総務省告示第436号, whose text was not found. We read it as the 個人番号
    scheme over ten digits (weights 2–7, 2–5 from the right; 0 when Σ mod 11 ≤ 1), which agrees
    with third-party samples (REFERENCE.md §3). Correct it here if the 告示 says otherwise.
    """
    if len(ten) != 10 or not _ASCII_DIGITS.fullmatch(ten):
        raise IdentifierError(FIELD_RESIDENT_CODE, "length", "check digit needs exactly 10 digits", ten)
    return _mod11_check_digit(ten)


def individual_number_check_digit(eleven: str) -> int:
    """Check digit of a 個人番号 from its first eleven digits (総務省令第85号第5条)."""
    if len(eleven) != 11 or not _ASCII_DIGITS.fullmatch(eleven):
        raise IdentifierError(
            FIELD_INDIVIDUAL_NUMBER, "length", "check digit needs exactly 11 digits", eleven
        )
    return _mod11_check_digit(eleven)


def _check(field: str, value: str, normalised: str, expected: int) -> str:
    actual = ord(normalised[-1]) - 48
    if actual != expected:
        raise IdentifierError(field, "check_digit", f"check digit is {actual}, expected {expected}", value)
    return normalised


def validate_municipality_code(value: str) -> str:
    """The normalised 地方公共団体コード, or :class:`IdentifierError`."""
    digits = _digits(value, FIELD_MUNICIPALITY_CODE, 6)
    return _check(FIELD_MUNICIPALITY_CODE, value, digits, municipality_check_digit(digits[:5]))


def validate_resident_code(value: str) -> str:
    """The normalised 住民票コード, or :class:`IdentifierError`."""
    digits = _digits(value, FIELD_RESIDENT_CODE, 11)
    return _check(FIELD_RESIDENT_CODE, value, digits, resident_code_check_digit(digits[:10]))


def validate_individual_number(value: str) -> str:
    """The normalised 個人番号, or :class:`IdentifierError`."""
    digits = _digits(value, FIELD_INDIVIDUAL_NUMBER, 12)
    return _check(FIELD_INDIVIDUAL_NUMBER, value, digits, individual_number_check_digit(digits[:11]))


_VALIDATORS: Final = {
    "municipality_code": validate_municipality_code,
    "resident_code": validate_resident_code,
    "individual_number": validate_individual_number,
}


def identify(value: str) -> tuple[str, str]:
    """``(kind, normalised)`` for a 6-, 11- or 12-digit identifier, chosen by its length.

    ``kind`` is one of ``municipality_code``, ``resident_code``, ``individual_number``
    (see :data:`KIND_LABELS`). Raises :class:`IdentifierError` naming the failed rule.
    """
    if not isinstance(value, str):
        raise IdentifierError(
            FIELD_IDENTIFIER, "digits_only", f"expected a string, got {type(value).__name__}"
        )
    normalised = normalize_digits(value)
    expected = "6 (地方公共団体コード), 11 (住民票コード) or 12 (個人番号)"
    if normalised == "":
        raise IdentifierError(FIELD_IDENTIFIER, "length", f"is empty; expected {expected} digits", value)
    if not _ASCII_DIGITS.fullmatch(normalised):
        raise IdentifierError(FIELD_IDENTIFIER, "digits_only", _not_digits(normalised), value)
    kind = _KIND_BY_LENGTH.get(len(normalised))
    if kind is None:
        raise IdentifierError(
            FIELD_IDENTIFIER, "length", f"has {len(normalised)} digits, expected {expected}", value
        )
    return kind, _VALIDATORS[kind](value)


# --- 住民票コード generation -------------------------------------------------------------------

# Patterns a person would notice or could guess (thresholds in docs/identifiers.md): a digit four
# times in a row; four consecutive ascending or descending digits, wrapping 9→0 ("7890", "1098");
# a pair three times ("121212"); a block of 3-5 digits twice back to back ("123123", "4345643456").
_ASCENDING: Final = "01234567890123"
_RUNS: Final = sorted(
    {_ASCENDING[i : i + 4] for i in range(10)} | {_ASCENDING[i : i + 4][::-1] for i in range(10)}
)
_OBVIOUS: Final = re.compile(r"([0-9])\1{3}|([0-9]{2})\2\2|([0-9]{3,5})\3|" + "|".join(_RUNS))
OBVIOUS_MAX_DISTINCT: Final = 3


def is_obvious_pattern(ten: str) -> bool:
    """Whether ten digits look made-up rather than random (so are refused as a 住民票コード).

    True when the digits contain a digit four times in a row, four consecutive ascending or
    descending digits (wrapping 9→0), a pair repeated three times, a block of 3 to 5 digits
    repeated back to back, when the first five are the last five reversed, or when the ten use at
    most three distinct digits.
    """
    if _OBVIOUS.search(ten):
        return True
    if ten[:5] == ten[:4:-1]:
        return True
    return len(set(ten)) <= OBVIOUS_MAX_DISTINCT


class ResidentCodeGenerator:
    """Draws fresh 住民票コード: ten random digits (no leading zero, no obvious pattern) + check digit.

    Uniqueness is not this class's job: the numbering store checks every code against all codes
    ever issued. ``rng`` defaults to the operating system's CSPRNG; pass a seeded
    ``random.Random`` only for reproducible demos and tests.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng: random.Random = rng if rng is not None else secrets.SystemRandom()

    def generate_ten(self) -> str:
        """Ten acceptable random digits (the code without its check digit)."""
        randrange = self._rng.randrange
        while True:
            # No leading zero: the code survives tools that read it as a number.
            ten = str(randrange(1_000_000_000, 10_000_000_000))
            if not is_obvious_pattern(ten):
                return ten

    def generate(self) -> str:
        """A new 住民票コード (11 digits)."""
        ten = self.generate_ten()
        return ten + str(resident_code_check_digit(ten))


# --- 個人番号 from 住民票コード -----------------------------------------------------------------

KEY_BYTES: Final = 32  # AES-256
_TWEAK_BYTES: Final = 7  # FF3-1 takes a 56-bit tweak
MAX_GENERATION: Final = 2 ** (8 * _TWEAK_BYTES) - 1


class FixedPointError(Exception):
    """FF3-1 mapped a 住民票コード onto itself for this generation (about 1 code in 10^11).

    The 個人番号 must never repeat the 住民票コード, so such a generation is unusable for that code;
    the numbering store skips to the next generation, exactly as it does for a collision.
    """

    def __init__(self, resident_code: str, generation: int) -> None:
        self.resident_code = resident_code
        self.generation = generation
        super().__init__(
            f"FF3-1 maps 住民票コード {resident_code} onto itself at generation {generation}; "
            "use the next generation (rule: fixed_point)"
        )


def load_or_create_key(path: Path | str) -> bytes:
    """The 256-bit numbering key at ``path``, created (mode 0600) when missing.

    An existing key must be exactly 32 bytes and readable by its owner only; anything else is
    refused rather than silently replaced, because a new key would change every future number.
    """
    key_path = Path(path)
    key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        key = secrets.token_bytes(KEY_BYTES)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key)
        os.chmod(key_path, 0o600)  # the umask may have narrowed it further; never widened
        return key
    mode = key_path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PermissionError(
            f"numbering key {key_path} has mode {mode:04o}; it must be 0600 (rule: key_mode)"
        )
    key = key_path.read_bytes()
    if len(key) != KEY_BYTES:
        raise ValueError(
            f"numbering key {key_path} has {len(key)} bytes, expected {KEY_BYTES} (rule: key_length)"
        )
    return key


class IndividualNumberCipher:
    """個人番号 = FF3-1(住民票コード, tweak = generation) + check digit, under a secret AES-256 key.

    FF3-1 (NIST SP 800-38G Rev. 1) is a keyed permutation of the 10^11 eleven-digit strings, so
    two codes never share a number (per generation), and without the key the number cannot be
    computed from the code nor the code from the number. The generation (0 at first assignment,
    +1 at each reissue after a leak) is the 56-bit tweak, giving each generation its own
    permutation.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"numbering key has {len(key)} bytes, expected {KEY_BYTES} (rule: key_length)")
        self._ff3 = FF3Cipher(key.hex(), "00" * _TWEAK_BYTES, radix=10)

    @classmethod
    def from_key_file(cls, path: Path | str) -> IndividualNumberCipher:
        """A cipher using the key at ``path`` (created when missing, see :func:`load_or_create_key`)."""
        return cls(load_or_create_key(path))

    @staticmethod
    def tweak_for(generation: int) -> str:
        """The FF3-1 tweak (7 bytes, hex) for ``generation``."""
        if (
            isinstance(generation, bool)
            or not isinstance(generation, int)
            or not 0 <= generation <= MAX_GENERATION
        ):
            raise ValueError(f"generation must be an integer in 0..{MAX_GENERATION} (rule: generation_range)")
        return generation.to_bytes(_TWEAK_BYTES, "big").hex()

    def number_for(self, resident_code: str, generation: int = 0) -> str:
        """The 個人番号 of ``resident_code`` at ``generation``.

        Raises :class:`IdentifierError` for a bad code and :class:`FixedPointError` in the rare case
        that the permutation leaves the code unchanged (the caller moves to the next generation).
        """
        code = validate_resident_code(resident_code)
        eleven: str = self._ff3.encrypt_with_tweak(code, self.tweak_for(generation))
        if eleven == code:
            raise FixedPointError(code, generation)
        return eleven + str(_mod11_check_digit(eleven))

    def resident_code_for(self, number: str, generation: int = 0) -> str:
        """The 住民票コード a 個人番号 was made from (audits and tests only).

        Raises :class:`IdentifierError` (rule ``key_mismatch``) when the result is not a valid
        住民票コード, i.e. the number was not made with this key and generation.
        """
        digits = validate_individual_number(number)
        code: str = self._ff3.decrypt_with_tweak(digits[:11], self.tweak_for(generation))
        if resident_code_check_digit(code[:10]) != ord(code[10]) - 48 or code == digits[:11]:
            raise IdentifierError(
                FIELD_INDIVIDUAL_NUMBER,
                "key_mismatch",
                f"was not made with this key at generation {generation}",
                digits,
            )
        return code
