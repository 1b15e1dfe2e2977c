"""Look-ups on the current version use the partial indexes (``WHERE is_current``) on both engines."""

from __future__ import annotations

from sqlalchemy import Engine, select, text

from kiban.network.models import NationalIdentity as N
from kiban.network.models import current_version


def _plan(engine: Engine, statement: object) -> str:
    compiled = statement.compile(engine, compile_kwargs={"literal_binds": True})  # type: ignore[attr-defined]
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SET enable_seqscan = off"))
            rows = conn.execute(text(f"EXPLAIN {compiled}")).all()
        else:
            rows = conn.execute(text(f"EXPLAIN QUERY PLAN {compiled}")).all()
    return "\n".join(str(r[-1]) for r in rows)


def test_lookup_by_number_and_code_use_the_current_indexes(engine: Engine) -> None:
    by_number = select(N.id).where(current_version(N), N.individual_number == "123456789018")
    by_code = select(N.id).where(current_version(N), N.resident_code == "12345678901")
    assert "ix_network_national_identity_current_number" in _plan(engine, by_number)
    assert "current" in _plan(engine, by_code).lower() and "index" in _plan(engine, by_code).lower()


def test_is_true_would_miss_them(engine: Engine) -> None:
    # Why current_version exists: the obvious spelling scans every version.
    spelled = select(N.id).where(N.is_current.is_(True), N.individual_number == "123456789018")
    assert "ix_network_national_identity_current_number" not in _plan(engine, spelled)
