"""Card application intake benchmark (SPEC K4, issue 6: 100,000 applications at ≥ 30% of raw inserts).

Ours: :func:`kiban.cards.intake.apply_many` end to end — 申請書ID look-up, the residents' status
(dead, moved out), a card already on its way, one card row, one transition row and one audit entry
(hash chain) per application — in transactions of ``batch`` applications.

Baselines, measured interleaved with ours (after each of our transactions, exactly the rows it
wrote are read back and inserted in one transaction into empty copies of the schema, so that the
load of a shared machine weighs on both sides alike), as for the register's bulk path
(``bench/register_events.py``, docs/register.md "Bulk path and benchmark"):

- ``apply_many`` (the goal's): raw INSERTs of all the rows our path wrote — ``cards_cards``,
  ``cards_transitions``, ``audit_log`` — the same transactions; on PostgreSQL by psycopg
  ``executemany``, on SQLite by the driver's ``executemany``. Throughput as the applications those
  rows stand for per second. Goal ≥ 0.30.
- ``apply_many_vs_copy`` (PostgreSQL): the same rows by COPY, the fastest way in (stricter).
- ``apply_many_vs_card_rows``: INSERTs of the ``cards_cards`` rows alone, applications/s against
  rows/s (one of the three rows an application writes; reported for comparison, not the goal's).

The raw copies keep every column and index, without foreign keys (the raw rows check nothing,
which only makes the baselines faster).

Run: ``kiban bench cards_intake`` (``-p n=100000``, ``-p database_url=postgresql+psycopg://…`` for
PostgreSQL: scratch schemas, dropped afterwards) or ``python bench/cards_intake.py [n] [url]``.
"""

from __future__ import annotations

import json
import random
import sqlite3
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol

import psycopg
from sqlalchemy import bindparam, select, text
from sqlalchemy.engine import make_url

from kiban.cards import service
from kiban.cards.intake import apply_many
from kiban.cards.service import Actor, Application
from kiban.core.audit import verify
from kiban.core.database import make_engine, session_factory, upgrade
from kiban.register.loader import load_population
from kiban.register.models import Resident
from kiban.register.population import generate_population

MUNICIPALITY = "131016"
GOAL = 0.3
TABLES = ("cards_cards", "cards_transitions", "audit_log")
JSON_COLUMNS = {"items", "detail"}
IDENTITY = {"cards_transitions": "id"}  # the raw table numbers its own rows
Written = dict[str, tuple[list[str], list[tuple[Any, ...]]]]


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


def _psycopg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql", query={}).render_as_string(hide_password=False)


class _Raw(Protocol):
    seconds: float

    def insert(self, written: Written) -> None: ...

    def close(self) -> None: ...


class _PgRaw:
    """An empty migrated schema taking raw rows (``insert``: psycopg executemany; ``copy``: COPY)."""

    def __init__(self, base: str, schema: str, method: str, tables: tuple[str, ...]) -> None:
        upgrade(_with_schema(base, schema))
        self.method, self.tables, self.seconds = method, tables, 0.0
        self.conn = psycopg.connect(_psycopg_dsn(base), options=f"-csearch_path={schema}")
        for table, constraint in self.conn.execute(
            "SELECT conrelid::regclass::text, conname FROM pg_constraint "
            "WHERE contype = 'f' AND connamespace = %s::regnamespace",
            (schema,),
        ).fetchall():
            self.conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{constraint}"')
        self.conn.commit()

    def insert(self, written: Written) -> None:
        started = time.perf_counter()
        with self.conn.cursor() as cur:
            for table in self.tables:
                columns, rows = written[table]
                if not rows:
                    continue
                names = ", ".join(columns)
                if self.method == "copy":
                    with cur.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
                else:
                    marks = ", ".join(["%s"] * len(columns))
                    cur.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)
        self.conn.commit()
        self.seconds += time.perf_counter() - started

    def close(self) -> None:
        self.conn.close()


class _SqliteRaw:
    """An empty migrated SQLite file taking raw rows by the driver's executemany."""

    def __init__(self, path: Path, tables: tuple[str, ...]) -> None:
        upgrade(f"sqlite:///{path}")
        self.tables, self.seconds = tables, 0.0
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")  # as kiban.core.database sets it

    def insert(self, written: Written) -> None:
        started = time.perf_counter()
        self.conn.execute("BEGIN")
        for table in self.tables:
            columns, rows = written[table]
            if rows:
                marks = ", ".join(["?"] * len(columns))
                self.conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)
        self.conn.execute("COMMIT")
        self.seconds += time.perf_counter() - started

    def close(self) -> None:
        self.conn.close()


class _ReadBack:
    """Reads back, after each of our transactions, exactly the rows it wrote (JSON as its text)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.columns: dict[str, list[str]] = {}
        with engine.connect() as conn:
            for table in TABLES:
                names = list(conn.execute(text(f"SELECT * FROM {table} LIMIT 0")).keys())
                if table in IDENTITY:
                    names.remove(IDENTITY[table])
                self.columns[table] = names
        self.marks = {
            "cards_transitions": self._max("cards_transitions", "id"),
            "audit_log": self._max("audit_log", "seq"),
        }

    def _max(self, table: str, column: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text(f"SELECT coalesce(max({column}), 0) FROM {table}")).scalar_one())

    def since_last(self, card_ids: list[str]) -> Written:
        pg = self.engine.dialect.name == "postgresql"
        out: Written = {}
        with self.engine.connect() as conn:
            for table in TABLES:
                columns = self.columns[table]
                listing = ", ".join(f"{c}::text" if pg and c in JSON_COLUMNS else c for c in columns)
                if table == "cards_cards":
                    query = text(f"SELECT {listing} FROM cards_cards WHERE card_id IN :ids").bindparams(
                        bindparam("ids", expanding=True)
                    )
                    rows = []
                    for start in range(0, len(card_ids), 5000):
                        rows += conn.execute(query, {"ids": card_ids[start : start + 5000]}).all()
                else:
                    key = "id" if table == "cards_transitions" else "seq"
                    rows = conn.execute(
                        text(f"SELECT {listing} FROM {table} WHERE {key} > :mark ORDER BY {key}"),
                        {"mark": self.marks[table]},
                    ).all()
                    self.marks[table] = self._max(table, key)
                out[table] = (columns, [tuple(r) for r in rows])
        return out


def run(
    n: int = 100_000, batch: int = 5_000, database_url: str | None = None, **_: Any
) -> list[dict[str, Any]]:
    """SQLite files by default; ``database_url`` (PostgreSQL) runs in scratch schemas there."""
    if not database_url:
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp)
            ours = f"sqlite:///{base / 'ours.sqlite'}"
            raws: dict[str, _Raw] = {
                "insert": _SqliteRaw(base / "insert.sqlite", TABLES),
                "card_rows": _SqliteRaw(base / "cards.sqlite", ("cards_cards",)),
            }
            return _run(n, batch, ours, raws, "sqlite")
    suffix = uuid.uuid4().hex[:8]
    names = ("ours", "insert", "copy", "card_rows")
    schemas = {name: f"bench_cards_{name}_{suffix}" for name in names}
    admin = make_engine(database_url)
    with admin.begin() as conn:
        for schema in schemas.values():
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        raws = {
            "insert": _PgRaw(database_url, schemas["insert"], "insert", TABLES),
            "copy": _PgRaw(database_url, schemas["copy"], "copy", TABLES),
            "card_rows": _PgRaw(database_url, schemas["card_rows"], "insert", ("cards_cards",)),
        }
        return _run(n, batch, _with_schema(database_url, schemas["ours"]), raws, "postgresql")
    finally:
        with admin.begin() as conn:
            for schema in schemas.values():
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def _run(n: int, batch: int, url: str, raws: dict[str, _Raw], database: str) -> list[dict[str, Any]]:
    actor = Actor("bench-intake", "national_operator")
    now = datetime.now(UTC)
    upgrade(url)
    engine = make_engine(url)
    factory = session_factory(engine)
    # n residents (one application each), their forms, all before the clock starts
    households = generate_population([MUNICIPALITY], n, seed=3, as_of=date(2025, 4, 1))
    codes = iter(_codes(n + n // 5))
    load_population(engine, households, codes)
    with factory.begin() as s:
        residents = list(s.scalars(select(Resident.resident_code).where(Resident.status == "active")))[:n]
        forms = service.issue_forms(s, actor, residents, MUNICIPALITY, now=now)
    if database == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))  # statistics as a running database has them
    applications = [Application(forms[code], channel="online") for code in residents]
    reader = _ReadBack(engine)
    ours = 0.0
    accepted = 0
    rows = dict.fromkeys(TABLES, 0)
    for start in range(0, len(applications), batch):
        started = time.perf_counter()
        with factory.begin() as s:
            ids = apply_many(s, actor, applications[start : start + batch], now=now).accepted
        ours += time.perf_counter() - started
        accepted += len(ids)
        written = reader.since_last(ids)
        for table in TABLES:
            rows[table] += len(written[table][1])
        for raw in raws.values():
            raw.insert(written)
    with factory() as s:
        chain = verify(s)
    engine.dispose()
    for raw in raws.values():
        raw.close()
    count = len(applications)
    assert rows["cards_cards"] == accepted == count, (rows, accepted, count)
    common = {
        "bench": "cards_intake",
        "value": round(count / ours, 1),
        "unit": "applications/s",
        "goal_ratio_min": GOAL,
        "n": count,
        "batch": batch,
        "seconds": round(ours, 2),
        "database": database,
    }

    def line(name: str, raw: str, what: str, **extra: Any) -> dict[str, Any]:
        seconds = raws[raw].seconds
        return {
            **common,
            "name": name,
            "baseline": round(count / seconds, 1),
            "baseline_name": what,
            "baseline_seconds": round(seconds, 2),
            "ratio": float(f"{seconds / ours:.4g}"),
            "meets_goal": seconds / ours >= GOAL,
            **extra,
        }

    driver = "psycopg executemany" if database == "postgresql" else "sqlite3 executemany"
    out = [
        line(
            "apply_many",
            "insert",
            f"raw INSERTs ({driver}) of every row ours wrote — cards, transitions, audit — same transactions",
            rows=rows,
            audit_chain_ok=chain.ok,
        )
    ]
    if "copy" in raws:
        out.append(line("apply_many_vs_copy", "copy", "the same rows loaded by COPY (stricter)", rows=rows))
    out.append(
        line(
            "apply_many_vs_card_rows",
            "card_rows",
            f"raw INSERTs ({driver}) of the cards_cards rows alone (rows/s; one of three per application)",
        )
    )
    return out


if __name__ == "__main__":
    url = sys.argv[2] if len(sys.argv) > 2 else None
    for result in run(n=int(sys.argv[1]) if len(sys.argv) > 1 else 100_000, database_url=url):
        print(json.dumps(result, ensure_ascii=False, sort_keys=True))
