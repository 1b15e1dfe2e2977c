"""``kiban audit``: check the audit log's hash chain (監査ログの検証) and look up a subject's history."""

from __future__ import annotations

from pathlib import Path

import typer
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from kiban.core.config import load_settings

app = typer.Typer(
    help="Audit log (監査ログ): verify the hash chain, read a subject's history.", no_args_is_help=True
)


@app.command("verify")
def verify_command(
    data: Path = typer.Option(None, "--data", help="Data directory (SQLite file, seal key and checkpoint)."),
    seal: bool = typer.Option(
        True, "--seal/--no-seal", help="After a clean run, seal the new head into the checkpoint file."
    ),
    reset_checkpoint: bool = typer.Option(
        False,
        "--reset-checkpoint",
        help="Ignore the sealed checkpoint and seal the current head (after a restore from backup).",
    ),
    batch_size: int = typer.Option(5000, "--batch-size", min=1, help="Entries read per query."),
) -> None:
    """Verify every entry of the audit log; exit 0 when intact, 1 naming the first bad entry."""
    from kiban.core.audit import verify_data_dir
    from kiban.core.database import make_engine, session_factory

    settings = load_settings(data)
    url = settings.database_url
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        typer.echo(f"no database at {parsed.database}: nothing to verify (run `kiban db upgrade`)", err=True)
        raise typer.Exit(2)
    engine = make_engine(url)
    try:
        with session_factory(engine)() as session:
            report = verify_data_dir(
                session, settings, seal=seal, reset=reset_checkpoint, batch_size=batch_size
            )
    except SQLAlchemyError as exc:
        typer.echo(
            f"cannot read the audit log: {type(exc).__name__}: {exc.args[0] if exc.args else ''}", err=True
        )
        raise typer.Exit(2) from None
    finally:
        engine.dispose()
    typer.echo(report.summary())
    raise typer.Exit(0 if report.ok else 1)


@app.command("history")
def history_command(
    subject: str = typer.Argument(..., help="Whose entries (usually a 住民票コード)."),
    data: Path = typer.Option(None, "--data", help="Data directory (SQLite file lives here)."),
    limit: int = typer.Option(100, "--limit", min=1, help="Newest entries to show."),
) -> None:
    """List who did what with SUBJECT's data, oldest first (one line per entry)."""
    from kiban.core.audit import format_time, history
    from kiban.core.database import make_engine, session_factory

    settings = load_settings(data)
    engine = make_engine(settings.database_url)
    try:
        with session_factory(engine)() as session:
            entries = history(session, subject, limit=limit)
    finally:
        engine.dispose()
    for entry in entries:
        organisation = f"@{entry.organisation}" if entry.organisation else ""
        typer.echo(
            f"{entry.seq}\t{format_time(entry.occurred_at)}\t{entry.actor} ({entry.role}{organisation})\t"
            f"{entry.action}\t{entry.purpose}\t{','.join(entry.items)}"
        )
    if not entries:
        typer.echo(f"no entries for {subject}", err=True)
