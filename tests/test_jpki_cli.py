"""`kiban ca`: key ceremony, status and CRL publication from the command line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kiban.cli.ca import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KIBAN_DATABASE_URL", "KIBAN_PKCS11_LIBRARY", "KIBAN_MODE"):
        monkeypatch.delenv(name, raising=False)


def test_init_prints_fingerprints_and_is_idempotent(tmp_path: Path) -> None:
    data = str(tmp_path / "d")
    first = runner.invoke(app, ["init", "--data", data, "--algorithm", "p256"])
    assert first.exit_code == 0, first.output
    fingerprints = re.findall(
        r"^(\S+)\s+created\s+p256\s+SHA-256 ((?:[0-9A-F]{2}:){31}[0-9A-F]{2})$", first.output, re.M
    )
    assert len(fingerprints) == 7
    keys = sorted(p.name for p in (tmp_path / "d" / "keys").iterdir())
    before = {k: (tmp_path / "d" / "keys" / k).read_bytes() for k in keys}
    second = runner.invoke(app, ["init", "--data", data, "--algorithm", "p256"])
    assert second.exit_code == 0 and "created" not in second.output
    for ca_id, fp in fingerprints:
        assert re.search(rf"^{ca_id}\s+existing\s+p256\s+SHA-256 {fp}$", second.output, re.M)
    assert {k: (tmp_path / "d" / "keys" / k).read_bytes() for k in keys} == before


def test_stray_key_is_refused(tmp_path: Path) -> None:
    keys = tmp_path / "d" / "keys"
    keys.mkdir(parents=True)
    (keys / "jpki-root.key.pem").write_text("not ours")
    result = runner.invoke(app, ["init", "--data", str(tmp_path / "d")])
    assert result.exit_code == 1
    assert "no_overwrite" in result.output
    assert (keys / "jpki-root.key.pem").read_text() == "not ours"


def test_production_mode_refuses_file_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIBAN_MODE", "production")
    result = runner.invoke(app, ["init", "--data", str(tmp_path / "d")])
    assert result.exit_code == 1 and "production_needs_token" in result.output
    assert not any((tmp_path / "d" / "keys").glob("*.pem"))


def test_crl_and_status(tmp_path: Path) -> None:
    data = str(tmp_path / "d")
    assert runner.invoke(app, ["status", "--data", data]).exit_code == 1  # nothing yet
    assert runner.invoke(app, ["init", "--data", data, "--algorithm", "p256"]).exit_code == 0
    published = runner.invoke(app, ["crl", "--data", data, "--ca", "jpki-sign"])
    assert published.exit_code == 0, published.output
    assert "jpki-sign" in published.output and "CRL #1" in published.output and "complete" in published.output
    again = runner.invoke(app, ["crl", "--data", data, "--ca", "jpki-sign"])
    assert "CRL #2" in again.output
    status = runner.invoke(app, ["status", "--data", data])
    assert status.exit_code == 0
    assert re.search(r"^jpki-sign\s+good\s+0 revoked\s+0 hold\s+0\s+CRL #2", status.output, re.M)
    unknown = runner.invoke(app, ["crl", "--data", data, "--ca", "nope"])
    assert unknown.exit_code == 1 and "ca_exists" in unknown.output
