"""Shared fixtures: a migrated database per test, on SQLite always and on PostgreSQL when asked.

``KIBAN_TEST_DATABASE_URL`` selects PostgreSQL (scripts/test.sh sets it for the second run).
On PostgreSQL every pytest run migrates a schema of its own and each test starts from empty
tables; on SQLite each test gets a copy of a freshly migrated file.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from kiban.core.database import import_all_models, make_engine, session_factory, upgrade

PG_URL = os.environ.get("KIBAN_TEST_DATABASE_URL", "")


def is_postgres() -> bool:
    return PG_URL.startswith("postgresql")


def _pg_url_with_schema(url: str, schema: str) -> str:
    parsed = make_url(url)
    query = dict(parsed.query)
    query["options"] = f"-csearch_path={schema}"
    return parsed.set(query=query).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a database migrated once for the whole run (SQLite file or PG schema)."""
    if is_postgres():
        schema = f"kt_{uuid.uuid4().hex[:12]}"
        admin = make_engine(PG_URL)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = _pg_url_with_schema(PG_URL, schema)
        upgrade(url)
        yield url
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    else:
        path = tmp_path_factory.mktemp("template") / "kiban.sqlite"
        url = f"sqlite:///{path}"
        upgrade(url)
        yield url


@pytest.fixture
def db_url(migrated_template: str, tmp_path: Path) -> str:
    """A migrated, empty database for one test."""
    if is_postgres():
        engine = make_engine(migrated_template)
        # Only migrated tables: a model still without its migration must not break every test.
        present = set(inspect(engine).get_table_names())
        tables = [t.name for t in import_all_models().sorted_tables if t.name in present]
        if tables:
            names = ", ".join(f'"{t}"' for t in tables)
            # TRUNCATE takes exclusive locks on every table at once; an autovacuum/ANALYZE
            # holding one of them can make PostgreSQL pick us as a deadlock victim: retry.
            for attempt in range(5):
                try:
                    with engine.begin() as conn:
                        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
                    break
                except OperationalError:
                    if attempt == 4:
                        raise
                    time.sleep(0.2 * (attempt + 1))
        engine.dispose()
        return migrated_template
    source = Path(make_url(migrated_template).database or "")
    target = tmp_path / "kiban.sqlite"
    shutil.copyfile(source, target)
    return f"sqlite:///{target}"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def session_maker(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


@pytest.fixture
def session(session_maker: sessionmaker[Session]) -> Iterator[Session]:
    with session_maker() as s:
        yield s


SOFTHSM_PIN = "246810"
# Every token the suite uses, made before the PKCS#11 module is first loaded: SoftHSM2 reads
# SOFTHSM2_CONF once per process (C_Initialize), so a token directory set up later is never seen.
SOFTHSM_TOKENS = ("kiban-test", "kiban-doc")


@pytest.fixture(scope="session")
def softhsm_conf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One SoftHSM2 configuration for the whole run, with the suite's tokens initialised."""
    import subprocess

    from kiban.jpki.keys import DEFAULT_SOFTHSM_LIBRARY

    if shutil.which("softhsm2-util") is None or not Path(DEFAULT_SOFTHSM_LIBRARY).exists():
        if os.environ.get("CI"):
            pytest.fail("CI run: softhsm2 (Debian package) is not installed")
        pytest.skip("softhsm2 (Debian package) is not installed")
    directory = tmp_path_factory.mktemp("softhsm")
    (directory / "tokens").mkdir()
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {directory / 'tokens'}\nobjectstore.backend = file\n")
    patch = pytest.MonkeyPatch()
    patch.setenv("SOFTHSM2_CONF", str(conf))
    for label in SOFTHSM_TOKENS:
        subprocess.run(
            ["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", "135790",
             "--pin", SOFTHSM_PIN],
            check=True, capture_output=True, env={**os.environ, "SOFTHSM2_CONF": str(conf)},
        )  # fmt: skip
    yield conf
    patch.undo()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On the PostgreSQL run (KIBAN_TEST_DB_ONLY=1) keep only the tests that use a database."""
    if not os.environ.get("KIBAN_TEST_DB_ONLY"):
        return
    keep, drop = [], []
    for item in items:
        uses_db = bool({"db_url", "migrated_template"} & set(getattr(item, "fixturenames", ())))
        (keep if uses_db or item.get_closest_marker("postgres") else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
