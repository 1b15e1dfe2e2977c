"""Bulk provision (一括提供) of ``rows`` queries vs a raw COPY-out of the same rows.

The national copy holds ``n`` residents (bench/network_scale.py). A file of ``rows`` distinct
住民票コード of random current residents (the pension service's 現況確認, ``pension_status_check``)
is answered three ways:

- baseline ``raw``: ``COPY (SELECT <the use's answer columns> FROM network_national_identity JOIN
  <the codes> USING (resident_code) WHERE is_current) TO STDOUT`` through psycopg, the codes
  already in a temporary table (not timed: the baseline is only the read-out, the fastest way the
  same data leaves PostgreSQL). No purpose check, no log, no audit.
- ``service``: :func:`kiban.network.service.provide_bulk` over
  :func:`~kiban.network.service.read_bulk_csv` of the file's bytes, in this process: chunks of
  1,000, each with its permit check, look-up, DV check, provision-log rows, hash-chained audit
  entries and the job's cursor committed before its answers are yielded.
- ``api`` (``api=1``, the default): the same file through a real ``kiban serve`` (subprocess):
  ``PUT /api/provision/bulk/{id}/file`` in 8 MiB parts, then ``POST …/answers`` read to the end
  as CSV (httpx, streamed). Timed from the job's creation to the last byte.

Goal (issue 4): a 1,000,000-row bulk provision at ≥ 0.30 of the rate of the raw COPY-out.

Run: ``kiban bench network_bulk -p n=10000000 -p rows=1000000 -p keep=1``.
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import network_lookup  # noqa: E402
import network_scale  # noqa: E402

GOAL = 0.30
USE = "pension_status_check"
# The answer columns of pension_status_check (kiban.network.operations.answer_columns).
COLUMNS = (
    "family_name, given_name, family_name_kana, given_name_kana, birth_date, sex, address, "
    "resident_code, individual_number, status, reason, reason_ja, effective_on"
)


def _raw(dsn: str, codes: list[str]) -> tuple[float, int]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TEMPORARY TABLE bench_codes (resident_code varchar(11) PRIMARY KEY)")
        with conn.cursor() as cur, cur.copy("COPY bench_codes FROM STDIN") as copy:
            copy.write("\n".join(codes) + "\n")
        conn.execute("ANALYZE bench_codes")
        started = time.perf_counter()
        size = 0
        with conn.cursor() as cur:
            sql = (
                f"COPY (SELECT {COLUMNS} FROM network_national_identity JOIN bench_codes "  # noqa: S608
                "USING (resident_code) WHERE is_current) TO STDOUT"
            )
            with cur.copy(sql) as copy:
                for block in copy:
                    size += len(block)
        seconds = time.perf_counter() - started
        conn.rollback()
    return seconds, size


def _service(url: str, content: bytes) -> tuple[float, int]:
    from kiban.core.database import make_engine, session_factory
    from kiban.network import service as network

    engine = make_engine(url)
    factory = session_factory(engine)
    started = time.perf_counter()
    with factory.begin() as s:
        job_id = network.create_bulk_job(s, "nenkin", USE)
    rows = network.read_bulk_csv(io.BytesIO(content), declared_size=len(content))
    provided = sum(
        a.outcome == "provided" for a in network.provide_bulk(factory, uuid.UUID(str(job_id)), rows)
    )
    seconds = time.perf_counter() - started
    engine.dispose()
    return seconds, provided


def _api(base: str, content: bytes) -> tuple[float, int]:
    import httpx

    cookie, csrf = network_lookup.login(base)
    headers = {"Cookie": cookie, "X-CSRF-Token": csrf}
    with httpx.Client(base_url=base, headers=headers, timeout=600) as client:
        started = time.perf_counter()
        job = client.post("/api/provision/bulk", json={"use_code": USE, "size": len(content)})
        assert job.status_code == 201, job.text
        job_id = job.json()["id"]
        part = 8 * 1024**2
        for offset in range(0, len(content), part):
            sent = client.put(
                f"/api/provision/bulk/{job_id}/file",
                content=content[offset : offset + part],
                headers={"Upload-Offset": str(offset), "content-type": "text/csv"},
            )
            assert sent.status_code == 200, sent.text
        provided = 0
        with client.stream("POST", f"/api/provision/bulk/{job_id}/answers") as answers:
            assert answers.status_code == 200, answers.read()
            for line in answers.iter_lines():
                if ",provided," in line:
                    provided += 1
        seconds = time.perf_counter() - started
    return seconds, provided


def run(
    n: int = 10_000_000, rows: int = 1_000_000, keep: int = 0, api: int = 1, workers: int = 1, **_: Any
) -> list[dict[str, Any]]:
    n, rows = int(n), int(rows)
    with network_scale.national_copy(n, keep=bool(int(keep))) as scale, tempfile.TemporaryDirectory() as tmp:
        network_lookup._create_agency_user(scale.url)
        codes = list(dict.fromkeys(scale.sample("resident_code", rows, seed=11)))
        content = ("resident_code\n" + "\n".join(codes) + "\n").encode()
        raw_seconds, raw_bytes = _raw(scale.dsn, codes)
        service_seconds, service_provided = _service(scale.url, content)
        api_seconds = api_provided = None
        if int(api):
            with network_lookup.kiban_serve(scale.url, int(workers), Path(tmp)) as base:
                api_seconds, api_provided = _api(base, content)
        again, _ = _raw(scale.dsn, codes)  # after, too: the same cache state as the service saw
        raw_seconds = (raw_seconds + again) / 2
    count = len(codes)
    raw_rate = count / raw_seconds
    results = [
        {
            "bench": "network_bulk",
            "name": "bulk_provision_service",
            "value": round(count / service_seconds, 1),
            "unit": "rows/s",
            "baseline": round(raw_rate, 1),
            "ratio": round(count / service_seconds / raw_rate, 4),
            "goal": GOAL,
            "meets_goal": count / service_seconds / raw_rate >= GOAL,
            "rows": count,
            "provided": service_provided,
            "seconds": round(service_seconds, 1),
            "baseline_seconds": round(raw_seconds, 2),
            "baseline_bytes": raw_bytes,
            "n": n,
            "baseline_name": "raw COPY (SELECT the use's columns of the same rows) TO STDOUT",
        }
    ]
    if api_seconds is not None:
        results.append(
            {
                **results[0],
                "name": "bulk_provision_api",
                "value": round(count / api_seconds, 1),
                "ratio": round(count / api_seconds / raw_rate, 4),
                "meets_goal": count / api_seconds / raw_rate >= GOAL,
                "provided": api_provided,
                "seconds": round(api_seconds, 1),
            }
        )
    return results


if __name__ == "__main__":
    for result in run(
        int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000,
        int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000,
        keep=1,
    ):
        print(json.dumps(result, ensure_ascii=False))
