"""Population benchmark: bulk load of a synthetic population into PostgreSQL vs a raw COPY.

- ``generate_population``: persons generated per second (no database involved).
- ``load_population``: residents per second loaded by :func:`kiban.register.loader.load_population`
  end to end (row building, identifiers handed in, COPY, commits), generation excluded. Its
  baseline is a raw psycopg ``COPY`` of the same rows, built beforehand, written in the same
  batches into identical tables (a scratch schema migrated the same way: same columns, indexes,
  constraints). Goal (issue): ratio >= 0.5 at 1,000,000 residents.

Identifiers: 住民票コード come from :class:`kiban.core.identifiers.ResidentCodeGenerator` when it
exists (deduplicated), 個人番号 are unique stand-ins ("1" + code): the keyed cipher's cost belongs to
the identifiers benchmark, not to the loader.

Run: ``kiban bench population -p n=1000000`` or ``python bench/population.py [n]``. The database
is ``KIBAN_BENCH_DATABASE_URL`` (default: database ``test`` on 127.0.0.1); two scratch schemas are
created there and dropped afterwards.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import uuid
from datetime import date
from typing import Any

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import make_url

from kiban.core.database import make_engine, upgrade
from kiban.register.loader import build_rows, copy_rows, load_population
from kiban.register.population import generate_population

DEFAULT_URL = "postgresql+psycopg://root@127.0.0.1:5432/test"
CODES = ["212016", "212113", "215015", "131016", "131041"]  # 岐阜市, 美濃加茂市, 坂祝町, 千代田区, 新宿区
BATCH = 50_000


def _resident_codes(n: int) -> list[str]:
    try:
        from kiban.core.identifiers import ResidentCodeGenerator

        generate = ResidentCodeGenerator(random.Random(1)).generate
    except ImportError:  # the identifiers module is optional for this benchmark
        rng = random.Random(1)

        def generate() -> str:
            return f"{rng.randrange(10**10, 10**11)}"

    codes: dict[str, None] = {}
    while len(codes) < n:
        codes[generate()] = None
    return list(codes)


def _with_schema(url: str, schema: str) -> str:
    parsed = make_url(url)
    query = dict(parsed.query)
    query["options"] = f"-csearch_path={schema}"
    return parsed.set(query=query).render_as_string(hide_password=False)


def _psycopg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _result(name: str, value: float, unit: str, baseline: float | None, **extra: Any) -> dict[str, Any]:
    return {
        "bench": "population",
        "name": name,
        "value": round(value, 1),
        "unit": unit,
        "baseline": round(baseline, 1) if baseline else None,
        "ratio": round(value / baseline, 3) if baseline else None,
        **extra,
    }


def _raw_copy(url: str, batches: list[tuple[list[Any], list[Any]]]) -> float:
    with psycopg.connect(_psycopg_dsn(url)) as conn:
        started = time.perf_counter()
        for hh_rows, res_rows in batches:
            copy_rows(conn, hh_rows, res_rows)
            conn.commit()
        return time.perf_counter() - started


def run(
    n: int = 1_000_000, database_url: str | None = None, seed: int = 1, rounds: int = 1
) -> list[dict[str, Any]]:
    """Generation speed, and load_population vs raw COPY (best of ``rounds``, order alternated)."""
    url = database_url or os.environ.get("KIBAN_BENCH_DATABASE_URL") or DEFAULT_URL
    if not url.startswith("postgresql"):
        raise ValueError("database_url: the population benchmark needs PostgreSQL (COPY)")
    as_of = date(2025, 4, 1)

    started = time.perf_counter()
    households = list(generate_population(CODES, n, seed=seed, as_of=as_of))
    generation = time.perf_counter() - started
    codes = _resident_codes(n)
    numbers = {code: "1" + code for code in codes}

    # Built before the clock starts: the baseline COPYs exactly the loader's rows, in its batches.
    rows = list(build_rows(households, iter(codes), numbers.__getitem__))
    batches: list[tuple[list[Any], list[Any]]] = [([], [])]
    for household, members in rows:
        if len(batches[-1][1]) >= BATCH:
            batches.append(([], []))
        batches[-1][0].append(household)
        batches[-1][1].extend(members)
    del rows

    copy_seconds = load_seconds = float("inf")
    households_loaded = 0
    admin = make_engine(url)
    try:
        for round_ in range(rounds):
            # Alternate the order so that neither side always runs on a warmer (or busier) server.
            order = ("copy", "load") if round_ % 2 == 0 else ("load", "copy")
            for side in order:
                schema = f"bench_pop_{uuid.uuid4().hex[:10]}_{side}"
                with admin.begin() as conn:
                    conn.execute(text(f'CREATE SCHEMA "{schema}"'))
                try:
                    scoped = _with_schema(url, schema)
                    upgrade(scoped)
                    with admin.connect() as conn:
                        conn.execute(text("CHECKPOINT"))
                    if side == "copy":
                        copy_seconds = min(copy_seconds, _raw_copy(scoped, batches))
                    else:
                        engine = make_engine(scoped)
                        stats = load_population(
                            engine, households, iter(codes), numbers.__getitem__, batch_size=BATCH
                        )
                        with engine.connect() as conn:
                            loaded = conn.execute(text("SELECT count(*) FROM residents")).scalar_one()
                        engine.dispose()
                        if loaded != n:
                            raise RuntimeError(f"load_population wrote {loaded} residents, expected {n}")
                        load_seconds = min(load_seconds, stats.seconds)
                        households_loaded = stats.households
                finally:
                    with admin.begin() as conn:
                        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        admin.dispose()

    copy_rate = n / copy_seconds
    return [
        _result("generate_population", n / generation, "persons/s", None, n=n, seconds=round(generation, 2)),
        _result(
            "load_population",
            n / load_seconds,
            "rows/s",
            copy_rate,
            n=n,
            households=households_loaded,
            rounds=rounds,
            seconds=round(load_seconds, 2),
            baseline_seconds=round(copy_seconds, 2),
            baseline_name="raw psycopg COPY of the same pre-built rows",
        ),
    ]


if __name__ == "__main__":
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    for result in run(size, rounds=int(sys.argv[2]) if len(sys.argv) > 2 else 1):
        print(json.dumps(result, ensure_ascii=False))
