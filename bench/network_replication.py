"""Replication under a sustained load: register changes → outbox → the national copy, lag per event.

The national copy holds ``n`` residents (bench/network_scale.py). A producer thread makes
``rate`` register changes per second (default 200: one every 5 ms) for ``seconds``: each is one
transaction that emits ``register.identity_changed`` for a random current resident (a 氏名変更 or a
転居 within the municipality, the payload the register sends: kiban.register.service.identity_payload's
keys), paced on a fixed schedule (a late producer catches up, it does not skip). The changes reach
the copies by one of two paths (``mode``):

- ``embedded``: the outbox in the national database, delivered by
  :class:`kiban.core.dispatch.EmbeddedDispatcher` (the one ``kiban serve`` runs; its poll
  ``interval``, 0.5 s there, is a parameter) to the network's handlers, which apply each change to
  the prefectural and national copies (checks, new version, ``network.identity_changed`` out).
- ``distributed``: the outbox in a municipal node's database (a second scratch schema), relayed up
  over NATS JetStream by :func:`kiban.network.distributed.run_municipal`, applied by
  :func:`~kiban.network.distributed.run_national` on the national database (a private stream and
  subject prefix per run, deleted afterwards).

Lag per event = the national version's ``applied_at`` − the event's ``occurred_at`` (when the
register committed it). Reported: p50/p99/max lag, the applied rate, and the p99 as a ratio to the
event interval (``1/rate``) and against the goal (p99 < 1 s).

Run: ``kiban bench network_replication -p n=10000000 -p keep=1 -p seconds=60 [-p mode=distributed]``.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import network_scale  # noqa: E402

GOAL_SECONDS = 1.0
FAMILY = [
    ("佐藤", "サトウ"),
    ("鈴木", "スズキ"),
    ("髙橋", "タカハシ"),
    ("田中", "タナカ"),
    ("伊藤", "イトウ"),
]
NATS_URL = "nats://127.0.0.1:4222"


def _people(dsn: str, n: int, count: int, municipalities: list[str] | None) -> list[dict[str, Any]]:
    import psycopg
    from psycopg.rows import dict_row

    rng = random.Random(time.time_ns())  # a kept copy's earlier runs changed other people already
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        if municipalities:
            rows = conn.execute(
                "SELECT * FROM network_national_identity WHERE is_current AND municipality_code = ANY(%s) "
                "LIMIT %s",
                (municipalities, count),
            ).fetchall()
        else:
            ids = [rng.randrange(1, n + 1) for _ in range(count * 2)]
            rows = conn.execute(
                "SELECT * FROM network_national_identity WHERE is_current AND id = ANY(%s) LIMIT %s",
                (ids, count),
            ).fetchall()
    return rows


def _largest_municipalities(dsn: str, count: int) -> list[str]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT municipality_code FROM network_national_identity WHERE is_current "
            "GROUP BY municipality_code ORDER BY count(*) DESC, municipality_code LIMIT %s",
            (count,),
        ).fetchall()
    return [r[0] for r in rows]


def _payload(person: dict[str, Any], i: int, rng: random.Random) -> dict[str, Any]:
    day = max(date(2026, 11, 25) - timedelta(days=rng.randrange(0, 30)), person["birth_date"])
    family, family_kana = person["family_name"], person["family_name_kana"]
    address = person["address"]
    if i % 2 == 0:
        family, family_kana = rng.choice(FAMILY)
        reason, reason_ja = "name_change", "氏名変更"
    else:
        address = f"{address.rstrip('0123456789番号')}{rng.randrange(1, 30)}番{rng.randrange(1, 25)}号"
        reason, reason_ja = "relocation", "転居"
    return {
        "resident_code": person["resident_code"],
        "previous_resident_code": None,
        "municipality_code": person["municipality_code"],
        "family_name": family,
        "given_name": person["given_name"],
        "family_name_kana": family_kana,
        "given_name_kana": person["given_name_kana"],
        "old_family_name": None,
        "old_family_name_kana": None,
        "birth_date": person["birth_date"].isoformat(),
        "sex": person["sex"],
        "address_text": address,
        "individual_number": person["individual_number"],
        "status": "active",
        "reason": reason,
        "reason_ja": reason_ja,
        "effective_on": day.isoformat(),
        "notified_on": day.isoformat(),
    }


def _produce(
    url: str, people: list[dict[str, Any]], rate: float, seconds: float, delay: float, out: str
) -> None:
    """The producer process: one transaction per change, on a fixed schedule of ``rate`` per second."""
    from kiban.core.database import make_engine, session_factory
    from kiban.core.events import emit

    engine = make_engine(url)
    factory = session_factory(engine)
    rng = random.Random(9)
    ids: list[str] = []
    behind = 0.0
    error = None
    time.sleep(delay)  # the consumers are up
    started = time.perf_counter()
    try:
        for i in range(int(rate * seconds)):
            wait = started + i / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            else:
                behind = max(behind, -wait)
            person = people[i % len(people)]
            with factory.begin() as s:
                event = emit(
                    s, "register.identity_changed", person["resident_code"], _payload(person, i, rng)
                )
            ids.append(event.id)
    except Exception as exc:  # noqa: BLE001 - reported by the benchmark
        error = f"{type(exc).__name__}: {exc}"
    engine.dispose()
    Path(out).write_text(json.dumps({"ids": ids, "behind": behind, "error": error}))


class _Producer:
    """The register's side in a process of its own (as the register's web workers are), forked.

    A thread would share the consumer's GIL and slow both: on 2 cores that alone moved the figures.
    Forked before the consumers start any thread or connection.
    """

    def __init__(
        self, url: str, people: list[dict[str, Any]], rate: float, seconds: float, delay: float
    ) -> None:
        import multiprocessing
        import tempfile

        if not people:
            raise RuntimeError("no current residents to change")
        self._out = Path(tempfile.mkstemp(prefix="kiban-producer-", suffix=".json")[1])
        context = multiprocessing.get_context("fork")
        self._process = context.Process(
            target=_produce, args=(url, people, rate, seconds, delay, str(self._out)), daemon=True
        )
        self.event_ids: list[str] = []
        self.behind = 0.0  # the worst lateness of the producer against its schedule
        self.error: BaseException | None = None

    def start(self) -> None:
        self._process.start()

    def join(self) -> None:
        self._process.join()
        try:
            found = json.loads(self._out.read_text() or "{}")
        finally:
            self._out.unlink(missing_ok=True)
        self.event_ids = found.get("ids", [])
        self.behind = found.get("behind", 0.0)
        if found.get("error") or self._process.exitcode:
            self.error = RuntimeError(f"producer failed: {found.get('error') or self._process.exitcode}")


def _lags(dsn: str, event_ids: list[str]) -> tuple[list[float], int]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        lags = [
            r[0]
            for r in conn.execute(
                "SELECT extract(epoch FROM applied_at - event_occurred_at)::float8 "
                "FROM network_national_identity WHERE event_id = ANY(%s)",
                (event_ids,),
            )
        ]
        quarantined = conn.execute(
            "SELECT count(*) FROM network_quarantine WHERE event_id = ANY(%s)", (event_ids,)
        ).fetchone()
    return lags, int(quarantined[0]) if quarantined else 0


def _wait_applied(dsn: str, event_ids: list[str], timeout: float) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM network_national_identity WHERE event_id = ANY(%s)) + "
                "(SELECT count(*) FROM network_quarantine WHERE event_id = ANY(%s))",
                (event_ids, event_ids),
            ).fetchone()
            if row and row[0] >= len(event_ids):
                return
            time.sleep(0.5)


def _embedded(
    scale: Any,
    people: list[dict[str, Any]],
    rate: float,
    seconds: float,
    interval: float,
    dispatchers: int = 1,
) -> Any:
    from kiban.core.database import make_engine, session_factory
    from kiban.core.dispatch import EmbeddedDispatcher
    from kiban.core.events import Registry
    from kiban.network.handlers import register_handlers

    producer = _Producer(scale.url, people, rate, seconds, delay=1.0)
    producer.start()  # forked first: no thread or connection of ours in the child
    engine = make_engine(scale.url)
    factory = session_factory(engine)
    registry = Registry()
    register_handlers(registry)
    # Several dispatchers share the outbox by key (the claim skips locked keys): kiban serve runs one.
    running = [EmbeddedDispatcher(factory, registry, interval=interval) for _ in range(dispatchers)]
    for dispatcher in running:
        dispatcher.start()
    producer.join()
    _wait_applied(scale.dsn, producer.event_ids, 300)
    for dispatcher in running:
        dispatcher.stop()
    engine.dispose()
    return producer


def _distributed(
    scale: Any, people: list[dict[str, Any]], rate: float, seconds: float, interval: float
) -> Any:
    import nats

    from kiban.core.database import make_engine, session_factory, upgrade
    from kiban.network import distributed

    token = uuid.uuid4().hex[:8]
    stream, prefix = f"BENCH_{token}", f"bench{token}"
    municipal_schema = f"bench_net_muni_{token}"
    base = network_scale.database_url()
    import psycopg

    with psycopg.connect(network_scale.psycopg_dsn(base), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{municipal_schema}"')
    muni_url = network_scale.with_schema(base, municipal_schema)
    try:
        upgrade(muni_url)
        producer = _Producer(muni_url, people, rate, seconds, delay=3.0)
        producer.start()  # forked first: no thread or connection of ours in the child
        national_engine, muni_engine = make_engine(scale.url), make_engine(muni_url)
        national, municipal = session_factory(national_engine), session_factory(muni_engine)
        codes = sorted({p["municipality_code"] for p in people})
        stop = asyncio.Event()

        async def main() -> None:
            nodes = [
                asyncio.create_task(
                    distributed.run_national(
                        national,
                        NATS_URL,
                        cipher=None,
                        stream=stream,
                        prefix=prefix,
                        interval=interval,
                        stop=stop,
                    )
                ),
                asyncio.create_task(
                    distributed.run_municipal(
                        municipal,
                        NATS_URL,
                        codes,
                        stream=stream,
                        prefix=prefix,
                        interval=interval,
                        deliver_local=False,  # the register's own handlers: no register here
                        stop=stop,
                    )
                ),
            ]
            await asyncio.to_thread(producer.join)
            await asyncio.to_thread(_wait_applied, scale.dsn, producer.event_ids, 300)
            stop.set()
            await asyncio.wait(nodes, timeout=15)
            client = await nats.connect(NATS_URL)
            try:
                await client.jetstream().delete_stream(stream)
            finally:
                await client.close()

        asyncio.run(main())
        national_engine.dispose()
        muni_engine.dispose()
    finally:
        network_scale.drop(None, municipal_schema)
    return producer


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run(
    n: int = 10_000_000,
    rate: float = 200.0,
    seconds: float = 60.0,
    mode: str = "embedded",
    interval: float | None = None,
    keep: int = 0,
    dispatchers: int = 1,
    **_: Any,
) -> list[dict[str, Any]]:
    n, rate, seconds, dispatchers = int(n), float(rate), float(seconds), int(dispatchers)
    if mode not in ("embedded", "distributed"):
        raise ValueError("mode: embedded or distributed")
    poll = float(interval) if interval is not None else (0.5 if mode == "embedded" else 0.2)
    with network_scale.national_copy(n, keep=bool(int(keep))) as scale:
        municipalities = None
        if mode == "distributed":
            municipalities = _largest_municipalities(scale.dsn, 5)  # the municipal node's
        people = _people(scale.dsn, n, max(2000, int(rate * seconds)), municipalities)
        if mode == "embedded":
            producer = _embedded(scale, people, rate, seconds, poll, dispatchers)
        else:
            producer = _distributed(scale, people, rate, seconds, poll)
        if producer.error is not None:
            raise producer.error
        lags, quarantined = _lags(scale.dsn, producer.event_ids)
    interval_s = 1 / rate
    p99 = _pct(lags, 0.99)
    return [
        {
            "bench": "network_replication",
            "name": f"replication_lag_{mode}",
            "value": round(p99, 4),
            "unit": "s (p99 lag)",
            "baseline": interval_s,
            "baseline_name": "the event interval (1/rate)",
            "ratio": round(p99 / interval_s, 2),
            "goal": GOAL_SECONDS,
            "goal_ratio": round(p99 / GOAL_SECONDS, 3),
            "meets_goal": p99 < GOAL_SECONDS and len(lags) == len(producer.event_ids),
            "p50_s": round(_pct(lags, 0.5), 4),
            "max_s": round(max(lags), 4) if lags else None,
            "events": len(producer.event_ids),
            "applied": len(lags),
            "quarantined": quarantined,
            "rate": rate,
            "seconds": seconds,
            "producer_max_behind_s": round(producer.behind, 4),
            "poll_interval_s": poll,
            "mode": mode,
            "dispatchers": dispatchers if mode == "embedded" else None,
            "n": n,
        }
    ]


if __name__ == "__main__":
    for result in run(
        int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000,
        seconds=float(sys.argv[2]) if len(sys.argv) > 2 else 60.0,
        mode=sys.argv[3] if len(sys.argv) > 3 else "embedded",
        keep=1,
    ):
        print(json.dumps(result, ensure_ascii=False))
