"""CRL generation benchmark: a full CRL with ``n`` revoked entries (SPEC K5: CRLs grow large).

Ours: :func:`kiban.jpki.crl.publish_crl` (scope "full") end to end — the query over the CA's
revoked and held certificates in SQLite, the entries with reason codes and invalidity dates, the
signature with the RSA-2048 CA key, the CRL stored with its number. Baseline, in the same run:
``cryptography``'s ``CertificateRevocationListBuilder`` alone on the same entries (serials, dates,
reasons held in Python lists, times as naive UTC; entries built with the documented fluent
``RevokedCertificateBuilder`` API, the CRL signed with the same key; nothing read or stored).
Ours builds the entries through the builder's constructor with shared ``Extension`` objects.
The goal is ours/baseline ≥ 0.5 as a rate. The completeness check
(:func:`kiban.jpki.crl.check_crl_complete`) and the setup (inserting ``n`` certificate rows) are
reported separately: they are not CRL generation.

Run: ``kiban bench jpki_crl`` or ``python bench/jpki_crl.py`` (n=1,000,000 needs ~2 GB of memory).
"""

from __future__ import annotations

import json
import secrets
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import Table, insert

from kiban.core.database import make_engine, session_factory, upgrade
from kiban.jpki import crl, profiles, service
from kiban.jpki.keys import FileKeyStore
from kiban.jpki.models import Certificate

BASE = "http://127.0.0.1:8000"
REASONS = ("affiliationChanged", "superseded", "keyCompromise", "cessationOfOperation", "certificateHold")


def run(n: int = 1_000_000, **_: Any) -> list[dict[str, Any]]:
    """Publish one full CRL of ``n`` entries each way and compare the rates."""
    now = datetime.now(UTC).replace(microsecond=0)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.sqlite'}"
        upgrade(url)
        engine = make_engine(url)
        factory = session_factory(engine)
        store = FileKeyStore(Path(tmp) / "keys")
        with factory.begin() as session:
            service.init_hierarchies(
                session, store, BASE, now=now - timedelta(days=30), partition_threshold=10**9
            )
            ca = service.get_ca(session, "jpki-auth")
            ca_cert = service.ca_certificate(ca)

        started = time.perf_counter()
        serials: list[int] = []
        changed: list[datetime] = []
        reasons: list[str] = []
        invalid: list[datetime | None] = []
        table = cast(Table, Certificate.__table__)
        chunk: list[dict[str, Any]] = []
        with factory.begin() as session:
            connection = session.connection()
            for i in range(n):
                serial = secrets.randbits(159) | (1 << 150)
                when = now - timedelta(seconds=1 + i % 86_400)
                reason = REASONS[i % len(REASONS)]
                invalidity = when - timedelta(days=1) if reason == "affiliationChanged" else None
                serials.append(serial)
                changed.append(when)
                reasons.append(reason)
                invalid.append(invalidity)
                chunk.append(
                    {
                        "ca_id": "jpki-auth",
                        "serial": profiles.serial_hex(serial),
                        "kind": "user_auth",
                        "resident_code": None,
                        "card_id": None,
                        "subject_id": "bench",
                        "subject": "CN=bench",
                        "status": "hold" if reason == "certificateHold" else "revoked",
                        "reason": reason,
                        "status_changed_at": when,
                        "invalidity_date": invalidity,
                        "replaced_by": None,
                        "renewal_of": None,
                        "partition": 1 + i // 100_000,
                        "not_before": now - timedelta(days=30),
                        "not_after": now + timedelta(days=365),
                        "der": b"",
                    }
                )
                if len(chunk) == 20_000:
                    connection.execute(insert(table), chunk)
                    chunk = []
            if chunk:
                connection.execute(insert(table), chunk)
            ca = service.get_ca(session, "jpki-auth")
            ca.issued_count = n
        setup = time.perf_counter() - started

        started = time.perf_counter()
        with factory.begin() as session:
            published = crl.publish_crl(session, store, "jpki-auth", now, scope="full", check=False)[0]
        ours = time.perf_counter() - started
        assert published.entries == n

        key = store._private(ca.key_label)  # the same CA key, for the baseline only
        flags = {name: x509.CRLReason(x509.ReasonFlags(name)) for name in REASONS}
        # naive UTC, the builder's cheapest input, prepared outside the timed part
        naive_changed = [w.replace(tzinfo=None) for w in changed]
        naive_invalid = [w.replace(tzinfo=None) if w is not None else None for w in invalid]
        started = time.perf_counter()
        entries = []
        for serial, when, reason, invalidity in zip(
            serials, naive_changed, reasons, naive_invalid, strict=True
        ):
            builder = (
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(when)
                .add_extension(flags[reason], critical=False)
            )
            if invalidity is not None:
                builder = builder.add_extension(x509.InvalidityDate(invalidity), critical=False)
            entries.append(builder.build())
        baseline_crl = x509.CertificateRevocationListBuilder(
            issuer_name=ca_cert.subject,
            last_update=now,
            next_update=now + timedelta(days=1),
            extensions=[x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(1))],
            revoked_certificates=entries,
        ).sign(key, hashes.SHA256())
        raw = time.perf_counter() - started
        baseline_size = len(baseline_crl.public_bytes(Encoding.DER))
        del entries, baseline_crl

        started = time.perf_counter()
        with factory.begin() as session:
            check = crl.check_crl_complete(session, published.der)
        checking = time.perf_counter() - started
        engine.dispose()
    return [
        {
            "bench": "jpki_crl",
            "name": "full_crl_generation",
            "value": round(n / ours, 1),
            "unit": "entries/s",
            "baseline": round(n / raw, 1),
            "baseline_name": "cryptography CertificateRevocationListBuilder alone, same entries, RSA-2048",
            "ratio": float(f"{raw / ours:.4g}"),
            "goal_ratio_min": 0.5,
            "n": n,
            "seconds": round(ours, 2),
            "baseline_seconds": round(raw, 2),
            "crl_bytes": len(published.der),
            "baseline_crl_bytes": baseline_size,
            "check_seconds": round(checking, 2),
            "check_ok": check.ok,
            "setup_seconds": round(setup, 2),
        }
    ]


if __name__ == "__main__":
    for line in run():
        print(json.dumps(line, ensure_ascii=False, sort_keys=True))
