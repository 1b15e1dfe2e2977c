"""The identity network's benchmarks (bench/network_*.py) at a tiny size: fields and sane values.

No timing assertions: the figures are the benchmarks' business (docs/network-bench.md). These
tests prove each benchmark runs end to end on PostgreSQL (a scratch schema per run, dropped
afterwards) and reports what it says it reports.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

BENCH = Path(__file__).resolve().parents[1] / "bench"
PG_URL = os.environ.get("KIBAN_TEST_DATABASE_URL", "")


@pytest.fixture(autouse=True)
def _postgres(monkeypatch: pytest.MonkeyPatch) -> None:
    if not PG_URL.startswith("postgresql"):
        pytest.skip("the network benchmarks need PostgreSQL (KIBAN_TEST_DATABASE_URL)")
    monkeypatch.setenv("KIBAN_BENCH_DATABASE_URL", PG_URL)


def _bench(name: str) -> ModuleType:
    # As the benchmarks import each other: by name, from bench/.
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def _schemas() -> set[str]:
    from sqlalchemy.engine import make_url

    dsn = make_url(PG_URL).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as conn:
        return {
            r[0] for r in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'bench_net_%'")
        }


def _common(line: dict[str, Any], bench: str) -> None:
    assert line["bench"] == bench
    for key in ("name", "value", "unit", "baseline", "ratio", "goal", "meets_goal"):
        assert key in line, key
    assert line["value"] > 0 and line["baseline"] > 0
    assert math.isclose(line["ratio"], line["value"] / line["baseline"], rel_tol=0.02, abs_tol=1e-3)
    assert isinstance(line["meets_goal"], bool)


def test_scale_loader_makes_valid_identifiers_and_drops_its_schema() -> None:
    from kiban.core.identifiers import validate_individual_number, validate_resident_code

    scale_module = _bench("network_scale")
    before = _schemas()
    with scale_module.national_copy(2000, progress=False) as scale:
        with psycopg.connect(scale.dsn) as conn:
            rows = conn.execute(
                "SELECT resident_code, individual_number, prefecture_code, municipality_code, kana_key "
                "FROM network_national_identity"
            ).fetchall()
            uses = conn.execute("SELECT count(*) FROM network_uses").fetchone()
        assert len(rows) == 2000
        assert len({r[0] for r in rows}) == 2000 and len({r[1] for r in rows}) == 2000
        for code, number, prefecture, municipality, kana in rows:
            assert validate_resident_code(code) == code
            assert validate_individual_number(number) == number
            assert municipality[:2] == prefecture and kana
        assert len({r[2] for r in rows}) > 30  # spread over the prefectures
        assert uses and uses[0] > 0  # the registry of uses is loaded
        assert scale.schema in _schemas()
    assert _schemas() == before


def test_lookup_bench_reports_api_and_raw_throughput_and_p99() -> None:
    (line,) = _bench("network_lookup").run(n=2000, seconds=1, clients=2, workers=1, sample=500)
    _common(line, "network_lookup")
    assert line["goal"] == 0.40
    assert line["requests"] > 0 and line["baseline_requests"] > 0 and line["healthz_rps"] > 0
    assert set(line["outcomes"]) == {"provided"}  # every sampled 個人番号 found, none refused
    assert set(line["baseline_outcomes"]) == {"provided"}
    assert 0 < line["p50_ms"] <= line["p99_ms"]
    assert 0 < line["baseline_p50_ms"] <= line["baseline_p99_ms"]


def test_bulk_bench_reports_service_and_api_against_copy_out() -> None:
    lines = _bench("network_bulk").run(n=2000, rows=1000)
    assert [line["name"] for line in lines] == ["bulk_provision_service", "bulk_provision_api"]
    for line in lines:
        _common(line, "network_bulk")
        assert line["goal"] == 0.30
        assert line["provided"] == line["rows"] > 900  # distinct sampled codes, all provided
        assert line["baseline_bytes"] > 0


def test_replication_bench_reports_lag_per_event() -> None:
    (line,) = _bench("network_replication").run(n=2000, rate=50, seconds=2, interval=0.05)
    _common(line, "network_replication")
    assert line["events"] == 100 and line["applied"] == 100 and line["quarantined"] == 0
    assert 0 <= line["p50_s"] <= line["value"] <= line["max_s"]
    assert line["baseline"] == 0.02 and line["goal"] == 1.0


@pytest.mark.nats
def test_replication_bench_distributed_over_nats() -> None:
    (line,) = _bench("network_replication").run(n=2000, rate=20, seconds=2, mode="distributed", interval=0.05)
    _common(line, "network_replication")
    assert line["events"] == 40 and line["applied"] == 40 and line["quarantined"] == 0


def test_scale_loader_can_partition_the_copy_by_prefecture() -> None:
    """The bench-only LIST partitioning (docs/network-bench.md): 47 partitions, same rows, same look-up."""
    scale_module = _bench("network_scale")
    with scale_module.national_copy(2000, progress=False, partitioned=True) as scale:
        with psycopg.connect(scale.dsn) as conn:
            parts = conn.execute(
                "SELECT count(*) FROM pg_inherits WHERE inhparent = 'network_national_identity'::regclass"
            ).fetchone()
            number = conn.execute(
                "SELECT individual_number, prefecture_code FROM network_national_identity LIMIT 1"
            ).fetchone()
            assert number is not None
            found = conn.execute(
                "SELECT tableoid::regclass::text FROM network_national_identity "
                "WHERE is_current AND individual_number = %s",
                (number[0],),
            ).fetchall()
        assert parts == (47,)
        assert found == [(f"network_national_identity_p{number[1]}",)]
