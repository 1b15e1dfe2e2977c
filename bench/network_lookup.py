"""Single lookup by 個人番号: the provision API over HTTP vs the same SELECT through raw psycopg.

The national copy holds ``n`` residents (bench/network_scale.py: a scratch schema migrated by the
project's migrations, loaded by COPY, ANALYZEd). Two sides, alternately (A B B A, ``seconds``
each), with the same client: one asyncio process, ``clients`` concurrent clients, each with one
connection of its own, one request in flight per connection, the same random 個人番号 sequence:

- ``api``: ``POST /api/provision`` ``{"use_code": "pension_status_check", "query":
  {"individual_number": …}}`` to a real ``kiban serve --workers W`` (uvicorn, a subprocess) as the
  logged-in agency ``nenkin`` (日本年金機構; 年金の現況確認 may search by 個人番号). Each answer is
  purpose-checked, DV-checked, and logged (provision log + hash-chained audit entry) in the same
  transaction before it is sent. The HTTP client is a minimal keep-alive HTTP/1.1 client on
  asyncio streams (so the client's own cost stays small on a 2-core machine).
- baseline ``raw``: the service's own SELECT (``SELECT * FROM network_national_identity WHERE
  is_current AND individual_number = %s ORDER BY resident_code LIMIT 21``) through psycopg's
  AsyncConnection, prepared, autocommit — just the read: no purpose check, no log, no audit.

Reported: requests/s and p50/p99 latency of both, and the ratio api/raw against the goal 0.40.

Run: ``kiban bench network_lookup -p n=10000000 -p keep=1`` (``keep`` reuses the kept load).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import network_scale  # noqa: E402

GOAL = 0.40
USE = "pension_status_check"
AGENCY = "nenkin"
PASSWORD = "correct horse battery"
SERVE = "import typer; from kiban.cli.serve import serve; typer.run(serve)"
RAW_SQL = (
    "SELECT * FROM network_national_identity WHERE is_current AND individual_number = %s "
    "ORDER BY resident_code LIMIT 21"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _create_agency_user(url: str) -> None:
    from kiban.core import accounts
    from kiban.core.database import make_engine, session_factory
    from kiban.core.models.accounts import User

    engine = make_engine(url)
    with session_factory(engine).begin() as s:
        if s.query(User).filter_by(username=AGENCY).one_or_none() is None:
            accounts.create_user(s, AGENCY, PASSWORD, "agency", organisation=AGENCY)
    engine.dispose()


@contextmanager
def kiban_serve(url: str, workers: int, tmp: Path) -> Iterator[str]:
    """The real ``kiban serve`` over ``url`` in a subprocess; yields its base URL."""
    import httpx

    port = _free_port()
    env = {**os.environ, "KIBAN_DATABASE_URL": url}
    log = (tmp / "serve.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SERVE,
            "--data",
            str(tmp / "data"),
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "kiban serve did not start:\n" + (tmp / "serve.log").read_text(errors="replace")
                )
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def login(base: str) -> tuple[str, str]:
    """(Cookie header, CSRF token) of the agency's session."""
    import httpx

    with httpx.Client(base_url=base) as client:
        page = client.get("/login", headers={"accept": "text/html"})
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token, page.text[:300]
        done = client.post(
            "/login", data={"username": AGENCY, "password": PASSWORD, "csrf_token": token.group(1)}
        )
        assert done.status_code in (200, 303), done.text[:300]
        csrf = client.get("/api/session").json()["csrf_token"]
        cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    return cookie, csrf


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class _Side:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.seconds = 0.0
        self.outcomes: dict[str, int] = {}


async def _http_client(
    host: str, port: int, head: bytes, numbers: list[str], offset: int, stride: int, stop: float, side: _Side
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = offset
    try:
        while time.perf_counter() < stop:
            number = numbers[i % len(numbers)]
            i += stride
            body = b'{"use_code":"%s","query":{"individual_number":"%s"}}' % (USE.encode(), number.encode())
            started = time.perf_counter()
            writer.write(head % len(body) + body if b"%d" in head else head)
            status = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            payload = await reader.readexactly(length)
            side.latencies.append(time.perf_counter() - started)
            key = status.split(b" ", 2)[1].decode()
            if key == "200" and b"%d" in head:
                key = json.loads(payload)["outcome"]
            side.outcomes[key] = side.outcomes.get(key, 0) + 1
    finally:
        writer.close()


async def _raw_client(
    dsn: str, numbers: list[str], offset: int, stride: int, stop: float, side: _Side
) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
        i = offset
        while time.perf_counter() < stop:
            number = numbers[i % len(numbers)]
            i += stride
            started = time.perf_counter()
            cur = await conn.execute(RAW_SQL, (number,), prepare=True)
            rows = await cur.fetchall()
            side.latencies.append(time.perf_counter() - started)
            key = "provided" if len(rows) == 1 else "not_found"
            side.outcomes[key] = side.outcomes.get(key, 0) + 1


async def _round(
    kind: str, ctx: dict[str, Any], clients: int, seconds: float, side: _Side, record: bool
) -> None:
    stop = time.perf_counter() + seconds
    target = side if record else _Side()
    started = time.perf_counter()
    if kind in ("api", "healthz"):
        head = ctx["head"] if kind == "api" else ctx["healthz"]
        jobs = [
            _http_client(ctx["host"], ctx["port"], head, ctx["numbers"], c, clients, stop, target)
            for c in range(clients)
        ]
    else:
        jobs = [_raw_client(ctx["dsn"], ctx["numbers"], c, clients, stop, target) for c in range(clients)]
    await asyncio.gather(*jobs)
    target.seconds += time.perf_counter() - started


def run(
    n: int = 10_000_000,
    clients: int = 8,
    workers: int = 2,
    seconds: float = 10.0,
    keep: int = 0,
    sample: int = 20_000,
    partitioned: int = 0,
    **_: Any,
) -> list[dict[str, Any]]:
    n, clients, workers, seconds, sample = int(n), int(clients), int(workers), float(seconds), int(sample)
    copy = network_scale.national_copy(n, keep=bool(int(keep)), partitioned=bool(int(partitioned)))
    with copy as scale, tempfile.TemporaryDirectory() as tmp:
        _create_agency_user(scale.url)
        numbers = scale.sample("individual_number", sample)
        with kiban_serve(scale.url, workers, Path(tmp)) as base:
            cookie, csrf = login(base)
            host, port = base.removeprefix("http://").split(":")
            head = (
                f"POST /api/provision HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
                f"X-CSRF-Token: {csrf}\r\n"
                "Content-Type: application/json\r\nAccept: application/json\r\nContent-Length: %d\r\n\r\n"
            ).encode()
            healthz = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
            ctx = {"host": host, "port": int(port), "head": head, "healthz": healthz, "numbers": numbers}
            ctx["dsn"] = scale.dsn
            sides = {"api": _Side(), "raw": _Side(), "healthz": _Side()}

            async def main() -> None:
                for kind in ("api", "raw"):  # warm-up: imports, caches, prepared statements
                    await _round(kind, ctx, clients, min(3.0, seconds), sides[kind], record=False)
                for kind in ("api", "raw", "raw", "api"):
                    await _round(kind, ctx, clients, seconds / 2, sides[kind], record=True)
                # The server's HTTP ceiling: the same client on GET /healthz (no database, no auth).
                await _round("healthz", ctx, clients, max(1.0, seconds / 4), sides["healthz"], record=True)

            asyncio.run(main())
    api, raw, ceiling = sides["api"], sides["raw"], sides["healthz"]
    api_rate = len(api.latencies) / api.seconds
    raw_rate = len(raw.latencies) / raw.seconds
    ratio = api_rate / raw_rate
    return [
        {
            "bench": "network_lookup",
            "name": "lookup_by_individual_number",
            "value": round(api_rate, 1),
            "unit": "requests/s",
            "baseline": round(raw_rate, 1),
            "ratio": round(ratio, 3),
            "goal": GOAL,
            "meets_goal": ratio >= GOAL,
            "p50_ms": round(percentile(api.latencies, 0.50) * 1000, 2),
            "p99_ms": round(percentile(api.latencies, 0.99) * 1000, 2),
            "baseline_p50_ms": round(percentile(raw.latencies, 0.50) * 1000, 2),
            "baseline_p99_ms": round(percentile(raw.latencies, 0.99) * 1000, 2),
            "healthz_rps": round(len(ceiling.latencies) / ceiling.seconds, 1),
            "outcomes": api.outcomes,
            "baseline_outcomes": raw.outcomes,
            "n": n,
            "clients": clients,
            "workers": workers,
            "partitioned": bool(int(partitioned)),
            "requests": len(api.latencies),
            "baseline_requests": len(raw.latencies),
            "baseline_name": "raw psycopg SELECT of the same row, same clients and connections",
        }
    ]


if __name__ == "__main__":
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000
    for result in run(size, keep=1, seconds=20, partitioned=int("partitioned" in sys.argv[2:])):
        print(json.dumps(result, ensure_ascii=False))
