"""Register events benchmark: change events (異動) applied through the service vs raw INSERTs.

A population is loaded into a scratch schema; then ``n`` events — 氏名変更 and whole-household
転居 in turn, on random residents — are applied through :mod:`kiban.register.service`, with every
rule checked, a history row per person, an audit entry each and ``register.identity_changed`` in
the outbox. Two service paths are measured:

- ``service_single``: :func:`service.name_change` / :func:`service.relocation`, one call per event
  (what the clerk UI does), committed every ``batch`` events; measured on a sample
  (``single_sample`` events) because it is the slow path.
- ``service_batch``: :func:`service.apply_batch` over the same kind of events, ``batch`` per call
  and per transaction.

Baseline: raw ``INSERT``s of exactly the history rows the batch path wrote (read back after the
run), with psycopg ``executemany`` in transactions of the same size, into an identical scratch
schema. Goal (issue 3): events per second at ≥ 0.30 of the baseline's rows per second.

Run: ``kiban bench register_events -p n=100000`` or ``python bench/register_events.py [n]``.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import uuid
from datetime import date, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Json
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from kiban.core.database import make_engine, session_factory, upgrade
from kiban.core.identifiers import ResidentCodeGenerator
from kiban.numbering import service as numbering
from kiban.register import service
from kiban.register.loader import load_population
from kiban.register.models import ChangeRecord, Resident
from kiban.register.population import generate_population
from kiban.register.schemas import Actor, Address, NameChange, Relocation, Target

DEFAULT_URL = "postgresql+psycopg://root@127.0.0.1:5432/test"
MUNICIPALITY = "131041"  # 新宿区
TODAY = date(2026, 11, 25)
FAMILY_NAMES = [("佐藤", "サトウ"), ("鈴木", "スズキ"), ("髙橋", "タカハシ"), ("渡\U000e0100辺", "ワタナベ")]
TOWNS = ["西新宿", "歌舞伎町", "高田馬場", "神楽坂"]
HISTORY_COLUMNS = [c.name for c in ChangeRecord.__table__.columns if c.name != "seq"]


def _with_schema(url: str, schema: str) -> str:
    parsed = make_url(url)
    query = dict(parsed.query)
    query["options"] = f"-csearch_path={schema}"
    return parsed.set(query=query).render_as_string(hide_password=False)


def _psycopg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _result(name: str, value: float, unit: str, baseline: float | None, **extra: Any) -> dict[str, Any]:
    return {
        "bench": "register_events",
        "name": name,
        "value": round(value, 1),
        "unit": unit,
        "baseline": round(baseline, 1) if baseline else None,
        "ratio": round(value / baseline, 3) if baseline else None,
        **extra,
    }


def _commands(
    households: dict[uuid.UUID, list[str]], n: int, rng: random.Random
) -> list[NameChange | Relocation]:
    """``n`` events, 氏名変更 and 転居 in turn, over random residents (with repeats, like real life)."""
    keys = list(households)
    commands: list[NameChange | Relocation] = []
    for i in range(n):
        members = households[rng.choice(keys)]
        day = TODAY - timedelta(days=rng.randrange(1, 300))
        dates: dict[str, Any] = {
            "notified_on": day,
            "effective_on": day - timedelta(days=rng.randrange(0, 14)),
        }
        if i % 2 == 0:
            family, kana = rng.choice(FAMILY_NAMES)
            commands.append(
                NameChange(
                    **dates,
                    target=Target(resident_code=rng.choice(members)),
                    family_name=family,
                    family_name_kana=kana,
                    keep_old_family_name=rng.random() < 0.5,
                    reason="婚姻",
                )
            )
        else:
            commands.append(
                Relocation(
                    **dates,
                    targets=[Target(resident_code=code) for code in members],
                    address=Address(
                        town=rng.choice(TOWNS), banchi=f"{rng.randrange(1, 30)}-{rng.randrange(1, 20)}"
                    ),
                )
            )
    return commands


def _setup(url: str, residents: int) -> tuple[Any, dict[uuid.UUID, list[str]]]:
    upgrade(url)
    engine = make_engine(url)
    factory = session_factory(engine)
    with factory.begin() as s:
        codes = numbering.issue_resident_codes(s, residents, ResidentCodeGenerator(random.Random(7)))
    load_population(engine, generate_population([MUNICIPALITY], residents, 7, date(2025, 4, 1)), iter(codes))
    with engine.begin() as conn:
        # Statistics as a running database has them (autovacuum may be off on a scratch server).
        conn.execute(text("ANALYZE"))
    households: dict[uuid.UUID, list[str]] = {}
    with factory() as s:
        for hid, code in s.execute(select(Resident.household_id, Resident.resident_code)):
            households.setdefault(hid, []).append(code)
    return engine, households


def run(
    n: int = 100_000,
    database_url: str | None = None,
    residents: int | None = None,
    batch: int = 1000,
    single_sample: int = 2000,
) -> list[dict[str, Any]]:
    base = database_url or os.environ.get("KIBAN_BENCH_DATABASE_URL", DEFAULT_URL)
    residents = residents or max(2000, min(n // 2, 50_000))
    suffix = uuid.uuid4().hex[:8]
    schemas = {"service": f"bench_reg_{suffix}", "raw": f"bench_reg_raw_{suffix}"}
    admin = make_engine(base)
    with admin.begin() as conn:
        for schema in schemas.values():
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    actor = Actor(username="bench-clerk", municipality_code=MUNICIPALITY)
    results: list[dict[str, Any]] = []
    try:
        url = _with_schema(base, schemas["service"])
        engine, households = _setup(url, residents)
        factory = session_factory(engine)
        rng = random.Random(11)

        # --- the single-event path, on a sample -------------------------------------------------
        sample = _commands(households, min(single_sample, n), rng)
        started = time.perf_counter()
        for start in range(0, len(sample), batch):
            with factory.begin() as s:
                for command in sample[start : start + batch]:
                    if isinstance(command, NameChange):
                        service.name_change(s, actor, command, today=TODAY)
                    else:
                        service.relocation(s, actor, command, today=TODAY)
        single_seconds = time.perf_counter() - started

        # --- the batch path, all n events -------------------------------------------------------
        commands = _commands(households, n, rng)
        with factory() as s:
            first_seq = s.scalar(select(ChangeRecord.seq).order_by(ChangeRecord.seq.desc()).limit(1)) or 0
        started = time.perf_counter()
        rows_written = 0
        for start in range(0, n, batch):
            with factory.begin() as s:
                rows_written += service.apply_batch(s, actor, commands[start : start + batch], today=TODAY)
        batch_seconds = time.perf_counter() - started

        # --- baseline: raw INSERTs of the same history rows ----------------------------------------
        with factory() as s:
            history = [
                tuple(getattr(row, c) for c in HISTORY_COLUMNS)
                for row in s.scalars(
                    select(ChangeRecord).where(ChangeRecord.seq > first_seq).order_by(ChangeRecord.seq)
                )
            ]
        engine.dispose()
        raw_url = _with_schema(base, schemas["raw"])
        upgrade(raw_url)
        json_at = [HISTORY_COLUMNS.index("before"), HISTORY_COLUMNS.index("after")]
        prepared = [tuple(Json(v) if i in json_at else v for i, v in enumerate(row)) for row in history]
        per_event = max(1, round(len(prepared) / n))
        sql = (
            f"INSERT INTO register_changes ({', '.join(HISTORY_COLUMNS)}) "
            f"VALUES ({', '.join(['%s'] * len(HISTORY_COLUMNS))})"
        )
        with psycopg.connect(_psycopg_dsn(base), options=f"-csearch_path={schemas['raw']}") as conn:
            # Residents are not needed by the raw rows: drop the foreign key, as a bare table would.
            conn.execute(
                "ALTER TABLE register_changes DROP CONSTRAINT fk_register_changes_resident_id_residents"
            )
            conn.commit()
            started = time.perf_counter()
            step = batch * per_event
            with conn.cursor() as cur:
                for start in range(0, len(prepared), step):
                    cur.executemany(sql, prepared[start : start + step])
                    conn.commit()
            raw_seconds = time.perf_counter() - started

        raw_rate = len(prepared) / raw_seconds
        results.append(
            _result(
                "service_batch",
                n / batch_seconds,
                "events/s",
                raw_rate,
                events=n,
                history_rows=rows_written,
                residents=residents,
                seconds=round(batch_seconds, 2),
                baseline_unit="history rows/s (raw executemany INSERT)",
                goal=0.30,
            )
        )
        results.append(
            _result(
                "service_batch_rows",
                rows_written / batch_seconds,
                "history rows/s",
                raw_rate,
            )
        )
        results.append(
            _result(
                "service_single",
                len(sample) / single_seconds,
                "events/s",
                raw_rate,
                events=len(sample),
                seconds=round(single_seconds, 2),
            )
        )
    finally:
        with admin.begin() as conn:
            for schema in schemas.values():
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
    return results


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    for line in run(count):
        print(json.dumps(line, ensure_ascii=False))
