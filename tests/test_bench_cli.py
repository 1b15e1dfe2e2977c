"""`kiban bench`: lists the benchmarks, runs one, refuses unknown names and malformed parameters."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from kiban.cli.main import app

runner = CliRunner()


def test_lists_the_foundation_benchmarks() -> None:
    result = runner.invoke(app, ["bench", "list"])
    assert result.exit_code == 0
    names = result.output.split()
    assert {"identifiers", "population"} <= set(names)


def test_unknown_benchmark_is_refused() -> None:
    result = runner.invoke(app, ["bench", "../../etc/passwd"])
    assert result.exit_code == 2
    assert "known_benchmark" in result.output


def test_malformed_parameter_is_refused() -> None:
    for bad in ("seconds", "=3", "a b=1", "x-y=2"):
        result = runner.invoke(app, ["bench", "identifiers", "--param", bad])
        assert result.exit_code == 2, bad
        assert "param_format" in result.output


def test_identifiers_benchmark_prints_ratios_as_json_lines() -> None:
    result = runner.invoke(app, ["bench", "identifiers", "--param", "seconds=0.2"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, result.output
    for line in lines:
        assert line["bench"] == "identifiers"
        assert line["value"] > 0 and line["baseline"] > 0
        assert line["ratio"] == pytest.approx(line["value"] / line["baseline"], rel=1e-3, abs=1e-4)
