"""Card application intake benchmark (SPEC K4, issue 6: 100,000 applications at ≥ 30% of raw inserts).

Ours: :func:`kiban.cards.intake.apply_many` end to end on SQLite — 申請書ID look-up, the residents'
status (dead, moved out), a card already on its way, one card row, one transition row, the form
marked used and one audit entry (hash chain) per application — in transactions of ``batch``
applications. Baseline, in the same run: raw multi-row INSERTs (SQLAlchemy Core executemany) of
the same number of ``cards_cards`` rows into an identically migrated database, in the same
transaction sizes. Chunks alternate which side runs first, so machine noise weighs on both.
The figure is ours/raw as a rate; the goal is ≥ 0.3.

A second baseline inserts raw every row our path wrote for the chunk (card, transition and
audit rows, read back after our chunk and written by Core executemany into a third database): the
cost of the same data without the rules, the chain or the look-ups.

Run: ``kiban bench cards_intake`` (``-p n=100000``, ``-p database_url=postgresql+psycopg://…`` for
PostgreSQL: three scratch schemas, dropped afterwards) or ``python bench/cards_intake.py [n] [url]``.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, insert, select, text
from sqlalchemy.engine import make_url

from kiban.cards import service
from kiban.cards.intake import apply_many
from kiban.cards.models import Card, Transition
from kiban.cards.service import Actor, Application
from kiban.core.audit import AuditEntry, verify
from kiban.core.database import make_engine, session_factory, upgrade
from kiban.register.loader import load_population
from kiban.register.models import Resident
from kiban.register.population import generate_population

MUNICIPALITY = "131016"
GOAL = 0.3


def _codes(n: int) -> list[str]:
    rng = random.Random(1)
    codes: dict[str, None] = {}
    while len(codes) < n:
        codes[f"{rng.randrange(10**10, 10**11)}"] = None
    return list(codes)


def _with_schema(url: str, schema: str) -> str:
    parsed = make_url(url)
    query = dict(parsed.query)
    query["options"] = f"-csearch_path={schema}"
    return parsed.set(query=query).render_as_string(hide_password=False)


def run(
    n: int = 100_000, batch: int = 5_000, database_url: str | None = None, **_: Any
) -> list[dict[str, Any]]:
    """SQLite files by default; ``database_url`` (PostgreSQL) runs in three scratch schemas there."""
    if not database_url:
        with tempfile.TemporaryDirectory() as tmp:
            urls = [f"sqlite:///{Path(tmp) / name}.sqlite" for name in ("ours", "raw", "all")]
            return _run(n, batch, urls, "sqlite")
    suffix = uuid.uuid4().hex[:8]
    schemas = [f"bench_cards_{name}_{suffix}" for name in ("ours", "raw", "all")]
    admin = make_engine(database_url)
    with admin.begin() as conn:
        for schema in schemas:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        return _run(n, batch, [_with_schema(database_url, schema) for schema in schemas], "postgresql")
    finally:
        with admin.begin() as conn:
            for schema in schemas:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def _run(n: int, batch: int, urls: list[str], database: str) -> list[dict[str, Any]]:
    actor = Actor("bench-intake", "national_operator")
    now = datetime.now(UTC)
    ours_url, raw_url, all_url = urls
    upgrade(ours_url)
    upgrade(raw_url)
    upgrade(all_url)
    engine = make_engine(ours_url)
    raw_engine = make_engine(raw_url)
    all_engine = make_engine(all_url)
    factory = session_factory(engine)
    # n residents (one application each), their forms, all before the clock starts
    households = generate_population([MUNICIPALITY], n, seed=3, as_of=date(2025, 4, 1))
    codes = iter(_codes(n + n // 5))
    load_population(engine, households, codes)
    with factory.begin() as s:
        residents = list(s.scalars(select(Resident.resident_code).where(Resident.status == "active")))[:n]
        forms = service.issue_forms(s, actor, residents, MUNICIPALITY, now=now)
    applications = [Application(forms[code], channel="online") for code in residents]
    raw_rows = [
        {
            "card_id": f"R{i:011d}",
            "application_id": f"{i:023d}",
            "resident_code": code,
            "municipality_code": MUNICIPALITY,
            "channel": "online",
            "employer": None,
            "state": "applied",
            "state_since": now,
            "applied_on": now.date(),
            "defect_code": None,
            "express": False,
            "express_reason": None,
            "express_due": None,
            "overseas": False,
            "version": 1,
            "created_at": now,
            "updated_at": now,
        }
        for i, code in enumerate(residents)
    ]
    table = cast(Table, Card.__table__)
    ours = raw = all_rows = 0.0
    accepted = 0
    written = 0
    tables = [cast(Table, model.__table__) for model in (Card, Transition, AuditEntry)]
    marks = {t.name: 0 for t in tables}

    def read_back() -> list[tuple[Table, list[dict[str, Any]]]]:
        """The rows our last chunk wrote (every table only grows during the run)."""
        out = []
        with engine.connect() as conn:
            for t in tables:
                rows = [dict(r._mapping) for r in conn.execute(select(t).offset(marks[t.name]))]
                marks[t.name] += len(rows)
                out.append((t, rows))
        return out

    for index, start in enumerate(range(0, len(applications), batch)):

        def ours_chunk(start: int = start) -> float:
            nonlocal accepted
            started = time.perf_counter()
            with factory.begin() as s:
                accepted += len(apply_many(s, actor, applications[start : start + batch], now=now).accepted)
            return time.perf_counter() - started

        def raw_chunk(start: int = start) -> float:
            started = time.perf_counter()
            with raw_engine.begin() as conn:
                conn.execute(insert(table), raw_rows[start : start + batch])
            return time.perf_counter() - started

        if index % 2 == 0:
            ours += ours_chunk()
            raw += raw_chunk()
        else:
            raw += raw_chunk()
            ours += ours_chunk()
        chunk_rows = read_back()
        started = time.perf_counter()
        with all_engine.begin() as conn:
            for t, rows in chunk_rows:
                if rows:
                    conn.execute(insert(t), rows)
                    written += len(rows)
        all_rows += time.perf_counter() - started
    with factory() as s:
        chain = verify(s)
    engine.dispose()
    raw_engine.dispose()
    all_engine.dispose()
    count = len(applications)
    return [
        {
            "bench": "cards_intake",
            "name": "apply_many",
            "value": round(count / ours, 1),
            "unit": "applications/s",
            "baseline": round(count / raw, 1),
            "baseline_name": "raw Core executemany INSERT of as many cards_cards rows, same batches",
            "ratio": float(f"{raw / ours:.4g}"),
            "goal_ratio_min": GOAL,
            "meets_goal": raw / ours >= GOAL,
            "n": count,
            "accepted": accepted,
            "batch": batch,
            "seconds": round(ours, 2),
            "baseline_seconds": round(raw, 2),
            "audit_chain_ok": chain.ok,
            "database": database,
        },
        {
            "bench": "cards_intake",
            "name": "apply_many_vs_all_rows",
            "value": round(count / ours, 1),
            "unit": "applications/s",
            "baseline": round(count / all_rows, 1),
            "baseline_name": "raw Core INSERT of every row ours wrote (cards, transitions, audit)",
            "ratio": float(f"{all_rows / ours:.4g}"),
            "goal_ratio_min": GOAL,
            "meets_goal": all_rows / ours >= GOAL,
            "n": count,
            "rows": written,
            "baseline_seconds": round(all_rows, 2),
            "database": database,
        },
    ]


if __name__ == "__main__":
    url = sys.argv[2] if len(sys.argv) > 2 else None
    for line in run(n=int(sys.argv[1]) if len(sys.argv) > 1 else 100_000, database_url=url):
        print(json.dumps(line, ensure_ascii=False, sort_keys=True))
