"""The national copy (機構保存本人確認情報) at national scale, for the identity-network benchmarks.

Not a benchmark itself: :func:`national_copy` gives the other ``network_*`` benchmarks a scratch
PostgreSQL schema, migrated by the project's own migrations (``kiban.core.database.upgrade`` with a
``search_path`` URL, as bench/register_events.py does), holding ``n`` current rows of
``network_national_identity`` loaded by COPY, then ANALYZEd. The registry of agencies and uses
(``uses.json``) is loaded too.

The rows are synthetic but realistic:

- 住民票コード: ten digits with no leading zero and no obvious pattern (the generator's rule,
  :func:`kiban.core.identifiers.is_obvious_pattern`) plus the check digit of
  :func:`~kiban.core.identifiers.resident_code_check_digit`. Unique by construction: the ten digits
  are an affine permutation of the row number (``i·A + B mod 9·10⁹``), so no 10-million-entry set
  is needed.
- 個人番号: eleven digits, likewise a permutation of the row number, plus the check digit of
  :func:`~kiban.core.identifiers.individual_number_check_digit` (the real FF3-1 derivation from
  the 住民票コード costs ~20 µs a row and belongs to the identifiers benchmark; what matters here
  is a valid, unique 12-digit value in the index).
- names and readings from :func:`kiban.register.population.japanese_names` (gimei), 性別 matching
  the given name, birth dates over 0-100 years, municipalities (1,741, wards excluded: the network
  knows municipalities) and their 町字 from the master, so 47 prefectures.

Loading: the secondary indexes of the table are dropped, the rows COPYed (the Python generator and
the server's COPY overlap), the indexes recreated from their exact definitions (with
``maintenance_work_mem`` raised) and the table ANALYZEd. A rich progress bar shows the rows and
the index builds on stderr.

Cache-friendly: ``keep=True`` names the schema ``bench_net_<n>_<seed>`` and leaves it in place
(its ``COMMENT`` records that the load completed), so the three benchmarks of a 10-million-row
run share one load; ``kiban bench network_scale -p drop=1 -p n=…`` (or :func:`drop`) removes it.
Without ``keep`` the schema has a random name and is dropped on exit.

Run alone: ``python bench/network_scale.py 10000000 keep`` loads (or finds) the kept schema.
"""

from __future__ import annotations

import os
import random
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

DEFAULT_URL = "postgresql+psycopg://root@127.0.0.1:5432/test"
TABLE = "network_national_identity"
COLUMNS = (
    "resident_code",
    "prefecture_code",
    "municipality_code",
    "version_no",
    "is_current",
    "previous_resident_code",
    "family_name",
    "given_name",
    "family_name_kana",
    "given_name_kana",
    "old_family_name",
    "old_family_name_kana",
    "kana_key",
    "birth_date",
    "sex",
    "address",
    "individual_number",
    "status",
    "reason",
    "reason_ja",
    "effective_on",
    "notified_on",
    "event_id",
    "event_occurred_at",
    "applied_at",
)
# Affine permutations (multipliers coprime to 9·10⁹ and 9·10¹⁰): unique digits without a set.
CODE_SPACE, CODE_A, CODE_B = 9_000_000_000, 2_654_435_761, 1_234_567_891
NUMBER_SPACE, NUMBER_A, NUMBER_B = 90_000_000_000, 2_246_822_519, 31_415_926_535
BLOCK = 20_000  # rows per COPY write
COMPLETE = "kiban network scale: complete"


def database_url(url: str | None = None) -> str:
    found = url or os.environ.get("KIBAN_BENCH_DATABASE_URL") or DEFAULT_URL
    if not found.startswith("postgresql"):
        raise ValueError("database_url: the network benchmarks need PostgreSQL")
    return found


def with_schema(url: str, schema: str) -> str:
    parsed = make_url(url)
    query = dict(parsed.query)
    query["options"] = f"-csearch_path={schema}"
    return parsed.set(query=query).render_as_string(hide_password=False)


def psycopg_dsn(url: str) -> str:
    """A libpq DSN for a SQLAlchemy URL (the search_path option is kept)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass(frozen=True)
class Scale:
    """A loaded national copy: its schema, the URL that selects it, and how it was loaded."""

    schema: str
    url: str  # SQLAlchemy URL with search_path
    dsn: str  # the same for raw psycopg
    n: int
    load_seconds: float | None  # None when a kept schema was reused

    def sample(self, column: str, count: int, seed: int = 7) -> list[str]:
        """``count`` values of ``column`` of random current rows (ids drawn, not ORDER BY random())."""
        rng = random.Random(seed)
        ids = [rng.randrange(1, self.n + 1) for _ in range(count * 2)]
        with psycopg.connect(self.dsn) as conn:
            found = conn.execute(
                f"SELECT {column} FROM {TABLE} WHERE id = ANY(%s) AND is_current",  # noqa: S608 - constant
                (ids,),
            ).fetchall()
        values = [r[0] for r in found]
        rng.shuffle(values)
        return (values * (count // max(len(values), 1) + 1))[:count]


class _Rows:
    """Generates the COPY text of the rows, deterministic for a seed."""

    def __init__(self, seed: int) -> None:
        from kiban.core import master
        from kiban.register.population import japanese_names

        self.rng = random.Random(seed)
        names = japanese_names()
        self.family = names["family"]
        self.male = names["male"]
        self.female = names["female"]
        self.bodies: list[tuple[str, str, str, list[str]]] = []
        for m in master.municipalities(include_wards=False):
            towns = [t.name for t in master.towns(m.code)[:30] if t.name] or [""]
            self.bodies.append((m.code, m.prefecture_code, f"{m.prefecture}{m.address_name}", towns))
        self.code_j = 0  # position in the code permutation (obvious patterns are skipped)
        self.today = date(2026, 11, 25).toordinal()
        self.now = datetime.now(UTC).isoformat()

    def _resident_code(self) -> str:
        from kiban.core.identifiers import is_obvious_pattern, resident_code_check_digit

        while True:
            ten = str(1_000_000_000 + (self.code_j * CODE_A + CODE_B) % CODE_SPACE)
            self.code_j += 1
            if not is_obvious_pattern(ten):
                return ten + str(resident_code_check_digit(ten))

    def block(self, start: int, count: int) -> str:
        from kiban.core.identifiers import individual_number_check_digit

        rng = self.rng
        randrange = rng.randrange
        choice = rng.choice
        family, male, female, bodies = self.family, self.male, self.female, self.bodies
        lines: list[str] = []
        for i in range(start, start + count):
            code = self._resident_code()
            eleven = str(10_000_000_000 + (i * NUMBER_A + NUMBER_B) % NUMBER_SPACE)
            number = eleven + str(individual_number_check_digit(eleven))
            muni, pref, place, towns = choice(bodies)
            fam, fam_kana = choice(family)
            sex = 1 if randrange(2) == 0 else 2
            given, given_kana = choice(male if sex == 1 else female)
            birth = date.fromordinal(self.today - randrange(1, 36_800)).isoformat()
            address = f"{place}{choice(towns)}{randrange(1, 30)}番{randrange(1, 25)}号"
            lines.append(
                f"{code}\t{pref}\t{muni}\t1\tt\t\\N\t{fam}\t{given}\t{fam_kana}\t{given_kana}\t\\N\t\\N\t"
                f"{fam_kana}{given_kana}\t{birth}\t{sex}\t{address}\t{number}\tactive\tinitial_load\t初期登録\t"
                f"{birth}\t\\N\tinitial:{i}\t{self.now}\t{self.now}\n"
            )
        return "".join(lines)


def _progress() -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )


# The unique keys of the table, widened by the partition key (PostgreSQL requires it on a
# partitioned table): what docs/network.md's partitioning paragraph describes.
_PARTITION_KEYS = {
    "pk_network_national_identity": "PRIMARY KEY (id, prefecture_code)",
}
_PARTITION_INDEXES = {
    "ix_network_national_identity_code_version": "(resident_code, version_no, prefecture_code)",
    "ix_network_national_identity_event_id": "(event_id, prefecture_code)",
    "ix_network_national_identity_current_code": "(resident_code, prefecture_code) WHERE is_current",
}


def _partition(conn: Any, schema: str) -> list[tuple[str, str]]:
    """Replace the (empty) national copy by one LIST-partitioned by prefecture (47 partitions).

    Returns the index definitions to create after the load (unique ones widened by the key).
    """
    from kiban.core import master

    conn.execute(f"ALTER TABLE {TABLE} RENAME TO {TABLE}_flat")
    conn.execute(
        f"CREATE TABLE {TABLE} (LIKE {TABLE}_flat INCLUDING DEFAULTS) PARTITION BY LIST (prefecture_code)"
    )
    for prefecture in master.prefectures():
        code = prefecture.code
        conn.execute(f"CREATE TABLE {TABLE}_p{code} PARTITION OF {TABLE} FOR VALUES IN ('{code}')")
    definitions = conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = %s",
        (schema, f"{TABLE}_flat"),
    ).fetchall()
    conn.execute(f"ALTER SEQUENCE {TABLE}_id_seq OWNED BY {TABLE}.id")
    conn.execute(f"DROP TABLE {TABLE}_flat")
    wanted: list[tuple[str, str]] = []
    for name, definition in definitions:
        if name in _PARTITION_KEYS:
            wanted.append((name, f"ALTER TABLE {TABLE} ADD {_PARTITION_KEYS[name]}"))
            continue
        definition = definition.replace(f"{TABLE}_flat", TABLE)
        if name in _PARTITION_INDEXES:
            head = definition.split(" USING btree ")[0]
            definition = f"{head} USING btree {_PARTITION_INDEXES[name]}"
        wanted.append((name, definition))
    return wanted


def load(
    url: str, schema: str, n: int, *, seed: int = 1, progress: bool = True, partitioned: bool = False
) -> float:
    """Migrate ``schema`` and COPY ``n`` current rows into its national copy; seconds taken.

    ``partitioned``: the table is first replaced by a LIST-partitioned one (bench schemas only;
    the migrations are unchanged), to measure docs/network.md's partitioning decision.
    """
    from kiban.core.database import make_engine, session_factory, upgrade
    from kiban.network import service as network

    started = time.perf_counter()
    scoped = with_schema(url, schema)
    upgrade(scoped)
    engine = make_engine(scoped)
    with session_factory(engine).begin() as s:
        network.load_registry(s)
    engine.dispose()
    rows = _Rows(seed)
    bar = _progress() if progress else None
    with psycopg.connect(psycopg_dsn(scoped), autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '1GB'")
        if partitioned:
            indexes = _partition(conn, schema)
        else:
            indexes = conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes i WHERE schemaname = %s AND tablename = %s "
                "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)",
                (schema, TABLE),
            ).fetchall()
            for name, _ in indexes:
                conn.execute(f'DROP INDEX "{schema}"."{name}"')
        if bar is not None:
            bar.start()
            task = bar.add_task(f"COPY {TABLE}", total=n)
        sql = f"COPY {TABLE} ({', '.join(COLUMNS)}) FROM STDIN"
        with conn.transaction(), conn.cursor() as cur, cur.copy(sql) as copy:
            for start in range(0, n, BLOCK):
                count = min(BLOCK, n - start)
                copy.write(rows.block(start, count))
                if bar is not None:
                    bar.advance(task, count)
        if bar is not None:
            index_task = bar.add_task("indexes + ANALYZE", total=len(indexes) + 1)
        for _, definition in indexes:
            conn.execute(definition)
            if bar is not None:
                bar.advance(index_task)
        conn.execute(f"ANALYZE {TABLE}")
        if bar is not None:
            bar.advance(index_task)
            bar.stop()
        conn.execute(f"COMMENT ON SCHEMA \"{schema}\" IS '{_marker(n, seed, partitioned)}'")
    return time.perf_counter() - started


def _marker(n: int, seed: int, partitioned: bool) -> str:
    return f"{COMPLETE} n={n} seed={seed}" + (" partitioned" if partitioned else "")


def kept_schema(n: int, seed: int, partitioned: bool = False) -> str:
    return f"bench_net_{n}_{seed}" + ("_part" if partitioned else "")


def _is_complete(url: str, schema: str, n: int, seed: int, partitioned: bool) -> bool:
    with psycopg.connect(psycopg_dsn(url)) as conn:
        row = conn.execute(
            "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = %s", (schema,)
        ).fetchone()
    return row is not None and row[0] == _marker(n, seed, partitioned)


def drop(url: str | None, schema: str) -> None:
    with psycopg.connect(psycopg_dsn(database_url(url)), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextmanager
def national_copy(
    n: int,
    *,
    seed: int = 1,
    url: str | None = None,
    keep: bool = False,
    progress: bool = True,
    partitioned: bool = False,
) -> Iterator[Scale]:
    """A scratch schema with ``n`` residents in the national copy (see the module docstring)."""
    base = database_url(url)
    if keep:
        schema = kept_schema(n, seed, partitioned)
        if _is_complete(base, schema, n, seed, partitioned):
            scoped = with_schema(base, schema)
            yield Scale(schema, scoped, psycopg_dsn(scoped), n, None)
            return
        drop(base, schema)  # a half-done load is not reused
    else:
        schema = f"bench_net_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(psycopg_dsn(base), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        seconds = load(base, schema, n, seed=seed, progress=progress, partitioned=partitioned)
        scoped = with_schema(base, schema)
        yield Scale(schema, scoped, psycopg_dsn(scoped), n, seconds)
    except BaseException:
        drop(base, schema)
        raise
    if not keep:
        drop(base, schema)


def run(
    n: int = 10_000_000,
    seed: int = 1,
    keep: int = 1,
    drop_schema: int = 0,
    partitioned: int = 0,
    **_: Any,
) -> list[dict[str, Any]]:
    """Load (or find) the kept national copy, reporting the load rate; ``drop_schema=1`` removes it."""
    n, seed, parts = int(n), int(seed), bool(int(partitioned))
    if int(drop_schema):
        drop(None, kept_schema(n, seed, parts))
        return [{"bench": "network_scale", "name": "dropped", "schema": kept_schema(n, seed, parts)}]
    copy = national_copy(n, seed=seed, keep=bool(int(keep)), partitioned=parts)
    with copy as scale, psycopg.connect(scale.dsn) as conn:
        size = conn.execute(
            "SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c "
            "WHERE c.relkind = 'r' AND c.relname LIKE %s AND c.relnamespace = current_schema()::regnamespace",
            (TABLE + "%",),
        ).fetchone()
        count = conn.execute(f"SELECT count(*) FROM {TABLE} WHERE is_current").fetchone()
    return [
        {
            "bench": "network_scale",
            "name": "national_copy_load",
            "value": round(n / scale.load_seconds, 1) if scale.load_seconds else None,
            "unit": "rows/s",
            "n": n,
            "rows": count[0] if count else None,
            "seconds": round(scale.load_seconds, 1) if scale.load_seconds else None,
            "reused": scale.load_seconds is None,
            "bytes": size[0] if size else None,
            "schema": scale.schema,
            "partitioned": parts,
        }
    ]


if __name__ == "__main__":
    import json

    size = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000
    for line in run(size, keep=int("keep" in sys.argv[2:]), partitioned=int("partitioned" in sys.argv[2:])):
        print(json.dumps(line, ensure_ascii=False))
