"""Certificate issuance benchmark (SPEC K5: ~15 million renewals a year).

Ours: :func:`kiban.jpki.service.issue_personal_certificates` end to end for 利用者証明用 and
署名用 certificates — holder checks, validity rules, character rules, serial uniqueness query,
the CA row lock, signing, and the certificate rows, 発行記録 and audit entries written to SQLite
and committed — in batches of ``batch`` requests (the renewal wave is processed in batches).
Baseline, in the same run: raw ``cryptography`` signing of the same certificates (the same
builders from :mod:`kiban.jpki.profiles`, the same RSA-2048 CA key, nothing stored).
The goal is ours/raw ≥ 0.6 as a rate.

Run: ``kiban bench jpki_issue`` or ``python bench/jpki_issue.py``.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from kiban.core.database import make_engine, session_factory, upgrade
from kiban.jpki import profiles, service
from kiban.jpki.keys import FileKeyStore
from kiban.jpki.profiles import HolderInfo

BASE = "http://127.0.0.1:8000"


def _holders(n: int) -> list[HolderInfo]:
    return [
        HolderInfo(
            resident_code=f"{10_000_000_000 + i:011d}",
            name="髙橋　花子" if i % 7 == 0 else "山田　太郎",
            birth_date=date(1960 + i % 45, 1 + i % 12, 1 + i % 28),
            sex=1 + i % 2,
            address=f"東京都千代田区永田町一丁目{1 + i % 9}番{1 + i % 20}号",
            card_id=f"card-{i}",
        )
        for i in range(n)
    ]


def run(n: int = 500, batch: int = 100, **_: Any) -> list[dict[str, Any]]:
    """Issue ``n`` user-auth and ``n`` signature certificates each way (RSA-2048 CA keys)."""
    now = datetime.now(UTC).replace(microsecond=0)
    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key() for _ in range(4)]
    holders = _holders(n)
    requests = {
        kind: [service.PersonalRequest(keys[i % 4], h, date(2036, 1, 1)) for i, h in enumerate(holders)]
        for kind in ("user_auth", "signature")
    }
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.sqlite'}"
        upgrade(url)
        engine = make_engine(url)
        factory = session_factory(engine)
        store = FileKeyStore(Path(tmp) / "keys")
        with factory.begin() as session:
            service.init_hierarchies(session, store, BASE, now=now - timedelta(days=1))
            issuers = {k: service.issuer_of(service.get_ca(session, service.KIND_CA[k])) for k in requests}
        ca_keys = {k: store._private(service.KIND_CA[k]) for k in requests}  # the same key, for the baseline
        # Warm-up, one full batch of other holders per kind through our path (statement caches,
        # per-CA extension caches); the raw path shares those extension caches.
        warm = [
            service.PersonalRequest(
                keys[i % 4],
                replace(h, resident_code=f"{90_000_000_000 + i:011d}", card_id=f"warm-{i}"),
                date(2036, 1, 1),
            )
            for i, h in enumerate(_holders(min(batch, n)))
        ]
        for kind in ("user_auth", "signature"):
            with factory.begin() as session:
                service.issue_personal_certificates(session, store, kind, warm, now=now)
        for kind in ("user_auth", "signature"):
            ours = raw = 0.0
            for index, start in enumerate(range(0, n, batch)):
                chunk = requests[kind][start : start + batch]

                def ours_chunk(chunk: list[service.PersonalRequest] = chunk, kind: str = kind) -> float:
                    started = time.perf_counter()
                    with factory.begin() as session:
                        service.issue_personal_certificates(session, store, kind, chunk, now=now)
                    return time.perf_counter() - started

                def raw_chunk(chunk: list[service.PersonalRequest] = chunk, kind: str = kind) -> float:
                    started = time.perf_counter()
                    for request in chunk:
                        builder = profiles.personal_builder(
                            kind,
                            issuer=issuers[kind],
                            public_key=request.public_key,
                            serial=profiles.new_serial(),
                            subject_id=profiles.opaque_id(),
                            not_before=now,
                            not_after=now + timedelta(days=1800),
                            crl_url=f"{BASE}/crl/{issuers[kind].ca_id}/1.crl",
                            holder=request.holder,
                        )
                        builder.sign(ca_keys[kind], hashes.SHA256())
                    return time.perf_counter() - started

                # alternate which goes first, so neither always meets a cold or a busy machine
                if index % 2 == 0:
                    ours += ours_chunk()
                    raw += raw_chunk()
                else:
                    raw += raw_chunk()
                    ours += ours_chunk()
            results.append(
                {
                    "bench": "jpki_issue",
                    "name": f"issue_{kind}",
                    "value": round(n / ours, 1),
                    "unit": "certificates/s",
                    "baseline": round(n / raw, 1),
                    "baseline_name": "raw cryptography CertificateBuilder.sign, same certificates, RSA-2048",
                    "ratio": float(f"{raw / ours:.4g}"),
                    "goal_ratio_min": 0.6,
                    "n": n,
                    "batch": batch,
                }
            )
        engine.dispose()
    return results


if __name__ == "__main__":
    for line in run():
        print(json.dumps(line, ensure_ascii=False, sort_keys=True))
