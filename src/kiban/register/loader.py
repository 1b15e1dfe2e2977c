"""Bulk loader (一括登録) of households and residents into the register tables.

PostgreSQL gets ``COPY … FROM STDIN`` through psycopg 3, SQLite ``executemany``; both write
one transaction per batch, so a failed batch leaves earlier batches committed and nothing of
itself (the caller sees which batch failed). The identifiers are not the generator's business:
``resident_code_source`` yields the 住民票コード (the demo uses the numbering service) and
``individual_number_for`` maps a 住民票コード to its 個人番号 where one is to be stored.
"""

from __future__ import annotations

import os
import random
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jaconv
from sqlalchemy import Engine, insert

from kiban.core.database import utcnow
from kiban.register.models import Household as HouseholdRow
from kiban.register.models import Resident as ResidentRow
from kiban.register.models import ResidentStatus, kana_search_key, name_search_key
from kiban.register.population import Household

HOUSEHOLD_COLUMNS: tuple[str, ...] = (
    "id",
    "municipality_code",
    "head_resident_id",
    "postal_code",
    "prefecture",
    "municipality",
    "town",
    "banchi",
    "katagaki",
    "created_at",
    "updated_at",
    "version",
)

RESIDENT_COLUMNS: tuple[str, ...] = (
    "id",
    "municipality_code",
    "household_id",
    "resident_code",
    "individual_number",
    "family_name",
    "given_name",
    "family_name_kana",
    "given_name_kana",
    "old_family_name",
    "old_family_name_kana",
    "alias",
    "alias_kana",
    "romaji_name",
    "name_search_key",
    "kana_search_key",
    "birth_date",
    "sex",
    "relationship",
    "postal_code",
    "prefecture",
    "municipality",
    "town",
    "banchi",
    "katagaki",
    "address_since",
    "resident_since",
    "previous_address",
    "pre_move_address",
    "honseki",
    "hittousha",
    "nationality",
    "residence_status",
    "period_of_stay_end",
    "residence_card_number",
    "foreign_resident_since",
    "elector",
    "national_health_insurance",
    "national_pension",
    "status",
    "removed_reason",
    "removed_on",
    "removed_at",
    "created_at",
    "updated_at",
    "version",
)

ResidentCodeSource = Callable[[], str] | Iterable[str]
Progress = Callable[[int], None]

_HALF_WIDTH_KANA = re.compile("[\uff61-\uff9f]")


class LoadError(RuntimeError):
    """A batch could not be loaded; earlier batches stay committed."""

    def __init__(self, batch: int, loaded: int, cause: BaseException) -> None:
        super().__init__(f"batch {batch} failed after {loaded} residents were loaded: {cause}")
        self.batch = batch
        self.loaded = loaded


@dataclass
class LoadStats:
    """What :func:`load_population` wrote and how fast."""

    households: int = 0
    residents: int = 0
    batches: int = 0
    seconds: float = 0.0

    @property
    def residents_per_second(self) -> float:
        return self.residents / self.seconds if self.seconds else 0.0


class _Ids:
    """Time-ordered UUIDs (version 7 layout): cheap to make and kind to B-tree indexes."""

    def __init__(self) -> None:
        self._rng = random.Random(os.urandom(16))
        self._counter = 0
        self._ms = 0

    def new(self) -> str:
        """The next id as 32 hex digits (what PostgreSQL's COPY and ``uuid.UUID(hex=…)`` accept)."""
        ms = time.time_ns() // 1_000_000
        if ms != self._ms:
            self._ms = ms
            self._counter = self._rng.getrandbits(40)
        self._counter += 1
        value = (ms & (2**48 - 1)) << 80 | 0x7 << 76 | (self._counter >> 30 & 0xFFF) << 64
        value |= 0b10 << 62 | (self._counter & (2**30 - 1)) << 32 | self._rng.getrandbits(32)
        return f"{value:032x}"


def _full_width(kana: str | None) -> str | None:
    # Half-width katakana is normalised on input and never stored (SPEC K1).
    if kana is None or not _HALF_WIDTH_KANA.search(kana):
        return kana
    return jaconv.h2z(kana, kana=True, ascii=False, digit=False)


def _code_supplier(source: ResidentCodeSource) -> Callable[[], str]:
    if callable(source):
        return source
    iterator = iter(source)

    def next_code() -> str:
        try:
            return next(iterator)
        except StopIteration:
            raise ValueError("resident_code_source: ran out of 住民票コード before the population") from None

    return next_code


def build_rows(
    households: Iterable[Household],
    resident_code_source: ResidentCodeSource,
    individual_number_for: Callable[[str], str | None] | None = None,
) -> Iterator[tuple[tuple[Any, ...], list[tuple[Any, ...]]]]:
    """The table rows (in :data:`HOUSEHOLD_COLUMNS` / :data:`RESIDENT_COLUMNS` order) per household."""
    next_code = _code_supplier(resident_code_source)
    ids = _Ids()
    active = ResidentStatus.ACTIVE.value
    now: datetime = utcnow()
    for count, hh in enumerate(households):
        if count % 4096 == 0:
            now = utcnow()
        household_id = ids.new()
        rows: list[tuple[Any, ...]] = []
        for p in hh.members:
            resident_id = ids.new()
            code = next_code()
            number = individual_number_for(code) if individual_number_for is not None else None
            family_kana = _full_width(p.family_name_kana) or ""
            given_kana = _full_width(p.given_name_kana) or ""
            rows.append(
                (
                    resident_id,
                    hh.municipality_code,
                    household_id,
                    code,
                    number,
                    p.family_name,
                    p.given_name,
                    family_kana,
                    given_kana,
                    p.old_family_name,
                    _full_width(p.old_family_name_kana),
                    p.alias,
                    _full_width(p.alias_kana),
                    p.romaji_name,
                    name_search_key(p.family_name, p.given_name),
                    kana_search_key(family_kana, given_kana),
                    p.birth_date,
                    int(p.sex),
                    p.relationship,
                    hh.postal_code,
                    hh.prefecture,
                    hh.municipality,
                    hh.town,
                    hh.banchi,
                    hh.katagaki,
                    p.address_since,
                    p.resident_since,
                    p.previous_address,
                    p.pre_move_address,
                    p.honseki,
                    p.hittousha,
                    p.nationality,
                    p.residence_status,
                    p.period_of_stay_end,
                    p.residence_card_number,
                    p.foreign_resident_since,
                    p.elector,
                    p.national_health_insurance,
                    p.national_pension,
                    active,
                    None,
                    None,
                    None,
                    now,
                    now,
                    1,
                )
            )
        head_id = rows[0][0] if rows else None
        household = (
            household_id,
            hh.municipality_code,
            head_id,
            hh.postal_code,
            hh.prefecture,
            hh.municipality,
            hh.town,
            hh.banchi,
            hh.katagaki,
            now,
            now,
            1,
        )
        yield household, rows


def _batches(
    rows: Iterator[tuple[tuple[Any, ...], list[tuple[Any, ...]]]], batch_size: int
) -> Iterator[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
    households: list[tuple[Any, ...]] = []
    residents: list[tuple[Any, ...]] = []
    for household, members in rows:
        households.append(household)
        residents.extend(members)
        if len(residents) >= batch_size:
            yield households, residents
            households, residents = [], []
    if households:
        yield households, residents


def copy_rows(
    dbapi_connection: Any,
    households: list[tuple[Any, ...]],
    residents: list[tuple[Any, ...]],
    *,
    household_table: str = "households",
    resident_table: str = "residents",
) -> None:
    """COPY one batch into PostgreSQL through a psycopg 3 connection (no commit)."""
    with dbapi_connection.cursor() as cur:
        with cur.copy(f"COPY {household_table} ({', '.join(HOUSEHOLD_COLUMNS)}) FROM STDIN") as copy:
            for row in households:
                copy.write_row(row)
        with cur.copy(f"COPY {resident_table} ({', '.join(RESIDENT_COLUMNS)}) FROM STDIN") as copy:
            for row in residents:
                copy.write_row(row)


def load_population(
    engine: Engine,
    households: Iterable[Household],
    resident_code_source: ResidentCodeSource,
    individual_number_for: Callable[[str], str | None] | None = None,
    batch_size: int = 50_000,
    progress: Progress | None = None,
) -> LoadStats:
    """Write ``households`` and their members into the register tables of ``engine``.

    ``batch_size`` counts residents; each batch is one transaction. ``progress`` is called with
    the number of residents loaded so far after every batch.
    """
    if batch_size < 1:
        raise ValueError("batch_size: must be at least 1")
    stats = LoadStats()
    started = time.perf_counter()
    batches = _batches(build_rows(households, resident_code_source, individual_number_for), batch_size)
    postgres = engine.dialect.name == "postgresql"
    number = 0
    while True:
        number += 1
        try:
            batch = next(batches, None)
            if batch is None:
                break
            hh_rows, res_rows = batch
            if postgres:
                _load_postgres(engine, hh_rows, res_rows)
            else:
                _load_generic(engine, hh_rows, res_rows)
        except Exception as exc:
            raise LoadError(number, stats.residents, exc) from exc
        stats.batches = number
        stats.households += len(hh_rows)
        stats.residents += len(res_rows)
        if progress is not None:
            progress(stats.residents)
    stats.seconds = time.perf_counter() - started
    return stats


def _load_postgres(
    engine: Engine, households: list[tuple[Any, ...]], residents: list[tuple[Any, ...]]
) -> None:
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        try:
            copy_rows(conn, households, residents)
            conn.commit()  # type: ignore[union-attr]
        except BaseException:
            conn.rollback()  # type: ignore[union-attr]
            raise
    finally:
        raw.close()


def _load_generic(
    engine: Engine, households: list[tuple[Any, ...]], residents: list[tuple[Any, ...]]
) -> None:
    # executemany through SQLAlchemy Core, so that column types (UUID, dates, UTC timestamps)
    # are stored exactly as the ORM would store them.
    households = [(uuid.UUID(r[0]), r[1], uuid.UUID(r[2]) if r[2] else None, *r[3:]) for r in households]
    residents = [(uuid.UUID(r[0]), r[1], uuid.UUID(r[2]), *r[3:]) for r in residents]
    with engine.begin() as conn:
        conn.execute(insert(HouseholdRow), [dict(zip(HOUSEHOLD_COLUMNS, r, strict=True)) for r in households])
        for start in range(0, len(residents), 10_000):
            chunk = residents[start : start + 10_000]
            conn.execute(insert(ResidentRow), [dict(zip(RESIDENT_COLUMNS, r, strict=True)) for r in chunk])
