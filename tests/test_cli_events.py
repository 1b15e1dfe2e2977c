"""`kiban events`: status counts what waits, drain delivers it, replay refuses what is not parked."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from kiban.cli.main import app
from kiban.core.events import emit

runner = CliRunner()


def _status(env: dict[str, str], tmp_path: Path) -> dict[str, int]:
    result = runner.invoke(app, ["events", "status", "--data", str(tmp_path)], env=env)
    assert result.exit_code == 0, result.output
    return {k: int(v) for k, v in (line.split("\t") for line in result.output.splitlines())}


def test_status_drain_and_replay(db_url: str, session_maker: sessionmaker[Session], tmp_path: Path) -> None:
    env = {"KIBAN_DATABASE_URL": db_url}
    assert _status(env, tmp_path)["undelivered"] == 0
    with session_maker.begin() as s:
        # No handler subscribes to this type: delivery settles it at once.
        for i in range(3):
            emit(s, "test.nobody_listens", f"k{i}", {"i": i})
    assert _status(env, tmp_path)["undelivered"] == 3
    result = runner.invoke(app, ["events", "drain", "--data", str(tmp_path)], env=env)
    assert result.exit_code == 0 and result.output.strip() == "delivered\t3"
    assert _status(env, tmp_path)["undelivered"] == 0
    result = runner.invoke(app, ["events", "parked", "--data", str(tmp_path)], env=env)
    assert "no parked events" in result.output


@pytest.mark.parametrize("event_id", ["123", "", "x" * 5000, "'; DROP TABLE event_outbox; --"])
def test_replay_of_an_unknown_event_is_refused(db_url: str, tmp_path: Path, event_id: str) -> None:
    result = runner.invoke(
        app,
        ["events", "replay", "register.apply_individual_number", event_id, "--data", str(tmp_path)],
        env={"KIBAN_DATABASE_URL": db_url},
    )
    assert result.exit_code == 2
    assert "event_id" in result.output
