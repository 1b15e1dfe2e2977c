"""`kiban verifiers` (kiban.cli.jpki_verifiers): registry, tokens printed once, refusals (exit 1)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from kiban.cli.jpki_verifiers import app
from kiban.core.config import load_settings
from kiban.core.database import make_engine, session_factory
from kiban.jpki.verifiers import service as vs
from kiban.jpki.verifiers.models import VerifierToken

runner = CliRunner()


@pytest.fixture(autouse=True)
def _embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KIBAN_DATABASE_URL", "KIBAN_PKCS11_LIBRARY", "KIBAN_MODE"):
        monkeypatch.delenv(name, raising=False)


def test_register_issue_rotate_suspend(tmp_path: Path) -> None:
    data = ["--data", str(tmp_path / "d")]
    added = runner.invoke(
        app,
        [
            "add",
            "bank-a",
            "--name",
            "銀行A",
            "--category",
            "certified_business",
            "--service",
            "revocation",
            "--service",
            "basic_info",
            *data,
        ],
    )
    assert added.exit_code == 0, added.output
    refused = runner.invoke(
        app, ["add", "Bad", "--name", "x", "--category", "x", "--service", "links", *data]
    )
    assert refused.exit_code == 1 and "rule: pattern" in refused.output
    issued = runner.invoke(app, ["token", "bank-a", "--label", "prod", "--days", "30", *data])
    token = re.search(r"\(shown once\): (kbv_\S+)", issued.output)
    assert issued.exit_code == 0 and token
    factory = session_factory(make_engine(load_settings(tmp_path / "d").database_url))
    with factory() as s:
        who = vs.identify_token(s, token.group(1))
        assert who is not None and who.services == {"revocation", "basic_info"}
        assert token.group(1) not in {t.token_hash for t in s.scalars(select(VerifierToken))}
    rotated = runner.invoke(app, ["rotate", "bank-a", "1", "--overlap-hours", "0", *data])
    new = re.search(r"\(shown once\): (kbv_\S+)", rotated.output)
    assert rotated.exit_code == 0 and new
    with factory() as s:
        assert vs.identify_token(s, token.group(1)) is None
        assert vs.identify_token(s, new.group(1)) is not None
    assert runner.invoke(app, ["suspend", "bank-a", "--reason", "調査", *data]).exit_code == 0
    with factory() as s:
        assert vs.identify_token(s, new.group(1)) is None
    listed = runner.invoke(app, ["list", *data])
    assert re.search(r"^bank-a\s+certified_business\s+revocation,basic_info\s+suspended", listed.output, re.M)
    assert runner.invoke(app, ["resume", "bank-a", *data]).exit_code == 0
    assert runner.invoke(app, ["revoke", "bank-a", "2", *data]).exit_code == 0
    again = runner.invoke(app, ["revoke", "bank-a", "2", *data])
    assert again.exit_code == 1 and "rule: not_revoked" in again.output
