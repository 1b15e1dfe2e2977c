"""Kiosk issuance benchmark (SPEC K6: ~36 million documents a year).

Ours: a whole kiosk session through :class:`kiban.kiosk.service.Centre` — challenge, the card's
signature, certificate chain/validity/CA status, holder resolution, participation, DV check,
the municipal issuing function (住民票の写し: ledger row, audit, PDF, PAdES signature with the
signed QR code), the end-to-end binding check,
the issuance row, close — on 2 worker threads. Baseline, in the same run: the municipality's
issuing function alone (:class:`kiban.kiosk.issuing.RegisterIssuer`) making the same signed
documents for the same holders. The ratio ours/baseline is the protocol's overhead as a rate.

Run: ``kiban bench kiosk_issue`` or ``python bench/kiosk_issue.py``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kiban.core.database import make_engine, session_factory, upgrade
from kiban.kiosk.issuing import MunicipalRequest, RegisterIssuer
from kiban.kiosk.signing import pades_finisher

# The kiosk tests' world builder (cards handed over through the cards service) is reused as is.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from kiosk_support import build_world, sign_in  # noqa: E402


def run(n: int = 200, holders: int = 20, workers: int = 2, **_: Any) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.sqlite'}"
        upgrade(url)
        engine = make_engine(url)
        factory = session_factory(engine)
        world = build_world(engine, factory, Path(tmp), people=max(60, holders * 3), holders=holders)
        codes = sorted(world.cards)
        # The same documents, PAdES-signed the same way, without the session protocol around them.
        issuer = RegisterIssuer(
            factory, signers=world.signers, finish=pades_finisher(factory, world.keystore)
        )

        def baseline(i: int) -> None:
            code = codes[i % len(codes)]
            request = MunicipalRequest(
                uuid.uuid4().hex, uuid.uuid4().hex, world.municipality[code], code, "resident_copy"
            )
            assert issuer(request).refusal is None

        def ours(i: int) -> None:
            code = codes[i % len(codes)]
            sid = sign_in(world, code)
            world.centre.request_document(world.kiosk, sid, "resident_copy")
            world.centre.close(world.kiosk, sid)

        for fn in (baseline, ours):  # warm-up
            for i in range(min(10, n)):
                fn(i)
        rates: dict[str, float] = {}
        for name, fn in (("baseline", baseline), ("ours", ours)):
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(fn, range(n)))
            rates[name] = n / (time.perf_counter() - started)
        engine.dispose()
    return [
        {
            "bench": "kiosk_issue",
            "n": n,
            "workers": workers,
            "ours_per_s": round(rates["ours"], 1),
            "baseline_pdf_only_per_s": round(rates["baseline"], 1),
            "ratio": round(rates["ours"] / rates["baseline"], 3),
            "goal": "ratio ≥ 0.5 (the protocol at most doubles the cost of making the PDF)",
        }
    ]


if __name__ == "__main__":
    for line in run():
        print(json.dumps(line, ensure_ascii=False))
