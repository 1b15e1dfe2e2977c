"""Suspension → OCSP "on hold" latency (SPEC K4 call centre, issue 6), as a ratio to the refresh interval.

For each of ``n`` issued cards (P-256 keys, real certificates from the CA on SQLite): the call
centre's suspension commits, the outbox is delivered (``cards.state_changed`` → the CA holds both
certificates → ``jpki.certificate_status_changed`` → the stored OCSP response is re-signed), and an
OCSP request is sent to the responder (in process, over ASGI) until it answers ``certificateHold``.
The latency runs from just before the suspension to that answer. The figure is p99 latency divided
by the responder's cache poll interval (``kiban.jpki.ocsp.POLL_INTERVAL``, the interval at which a
responder replica picks up a changed response): ≤ 1 means a hold is visible within one refresh.
In this embedded run the change also evicts the in-process cache at once; a separate replica adds
up to one poll interval. Baseline in the same run: the latency of an OCSP answer for a good
certificate (request → response only).

Run: ``kiban bench cards_suspension`` (``-p n=50``) or ``python bench/cards_suspension.py [n]``.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp as x509_ocsp
from sqlalchemy import select
from starlette.testclient import TestClient

from kiban.cards import service
from kiban.cards.handlers import register_handlers as cards_handlers
from kiban.cards.service import Actor, Application, IdentityCheck
from kiban.cards.softcard import CardFace, SoftCard
from kiban.core.database import make_engine, session_factory, upgrade
from kiban.core.events import Registry, drain
from kiban.jpki import ocsp
from kiban.jpki import service as jpki
from kiban.jpki.handlers import register_handlers as jpki_handlers
from kiban.jpki.keys import FileKeyStore
from kiban.register.loader import load_population
from kiban.register.models import Resident
from kiban.register.population import generate_population

A = "131016"
PINS = {"user_auth": "1234", "signature": "ABC123", "juki": "5678", "face": "9012"}


def _codes(n: int) -> list[str]:
    import random

    from kiban.core.identifiers import ResidentCodeGenerator

    generate = ResidentCodeGenerator(random.Random(2)).generate
    out: dict[str, None] = {}
    while len(out) < n:
        out[generate()] = None
    return list(out)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run(n: int = 50, **_: Any) -> list[dict[str, Any]]:
    clerk = Actor("bench-clerk", "clerk", A)
    agent = Actor("bench-agent", "call_centre")
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.sqlite'}"
        upgrade(url)
        engine = make_engine(url)
        factory = session_factory(engine)
        ks = FileKeyStore(Path(tmp) / "keys")
        ocsp.configure(ks)
        registry = Registry()
        jpki_handlers(registry)
        cards_handlers(registry)
        load_population(
            engine, generate_population([A], 4 * n, seed=4, as_of=date(2025, 4, 1)), iter(_codes(8 * n))
        )
        now = datetime.now(UTC)
        cards: list[tuple[str, str]] = []
        with factory.begin() as s:
            jpki.init_hierarchies(
                s, ks, "http://127.0.0.1:8000", algorithm="p256", now=now - timedelta(days=1)
            )
            adults = [
                r.resident_code
                for r in s.scalars(select(Resident).where(Resident.status == "active"))
                if (date.today() - r.birth_date).days > 20 * 366 and r.period_of_stay_end is None
            ][:n]
            forms = service.issue_forms(s, clerk, adults, A)
            for code in adults:
                card = service.apply(s, clerk, Application(forms[code]))
                service.check(s, clerk, card.card_id)
            service.order_production(s, clerk, limit=n)
            for card in s.scalars(select(service.Card).where(service.Card.state == "ordered")):
                service.record_produced(s, clerk, card.card_id, expires_on=date(2035, 1, 1))
                service.record_shipped(s, clerk, card.card_id)
                service.record_notified(s, clerk, card.card_id)
                soft = SoftCard.blank(
                    CardFace(
                        card.card_id, "試験　太郎", "東京都千代田区", date(1980, 1, 1), 1, date(2035, 1, 1), A
                    ),
                    algorithm="p256",
                )
                result = service.hand_over(
                    s,
                    clerk,
                    card.card_id,
                    soft=soft,
                    identity=IdentityCheck(("passport",)),
                    pins=PINS,
                    keystore=ks,
                )
                cards.append((card.card_id, result.user_auth_serial))
            ocsp.ensure_signers(s, ks, datetime.now(UTC))
            ocsp.refresh_responses(s, ks, datetime.now(UTC))
        drain(factory, registry)
        with factory() as s:
            issuer = jpki.ca_certificate(jpki.get_ca(s, "jpki-auth"))
            requests = {
                serial: x509_ocsp.OCSPRequestBuilder()
                .add_certificate(
                    x509.load_der_x509_certificate(jpki.find_certificate(s, serial).der),
                    issuer,
                    hashes.SHA1(),
                )
                .build()
                .public_bytes(serialization.Encoding.DER)
                for _, serial in cards
            }
        responder = ocsp.OcspResponder(factory, ks, anonymous_rate=1e9, identify=lambda _s, _t: None)
        client = TestClient(responder, base_url="http://testserver")

        def status(serial: str) -> x509_ocsp.OCSPResponse:
            body = requests[serial]
            answer = client.post("/ocsp", content=body, headers={"content-type": ocsp.MEDIA_REQUEST})
            return x509_ocsp.load_der_ocsp_response(answer.content)

        good_latency: list[float] = []
        hold_latency: list[float] = []
        try:
            for _, serial in cards:  # warm the cache; baseline: a good answer
                started = time.perf_counter()
                assert status(serial).certificate_status == x509_ocsp.OCSPCertStatus.GOOD
                good_latency.append(time.perf_counter() - started)
            for i, (card_id, serial) in enumerate(cards):
                started = time.perf_counter()
                with factory.begin() as s:
                    service.suspend(s, agent, card_id, reason="lost", request_id=f"bench-{i}")
                drain(factory, registry)
                while True:
                    resp = status(serial)
                    if resp.certificate_status == x509_ocsp.OCSPCertStatus.REVOKED:
                        assert resp.revocation_reason == x509.ReasonFlags.certificate_hold
                        break
                    if time.perf_counter() - started > 30:
                        raise RuntimeError(f"{serial} not on hold after 30 s")
                hold_latency.append(time.perf_counter() - started)
        finally:
            responder.stop()
            ocsp.configure(None)
            engine.dispose()
    p99 = _percentile(hold_latency, 0.99)
    return [
        {
            "bench": "cards_suspension",
            "name": "suspension_to_ocsp_hold_p99",
            "value": round(p99 * 1000, 1),
            "unit": "ms",
            "p50_ms": round(statistics.median(hold_latency) * 1000, 1),
            "max_ms": round(max(hold_latency) * 1000, 1),
            "baseline": round(_percentile(good_latency, 0.99) * 1000, 2),
            "baseline_name": "p99 of an OCSP answer for a good certificate, same responder",
            "refresh_interval_ms": ocsp.POLL_INTERVAL * 1000,
            "ratio": float(f"{p99 / ocsp.POLL_INTERVAL:.4g}"),
            "goal_ratio_max": 1.0,
            "meets_goal": p99 <= ocsp.POLL_INTERVAL,
            "n": len(hold_latency),
            "database": "sqlite",
        }
    ]


if __name__ == "__main__":
    for line in run(n=int(sys.argv[1]) if len(sys.argv) > 1 else 50):
        print(json.dumps(line, ensure_ascii=False, sort_keys=True))
