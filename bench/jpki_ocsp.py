"""OCSP throughput and p99 latency (SPEC K5: ~490 million OCSP responses a year, rate limits).

Ours: ``kiban serve --workers W`` (a real subprocess, uvicorn) answering ``POST /ocsp`` from
pre-signed responses, with the per-verifier rate limiter on (at a limit it never reaches).
Baseline, in the same run: OpenSSL's own responder, ``openssl ocsp -index index.txt -port P
-rsigner … -rkey … -CA …``, over the same certificates (its index.txt written from our table),
signing with the same delegated P-256 key. Both are driven by the same client: ``clients``
processes of asyncio connections (``concurrency`` in all) sending the same DER requests (SHA-1
CertIDs, no nonce — what a cache-friendly verifier sends), keep-alive when the server allows it,
a new connection when it closes. Rounds alternate ours / openssl, ``seconds`` each; throughput
is answers per second over all rounds, p99 over every answer. The goal is ours ≥ 5× openssl.

Run: ``kiban bench jpki_ocsp`` (``-p n=1000 -p seconds=5 -p rounds=2 -p workers=2 -p
concurrency=32 -p clients=2``) or ``python bench/jpki_ocsp.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp as x509_ocsp
from sqlalchemy import select

PEM = serialization.Encoding.PEM
SERVE = "import typer; from kiban.cli.serve import serve; typer.run(serve)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_bytes()
        if b"waiting for OCSP client connections" in text or b"Application startup complete" in text:
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server did not start:\n{text.decode(errors='replace')[-2000:]}")
        time.sleep(0.2)


# --- the world -------------------------------------------------------------------------------------


def _world(directory: Path, n: int) -> dict[str, Any]:
    """A data directory with n user-auth certificates (10 % revoked, 2 % held), pre-signed."""
    from kiban.core.config import load_settings
    from kiban.core.database import make_engine, session_factory, upgrade
    from kiban.jpki import ocsp, service
    from kiban.jpki.keys import FileKeyStore
    from kiban.jpki.models import Certificate, OcspSigner
    from kiban.jpki.profiles import HolderInfo

    settings = load_settings(directory / "data")
    settings.ensure_dirs()
    upgrade(settings.database_url)
    factory = session_factory(make_engine(settings.database_url))
    store = FileKeyStore(settings.keys_dir)
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    with factory.begin() as session:
        service.init_hierarchies(session, store, "http://127.0.0.1:8000", now=now - timedelta(days=1))
        requests = [
            service.PersonalRequest(
                key,
                HolderInfo(
                    resident_code=f"{30_000_000_000 + i:011d}",
                    name="山田　太郎",
                    birth_date=date(1970 + i % 40, 1 + i % 12, 1 + i % 28),
                    sex=1,
                    address="岐阜県美濃加茂市太田町３４３１番地１",
                    card_id=f"bench-{i}",
                ),
                date(2036, 1, 1),
            )
            for i in range(n)
        ]
        issued = []
        for start in range(0, n, 500):
            issued += service.issue_personal_certificates(
                session, store, "user_auth", requests[start : start + 500], now=now
            )
        rng = random.Random(7)
        for item in issued:
            roll = rng.random()
            if roll < 0.10:
                service.revoke(session, item.serial, reason="keyCompromise", now=now + timedelta(minutes=1))
            elif roll < 0.12:
                service.hold(session, item.serial, now=now + timedelta(minutes=1))
        stats = ocsp.refresh_responses(session, store, now + timedelta(minutes=2))
        assert stats.failed == 0, stats
        rows = list(session.scalars(select(Certificate).where(Certificate.kind == "user_auth")))
        signer = session.scalars(select(OcspSigner).where(OcspSigner.ca_id == "jpki-auth")).one()
        issuer = service.ca_certificate(service.get_ca(session, "jpki-auth"))
    pki = directory / "pki"
    pki.mkdir()
    (pki / "issuer.pem").write_bytes(issuer.public_bytes(PEM))
    (pki / "signer.pem").write_bytes(x509.load_der_x509_certificate(signer.certificate_der).public_bytes(PEM))
    private = store._private(signer.key_label)
    (pki / "signer.key").write_bytes(
        private.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    lines = []
    for row in rows:
        serial = f"{int(row.serial, 16):X}"
        serial = serial.rjust(len(serial) + len(serial) % 2, "0")
        expiry = row.not_after.astimezone(UTC).strftime("%y%m%d%H%M%SZ")
        if row.status == "good":
            lines.append(f"V\t{expiry}\t\t{serial}\tunknown\t/CN={row.subject_id}")
        else:
            assert row.status_changed_at is not None
            when = row.status_changed_at.astimezone(UTC).strftime("%y%m%d%H%M%SZ")
            reason = "certificateHold,holdInstructionReject" if row.status == "hold" else row.reason
            lines.append(f"R\t{expiry}\t{when},{reason}\t{serial}\tunknown\t/CN={row.subject_id}")
    (pki / "index.txt").write_text("\n".join(lines) + "\n")
    bodies = []
    expected = {}
    for row in rows:
        cert = x509.load_der_x509_certificate(row.der)
        der = (
            x509_ocsp.OCSPRequestBuilder()
            .add_certificate(cert, issuer, hashes.SHA1())
            .build()
            .public_bytes(serialization.Encoding.DER)
        )
        bodies.append(der)
        expected[der] = "good" if row.status == "good" else "revoked"
    return {"data": directory / "data", "pki": pki, "bodies": bodies, "expected": expected}


# --- the client ------------------------------------------------------------------------------------


class _Connection(asyncio.Protocol):
    """One client connection: sends a request, waits for the whole answer, sends the next
    (keep-alive when the server allows it; a new connection when it closes, as openssl's does)."""

    def __init__(self, client: _Load) -> None:
        self.client = client
        self.buffer = b""
        self.need = -1
        self.close_after = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send()

    def send(self) -> None:
        assert self.transport is not None
        self.buffer, self.need, self.close_after = b"", -1, False
        self.started = time.perf_counter()
        self.transport.write(self.client.next_request())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.need < 0:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            header = self.buffer[:end].lower()
            if not header.startswith((b"http/1.1 200", b"http/1.0 200")):
                self.client.errors += 1
            self.close_after = header.startswith(b"http/1.0") or b"connection: close" in header
            at = header.find(b"content-length:")
            length = int(header[at + 15 : header.find(b"\r\n", at) if header.find(b"\r\n", at) > 0 else None])
            self.need = end + 4 + length
        if len(self.buffer) >= self.need:
            self.client.latencies.append(time.perf_counter() - self.started)
            if time.perf_counter() >= self.client.until:
                assert self.transport is not None
                self.transport.close()
            elif self.close_after:
                assert self.transport is not None
                self.transport.close()
                self.client.reconnect()
            else:
                self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        unfinished = self.need < 0 or len(self.buffer) < self.need  # closed before a whole answer
        if unfinished and time.perf_counter() < self.client.until:
            self.client.errors += 1
            self.client.reconnect()


class _Load:
    def __init__(self, host: str, port: int, path: str, bodies: list[bytes], until: float) -> None:
        head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/ocsp-request\r\n"
        self.requests = [(head + f"Content-Length: {len(b)}\r\n\r\n").encode() + b for b in bodies]
        self.i = random.randrange(len(self.requests))
        self.host, self.port, self.until = host, port, until
        self.latencies: list[float] = []
        self.errors = 0
        self.pending: set[asyncio.Task[Any]] = set()

    def next_request(self) -> bytes:
        self.i += 1
        return self.requests[self.i % len(self.requests)]

    def reconnect(self) -> None:
        task = asyncio.get_running_loop().create_task(self.connect())
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def connect(self) -> None:
        try:
            await asyncio.get_running_loop().create_connection(
                lambda: _Connection(self), self.host, self.port
            )
        except OSError:
            self.errors += 1
            await asyncio.sleep(0.01)
            if time.perf_counter() < self.until:
                self.reconnect()


def _client(args: tuple[str, int, str, list[bytes], float, int]) -> tuple[list[float], int]:
    host, port, path, bodies, until_wall, concurrency = args
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    until = time.perf_counter() + (until_wall - time.time())
    load = _Load(host, port, path, bodies, until)

    async def main() -> None:
        await asyncio.gather(*(load.connect() for _ in range(concurrency)))
        while time.perf_counter() < until:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # answers in flight finish

    asyncio.run(main())
    return load.latencies, load.errors


def _drive(
    work: Path, port: int, path: str, seconds: float, concurrency: int, clients: int
) -> tuple[int, float, list[float], int]:
    """``clients`` client processes (this file run as ``client``), started together."""
    per = max(1, concurrency // clients)
    until = time.time() + 1.0 + seconds  # every client starts its clock together, after its start-up
    procs = []
    outs = []
    for k in range(clients):
        out = work / f"client-{port}-{k}-{time.monotonic_ns()}.json"
        outs.append(out)
        args = json.dumps(["127.0.0.1", port, path, str(work / "bodies.bin"), until, per, str(out)])
        procs.append(subprocess.Popen([sys.executable, __file__, "client", args]))
    for proc in procs:
        proc.wait(timeout=seconds + 60)
    latencies: list[float] = []
    errors = 0
    for out in outs:
        got = json.loads(out.read_text())
        latencies += got["latencies"]
        errors += got["errors"]
    return len(latencies), seconds, latencies, errors


def _client_main(raw: str) -> None:
    host, port, path, bodies_file, until, per, out = json.loads(raw)
    blob = Path(bodies_file).read_bytes()
    bodies = []
    pos = 0
    while pos < len(blob):
        size = int.from_bytes(blob[pos : pos + 4], "big")
        bodies.append(blob[pos + 4 : pos + 4 + size])
        pos += 4 + size
    latencies, errors = _client((host, port, path, bodies, until, per))
    Path(out).write_text(json.dumps({"latencies": latencies, "errors": errors}))


def _check(url: str, world: dict[str, Any], sample: int = 50) -> None:
    """Both servers answer correctly (status per certificate) before anything is timed."""
    import httpx

    for body in world["bodies"][:sample]:
        answer = httpx.post(
            url, content=body, headers={"content-type": "application/ocsp-request"}, timeout=10
        )
        resp = x509_ocsp.load_der_ocsp_response(answer.content)
        status = resp.certificate_status.name.lower()
        if status != world["expected"][body]:
            raise AssertionError(f"{url}: {status} for a {world['expected'][body]} certificate")


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run(
    n: int = 1000,
    seconds: float = 5.0,
    rounds: int = 2,
    workers: int = 2,
    concurrency: int = 32,
    clients: int = 2,
    **_: Any,
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        world = _world(directory, n)
        env = {
            **os.environ,
            "KIBAN_OCSP_ANONYMOUS_RATE": "1e9",  # the limiter runs, never refuses
            "KIBAN_DATA_DIR": str(world["data"]),
        }
        env.pop("KIBAN_DATABASE_URL", None)
        ours_port, ossl_port = _free_port(), _free_port()
        ours_log, ossl_log = directory / "serve.log", directory / "openssl.log"
        pki = world["pki"]
        ours = subprocess.Popen(
            [sys.executable, "-c", SERVE, "--data", str(world["data"]), "--port", str(ours_port),
             "--workers", str(workers)],
            env=env, stdout=ours_log.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        ossl = subprocess.Popen(
            ["openssl", "ocsp", "-index", str(pki / "index.txt"), "-port", str(ossl_port),
             "-rsigner", str(pki / "signer.pem"), "-rkey", str(pki / "signer.key"),
             "-CA", str(pki / "issuer.pem"), "-nmin", "60", "-ignore_err"],
            stdout=ossl_log.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            _wait_port(ours_port, ours, ours_log)
            _wait_port(ossl_port, ossl, ossl_log)
            time.sleep(1.0)  # workers past their first requests' imports
            _check(f"http://127.0.0.1:{ours_port}/ocsp", world)
            _check(f"http://127.0.0.1:{ossl_port}/", world)
            (directory / "bodies.bin").write_bytes(
                b"".join(len(b).to_bytes(4, "big") + b for b in world["bodies"])
            )
            totals: dict[str, list[Any]] = {"ours": [0, 0.0, [], 0], "openssl": [0, 0.0, [], 0]}
            # warm-up of ours (every response into the workers' caches), not counted
            _drive(directory, ours_port, "/ocsp", 2.0, concurrency, clients)
            for index in range(rounds):
                order = [("ours", ours_port, "/ocsp"), ("openssl", ossl_port, "/")]
                if index % 2:
                    order.reverse()
                for name, port, path in order:
                    total = totals[name]
                    count, spent, latencies, errors = _drive(
                        directory, port, path, seconds, concurrency, clients
                    )
                    total[0] += count
                    total[1] += spent
                    total[2] += latencies
                    total[3] += errors
        finally:
            for proc in (ours, ossl):
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        rate = {name: t[0] / t[1] for name, t in totals.items()}
        p99 = {name: _p(t[2], 0.99) * 1000 for name, t in totals.items()}
        p50 = {name: _p(t[2], 0.50) * 1000 for name, t in totals.items()}
        results.append(
            {
                "bench": "jpki_ocsp",
                "name": "ocsp_post_presigned",
                "value": round(rate["ours"], 1),
                "unit": "responses/s",
                "baseline": round(rate["openssl"], 1),
                "baseline_name": "openssl ocsp -index -port (OpenSSL 3 reference responder), same "
                "certificates,"
                " same delegated P-256 key, same client",
                "ratio": float(f"{rate['ours'] / rate['openssl']:.4g}"),
                "goal_ratio_min": 5,
                "p50_ms": round(p50["ours"], 2),
                "p99_ms": round(p99["ours"], 2),
                "baseline_p50_ms": round(p50["openssl"], 2),
                "baseline_p99_ms": round(p99["openssl"], 2),
                "errors": totals["ours"][3],
                "baseline_errors": totals["openssl"][3],
                "n": n,
                "workers": workers,
                "concurrency": concurrency,
                "clients": clients,
                "seconds": seconds * rounds,
                "cpus": os.cpu_count(),
            }
        )
    return results


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "client":
        _client_main(sys.argv[2])
        sys.exit(0)
    for line in run():
        print(json.dumps(line, ensure_ascii=False, sort_keys=True))
