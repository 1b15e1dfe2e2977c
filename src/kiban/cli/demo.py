"""`kiban demo`: builds a synthetic slice of Japan and reports on a simulated year."""

from pathlib import Path

import typer


def demo(
    data: Path = typer.Option(Path("var/demo"), "--data", help="Directory to build the demo world in."),
    residents: int = typer.Option(3000, "--residents", min=10, max=2_000_000, help="Synthetic residents."),
) -> None:
    """Build a fresh synthetic slice of Japan in DATA and write report.md there."""
    raise typer.Exit(1)
