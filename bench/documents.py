"""Document benchmark: 住民票の写し (世帯連記式, three persons, every option) as PDF.

Ours: :func:`kiban.register.documents.issue_resident_copy` end to end — validation, 和暦, the
ledger row (serial, SHA-256 of the canonical data, HMAC code) in SQLite, layout, QR code, PDF
with the subset-embedded IPAex Mincho. Baseline, in the same run: a bare reportlab PDF with
the same font and the same text (every label and value, one plain line each, no layout, no
ledger, no QR). The goal is ours/bare ≤ 3.

Run: ``kiban bench documents`` or ``python bench/documents.py``.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from reportlab.lib.pagesizes import A4
from reportlab.pdfgen.canvas import Canvas

from kiban.core.database import make_engine, session_factory, upgrade
from kiban.core.documents import FONT_NAME, KeyDirectorySigners, document_font
from kiban.register import documents as docs

CODE = "212016"


def _entries() -> list[docs.ResidentEntry]:
    common: dict[str, Any] = {
        "municipality_code": CODE,
        "household_head_name": "成田　公正",
        "address": "岐阜県岐阜市福住町2丁目30番10号",
        "address_since": date(2019, 11, 21),
        "resident_since": date(2019, 11, 21),
        "previous_address": "北海道美唄市峰延町峰樺1701番地",
        "honseki": "兵庫県三木市上の丸町247番地",
        "hittousha": "成田　公正",
    }
    people = [
        ("16468926133", "成田", "公正", "ナリタ", "コウセイ", date(1979, 10, 12), 1, "世帯主"),
        ("37267057916", "成田", "鴻江", "ナリタ", "ヒロエ", date(1985, 11, 23), 2, "妻"),
        ("41836525050", "成田", "泰枝", "ナリタ", "ヤスエ", date(2018, 10, 16), 2, "子"),
    ]
    return [
        docs.ResidentEntry(
            resident_code=code,
            family_name=family,
            given_name=given,
            family_name_kana=family_kana,
            given_name_kana=given_kana,
            birth_date=birth,
            sex=sex,
            relationship=relationship,
            individual_number=f"12345678901{i}",
            **common,
        )
        for i, (code, family, given, family_kana, given_kana, birth, sex, relationship) in enumerate(people)
    ]


def _lines(data: Any) -> list[str]:
    """Every string of the document's data (labels and values), as the bare PDF's lines."""
    if isinstance(data, dict):
        return [line for key, value in data.items() for line in (key, *_lines(value))]
    if isinstance(data, list):
        return [line for item in data for line in _lines(item)]
    return [str(data)]


def _bare_pdf(lines: list[str]) -> bytes:
    buffer = io.BytesIO()
    canvas = Canvas(buffer, pagesize=A4, pageCompression=1, invariant=True, initialFontName=FONT_NAME)
    canvas.setFont(FONT_NAME, 10)
    y = 800.0
    for line in lines:
        if y < 40:
            canvas.showPage()
            canvas.setFont(FONT_NAME, 10)
            y = 800.0
        canvas.drawString(40, y, line)
        y -= 14
    canvas.showPage()
    canvas.save()
    return buffer.getvalue()


def run(n: int = 200, **_: Any) -> list[dict[str, Any]]:
    """Time ``n`` documents each way, interleaved in chunks of 20 so both see the same machine."""
    document_font()
    entries = _entries()
    options = docs.CopyOptions(honseki=True, relationship=True, resident_code=True, individual_number=True)
    request = docs.ResidentCopyRequest(CODE, entries, "bench", household=True, options=options)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.sqlite'}"
        upgrade(url)
        engine = make_engine(url)
        factory = session_factory(engine)
        signers = KeyDirectorySigners(Path(tmp) / "keys")
        with factory.begin() as session:  # warm-up: font subsetting tables, QR, imports
            sample = docs.issue_resident_copy(session, request, signers=signers)
        lines = _lines(sample.data) + [sample.serial, sample.issuance.verification_code]
        _bare_pdf(lines)

        ours = bare = 0.0
        done = 0
        ours_bytes = bare_bytes = 0
        while done < n:
            chunk = min(20, n - done)
            started = time.perf_counter()
            with factory.begin() as session:
                for _i in range(chunk):
                    ours_bytes += len(docs.issue_resident_copy(session, request, signers=signers).pdf)
            ours += time.perf_counter() - started
            started = time.perf_counter()
            for _i in range(chunk):
                bare_bytes += len(_bare_pdf(lines))
            bare += time.perf_counter() - started
            done += chunk
        engine.dispose()
    return [
        {
            "bench": "documents",
            "name": "resident_copy_household_pdf",
            "value": round(ours / n * 1000, 2),
            "unit": "ms/document",
            "baseline": round(bare / n * 1000, 2),
            "baseline_name": "bare reportlab PDF, same font and text lines",
            "ratio": float(f"{ours / bare:.4g}"),
            "goal_ratio_max": 3,
            "n": n,
            "pages": sample.pages,
            "avg_bytes": ours_bytes // n,
            "bare_avg_bytes": bare_bytes // n,
        }
    ]


if __name__ == "__main__":
    for result in run():
        print(json.dumps(result, ensure_ascii=False))
