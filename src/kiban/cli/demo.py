"""`kiban demo`: builds a synthetic slice of Japan and reports on it (SPEC §7, §9)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console


def demo(
    data: Path = typer.Option(Path("var/demo"), "--data", help="Directory to build the demo world in."),
    residents: int = typer.Option(3000, "--residents", min=100, max=2_000_000, help="Synthetic residents."),
    seed: int = typer.Option(20260401, "--seed", help="Seed of the synthetic world (same seed, same world)."),
) -> None:
    """Build a fresh synthetic slice of Japan in DATA and write report.md there."""
    from kiban.demo.run import DemoError, run_demo

    console = Console(stderr=True)
    try:
        report = run_demo(data, residents, seed=seed, console=console)
    except DemoError as exc:
        typer.echo(f"kiban demo: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"report: {report}")
