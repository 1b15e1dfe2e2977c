"""Migrations are the only way the schema is made: upgrade from empty works, models match."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect

from kiban.core.database import import_all_models


def test_migrations_match_models(engine: Engine) -> None:
    metadata = import_all_models()
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, metadata)
    assert diff == [], f"models and migrations drifted apart: {diff}"


def test_upgrade_creates_every_table(engine: Engine) -> None:
    metadata = import_all_models()
    present = set(inspect(engine).get_table_names())
    assert "alembic_version" in present
    assert set(metadata.tables) <= present
