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


def test_migrations_have_a_single_head() -> None:
    from alembic.script import ScriptDirectory

    from kiban.core.database import alembic_config

    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    assert len(heads) == 1, f"several migration heads {heads}: add a merge revision"


def test_downgrade_to_base_and_upgrade_again(db_url: str) -> None:
    from alembic import command
    from sqlalchemy import create_engine

    from kiban.core.database import alembic_config, upgrade

    command.downgrade(alembic_config(db_url), "base")
    engine = create_engine(db_url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    upgrade(db_url)
    engine = create_engine(db_url)
    assert set(import_all_models().tables) <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_db_upgrade_command(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from kiban.cli.main import app

    runner = CliRunner()
    env = {"KIBAN_DATABASE_URL": ""}
    bad = runner.invoke(app, ["db", "upgrade", "--data", str(tmp_path), "--revision", "nonsense"], env=env)
    assert bad.exit_code == 2
    assert "known_revision" in bad.output
    good = runner.invoke(app, ["db", "upgrade", "--data", str(tmp_path)], env=env)
    assert good.exit_code == 0, good.output
    from sqlalchemy import create_engine

    engine = create_engine(f"sqlite:///{tmp_path / 'kiban.sqlite'}")
    assert "residents" in inspect(engine).get_table_names()
    engine.dispose()
