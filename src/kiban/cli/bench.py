"""`kiban bench NAME`: benchmarks printing one JSON line per result.

Benchmarks live in the repository's ``bench/`` folder, one module per name, each with a
``run(**params) -> list[dict]``. Every result carries a baseline measured in the same run
(a raw database COPY, ``openssl`` itself, raw ``cryptography``), so the figure that matters is
the ratio, which survives a noisy machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import typer


def bench_dir() -> Path:
    override = os.environ.get("KIBAN_BENCH_DIR")
    if override:
        return Path(override)
    # Editable install or source checkout: <repo>/src/kiban/cli/bench.py -> <repo>/bench
    return Path(__file__).resolve().parents[3] / "bench"


def available() -> list[str]:
    directory = bench_dir()
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.glob("*.py") if not p.stem.startswith("_"))


def load(name: str) -> ModuleType:
    path = bench_dir() / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"kiban_bench_{name}", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parse_params(params: list[str]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise typer.BadParameter(
                f"{item!r}: expected key=value (rule: param_format)", param_hint="--param"
            )
        parsed[key] = int(value) if value.lstrip("-").isdigit() else value
    return parsed


def bench(
    name: str = typer.Argument(..., help="Benchmark name (a module in bench/), or 'list'."),
    param: list[str] = typer.Option([], "--param", "-p", help="key=value passed to the benchmark's run()."),
) -> None:
    """Run a benchmark from bench/ and print JSON lines (ratios against an in-run baseline)."""
    names = available()
    if name == "list":
        for n in names:
            typer.echo(n)
        return
    if name not in names:
        typer.echo(
            f"unknown benchmark {name!r} (rule: known_benchmark); available: {', '.join(names)}", err=True
        )
        raise typer.Exit(2)
    results = load(name).run(**_parse_params(param))
    for result in results:
        sys.stdout.write(json.dumps(result, ensure_ascii=False, sort_keys=True) + "\n")
    sys.stdout.flush()
