"""`kiban kiosk` through the module's Typer app: operators, kiosks, participation, drill, settlement."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from kiban.cli.kiosk import app
from kiban.core.database import make_engine, session_factory
from kiban.kiosk.models import Kiosk, Participation, WithdrawnVersion

runner = CliRunner()


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("KIBAN_DATABASE_URL", raising=False)
    return tmp_path / "data"


def test_kiosk_cli(data: Path) -> None:
    d = ["--data", str(data)]
    assert runner.invoke(app, ["add-operator", "seven", "セブン", *d]).exit_code == 0
    again = runner.invoke(app, ["add-operator", "seven", "セブン", *d])
    assert again.exit_code == 1 and "unique" in again.output
    r = runner.invoke(app, ["add-kiosk", "seven", "seven-0001", "--store", "駅前店", *d])
    assert r.exit_code == 0 and "credential (shown once)" in r.output
    credential = r.output.rsplit(": ", 1)[1].strip()
    bad = runner.invoke(app, ["participate", "999999", "resident_copy", "--fee", "200", *d])
    assert bad.exit_code == 1 and "municipality_code" in bad.output
    assert runner.invoke(app, ["participate", "131016", "resident_copy", "--fee", "200", *d]).exit_code == 0
    assert runner.invoke(app, ["withdraw-version", "2", "--reason", "broken", *d]).exit_code == 0
    report = runner.invoke(app, ["settlement", "2026", "11", *d])
    assert report.exit_code == 0 and "合計 | | | 0 | 0円" in report.output
    engine = make_engine(f"sqlite:///{data / 'kiban.sqlite'}")
    with session_factory(engine)() as s:
        kiosk = s.get(Kiosk, "seven-0001")
        assert kiosk is not None and kiosk.credential_hash != credential and len(kiosk.credential_hash) == 64
        assert [p.fee for p in s.scalars(select(Participation))] == [200]
        assert s.get(WithdrawnVersion, "2") is not None
    engine.dispose()
    assert runner.invoke(app, ["restore-version", "2", *d]).exit_code == 0
