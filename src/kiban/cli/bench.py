"""`kiban bench NAME`: benchmarks printing one JSON line per result."""

import typer


def bench(name: str = typer.Argument(..., help="Benchmark name, or 'list'.")) -> None:
    """Run a benchmark from bench/ and print JSON lines (ratios against an in-run baseline)."""
    raise typer.Exit(1)
