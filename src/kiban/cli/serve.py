"""`kiban serve`: every role over the data in DIR."""

from pathlib import Path

import typer


def serve(
    data: Path = typer.Option(Path("var/demo"), "--data", help="Data directory."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
) -> None:
    """Serve the web UI, the APIs, OCSP and CRLs."""
    raise typer.Exit(1)
