"""Bulk provision through the web API vs the service alone: what HTTP, CSV and streaming cost.

A population is loaded into a scratch SQLite database and copied to the national copy. A file of
``n`` queries by 住民票コード (the pension service's 現況確認) is answered two ways, alternately
(A B B A, so both see the same machine and the same growth of the provision log):

- ``api``: ``PUT /api/provision/bulk/{id}/file`` in parts of 8 MiB, then ``POST …/answers``
  read to the end as CSV, in process through Starlette's TestClient (ASGI, no sockets);
- baseline ``service``: ``network.provide_bulk`` over ``network.read_bulk_csv`` of the same bytes,
  answers consumed (no HTTP, no CSV writing).

Both log every row (provision log and audit) in chunks of 1,000. Goal: the API at ≥ 0.70 of the
service's rows per second (the web layer costs at most 30%).

Run: ``kiban bench network_bulk_api -p n=20000``.
"""

from __future__ import annotations

import random
import re
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any

GOAL = 0.70
PASSWORD = "correct horse battery"


def _world(tmp: Path, people: int) -> tuple[Any, Any, list[str]]:
    from kiban.core import accounts
    from kiban.core.accounts import create_user
    from kiban.core.config import Settings
    from kiban.core.database import make_engine, session_factory, upgrade
    from kiban.core.identifiers import ResidentCodeGenerator
    from kiban.network import service as network
    from kiban.numbering import service as numbering
    from kiban.register.loader import load_population
    from kiban.register.population import generate_population
    from kiban.web.app import WebOptions, create_app

    accounts.SCRYPT_N = 2**4
    url = f"sqlite:///{tmp / 'bench.sqlite'}"
    upgrade(url)
    engine = make_engine(url)
    factory = session_factory(engine)
    households = list(generate_population(["131016"], people, seed=3, as_of=date(2025, 4, 1)))
    with factory.begin() as s:
        codes = numbering.issue_resident_codes(s, people, ResidentCodeGenerator(random.Random(3)))
    load_population(engine, households, iter(codes))
    with factory.begin() as s:
        network.seed_copies(s)
        network.load_registry(s)
        create_user(s, "nenkin", PASSWORD, "agency", organisation="nenkin")
    settings = Settings(data_dir=tmp / "data", database_url_override=url)
    settings.ensure_dirs()
    app = create_app(
        settings, options=WebOptions(login_burst=1000, deliver_events=False, max_body_bytes=9 * 1024**2)
    )
    return app, factory, codes


def _client(app: Any) -> Any:
    from fastapi.testclient import TestClient

    client = TestClient(app)
    page = client.get("/login", headers={"accept": "text/html"})
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token
    client.post("/login", data={"username": "nenkin", "password": PASSWORD, "csrf_token": token.group(1)})
    client.headers["X-CSRF-Token"] = client.get("/api/session").json()["csrf_token"]
    return client


def _file(codes: list[str], n: int) -> bytes:
    # Distinct lines (a repeated line is a duplicate_row): trailing spaces vary, the code does not.
    lines = [codes[i % len(codes)] + " " * (i // len(codes)) for i in range(n)]
    return ("resident_code\n" + "\n".join(lines) + "\n").encode()


def _api(client: Any, content: bytes) -> int:
    job = client.post("/api/provision/bulk", json={"use_code": "pension_status_check", "size": len(content)})
    job_id = job.json()["id"]
    part = 8 * 1024**2
    for offset in range(0, len(content), part):
        sent = client.put(
            f"/api/provision/bulk/{job_id}/file",
            content=content[offset : offset + part],
            headers={"Upload-Offset": str(offset), "content-type": "text/csv"},
        )
        assert sent.status_code == 200, sent.text
    answers = client.post(f"/api/provision/bulk/{job_id}/answers")
    assert answers.status_code == 200, answers.text
    return answers.text.count("\n") - 1


def _service(factory: Any, content: bytes) -> int:
    import io

    from kiban.network import service as network

    with factory.begin() as s:
        job_id = network.create_bulk_job(s, "nenkin", "pension_status_check")
    rows = network.read_bulk_csv(io.BytesIO(content), declared_size=len(content))
    return sum(1 for _ in network.provide_bulk(factory, uuid.UUID(str(job_id)), rows))


def run(n: int = 20_000, people: int = 5_000, **_: Any) -> list[dict[str, Any]]:
    n, people = int(n), int(people)
    with tempfile.TemporaryDirectory() as tmp:
        app, factory, codes = _world(Path(tmp), people)
        content = _file(codes, n)
        client = _client(app)
        _api(client, _file(codes, 1000))  # warm-up: imports, templates, statement caches
        times = {"api": 0.0, "service": 0.0}
        for kind in ("api", "service", "service", "api"):
            started = time.perf_counter()
            answered = _api(client, content) if kind == "api" else _service(factory, content)
            times[kind] += time.perf_counter() - started
            assert answered == n, (kind, answered)
        client.close()
        app.state.engine.dispose()
    api_rate = 2 * n / times["api"]
    service_rate = 2 * n / times["service"]
    ratio = api_rate / service_rate
    return [
        {
            "bench": "network_bulk_api",
            "name": "bulk_rows_per_second",
            "value": round(api_rate, 1),
            "unit": "rows/s",
            "baseline": round(service_rate, 1),
            "ratio": round(ratio, 3),
            "goal": GOAL,
            "meets_goal": ratio >= GOAL,
            "n": n,
            "bytes": len(content),
        }
    ]


if __name__ == "__main__":
    import json
    import sys

    for line in run(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000):
        print(json.dumps(line, ensure_ascii=False))
