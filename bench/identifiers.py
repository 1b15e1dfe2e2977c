"""Identifier benchmarks: validation, 個人番号 generation, 住民票コード generation.

Each figure comes with a baseline measured in the same run on the same machine, so the ratio is
what to compare between runs:

- validation of 個人番号 vs a loop doing only ``str.isdigit()`` and ``int()``;
- 個人番号 generation (FF3-1, 8 AES rounds in Python) vs one raw AES-256-ECB block with
  ``cryptography``;
- 住民票コード generation (CSPRNG, pattern filter, check digit) vs ``secrets.randbelow``.

Run: ``kiban bench identifiers`` or ``python bench/identifiers.py``.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from kiban.core.identifiers import (
    IndividualNumberCipher,
    ResidentCodeGenerator,
    individual_number_check_digit,
    validate_individual_number,
)


def _rate(loop: Callable[[int], object], seconds: float) -> float:
    """Operations per second of ``loop(n)`` (which performs n operations), run for ~``seconds``."""
    n = 1_000
    while True:
        started = time.perf_counter()
        loop(n)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds or n >= 50_000_000:
            return n / elapsed
        n = max(n * 2, int(n * seconds / max(elapsed, 1e-6) * 1.1))


def _result(name: str, value: float, unit: str, baseline: float, baseline_name: str) -> dict[str, Any]:
    return {
        "bench": "identifiers",
        "name": name,
        "value": round(value, 1),
        "unit": unit,
        "baseline": round(baseline, 1),
        "baseline_name": baseline_name,
        "ratio": float(f"{value / baseline:.4g}"),
    }


def run(seconds: float | int = 1.5, **_: Any) -> list[dict[str, Any]]:
    """Run the three benchmarks (~6 × ``seconds`` in all) and return JSON-able result dicts."""
    seconds = float(seconds)
    rng = random.Random(2026)
    numbers = []
    for _i in range(10_000):
        eleven = f"{rng.randrange(10**11):011d}"
        numbers.append(eleven + str(individual_number_check_digit(eleven)))

    def validate(n: int) -> None:
        for i in range(n):
            validate_individual_number(numbers[i % 10_000])

    def digits_only(n: int) -> None:
        for i in range(n):
            s = numbers[i % 10_000]
            if s.isdigit():
                int(s)

    cipher = IndividualNumberCipher(os.urandom(32))
    generator = ResidentCodeGenerator(random.Random(7))
    codes = [generator.generate() for _ in range(10_000)]

    def number_for(n: int) -> None:
        for i in range(n):
            cipher.number_for(codes[i % 10_000])

    encryptor = Cipher(algorithms.AES(os.urandom(32)), modes.ECB()).encryptor()
    block = os.urandom(16)

    def aes_block(n: int) -> None:
        update = encryptor.update
        for _ in range(n):
            update(block)

    system_generator = ResidentCodeGenerator()

    def resident_codes(n: int) -> None:
        for _ in range(n):
            system_generator.generate()

    def randbelow(n: int) -> None:
        for _ in range(n):
            secrets.randbelow(10**10)

    return [
        _result(
            "validate_individual_number",
            _rate(validate, seconds),
            "validations/s",
            _rate(digits_only, seconds),
            "str.isdigit()+int()",
        ),
        _result(
            "individual_number_ff3_1",
            _rate(number_for, seconds),
            "numbers/s",
            _rate(aes_block, seconds),
            "AES-256-ECB one block (cryptography)",
        ),
        _result(
            "resident_code_generate",
            _rate(resident_codes, seconds),
            "codes/s",
            _rate(randbelow, seconds),
            "secrets.randbelow(10**10)",
        ),
    ]


if __name__ == "__main__":
    for line in run():
        print(json.dumps(line, ensure_ascii=False, sort_keys=True))
