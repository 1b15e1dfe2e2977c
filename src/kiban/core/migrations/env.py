"""Alembic environment: runs Kiban's migrations on SQLite or PostgreSQL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from kiban.core.database import import_all_models, make_engine

config = context.config
target_metadata = import_all_models()


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        _run(connectable)
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        _run(connection)
        # The PRAGMA above auto-began SQLAlchemy's transaction, so Alembic's block did not end it.
        connection.commit()
    engine.dispose()


def _run(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # Batch mode rebuilds SQLite tables (copy, drop, rename); with foreign keys enforced the
        # drop fails as soon as rows point at the table. Off for the migration (it only takes
        # effect outside a transaction), then every reference is checked before commit.
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        # pysqlite commits before DDL on its own; with the driver in autocommit mode and an
        # explicit BEGIN, a failed migration rolls back whole instead of leaving half a table.
        driver = connection.connection.driver_connection
        driver.isolation_level = None  # type: ignore[union-attr]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite needs batch mode for ALTER
        compare_type=True,
    )
    with context.begin_transaction():
        if sqlite:
            connection.exec_driver_sql("BEGIN")
        context.run_migrations()
        if sqlite:
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(
                    f"migration left broken foreign keys (rule: foreign_key_check): {broken[:5]}"
                )
    if sqlite:
        connection.exec_driver_sql("PRAGMA foreign_keys=ON")
        driver.isolation_level = ""  # type: ignore[union-attr]


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
