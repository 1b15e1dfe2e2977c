"""The ``kiban`` command (Typer). Each capability adds its sub-commands here."""

from __future__ import annotations

from pathlib import Path

import typer

from kiban.core.config import load_settings

app = typer.Typer(
    name="kiban",
    help="Kiban (基盤): resident register, identity network, My Number and JPKI for local governments.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(
    data: Path = typer.Option(None, "--data", help="Data directory (SQLite file lives here)."),
    revision: str = typer.Option("heads", help="Target revision."),
) -> None:
    """Bring the database to the newest schema (KIBAN_DATABASE_URL or the data directory's SQLite)."""
    from alembic.util import CommandError

    from kiban.core.database import upgrade

    settings = load_settings(data)
    settings.ensure_dirs()
    try:
        upgrade(settings.database_url, revision)
    except CommandError as exc:
        typer.echo(f"kiban db upgrade: --revision {revision!r}: {exc} (rule: known_revision)", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"database at {settings.database_url.split('@')[-1]} is at {revision}")


def _register_subcommands() -> None:
    # Imported here so that `kiban --help` stays fast and one broken capability cannot
    # hide the others' commands.
    from kiban.cli import (
        audit,
        bench,
        ca,
        card,
        demo,
        document,
        events,
        ids,
        jpki_verifiers,
        kiosk,
        network,
        network_exports,
        serve,
        users,
    )

    app.add_typer(ids.app, name="id")
    app.add_typer(audit.app, name="audit")
    app.add_typer(users.app, name="user")
    app.add_typer(events.app, name="events")
    app.add_typer(ca.app, name="ca")
    app.add_typer(jpki_verifiers.app, name="verifier")
    app.add_typer(card.app, name="card")
    app.add_typer(document.app, name="document")
    network.app.add_typer(network_exports.app, name="export")
    app.add_typer(network.app, name="network")
    app.add_typer(kiosk.app, name="kiosk")
    app.command("demo")(demo.demo)
    app.command("serve")(serve.serve)
    app.command("bench")(bench.bench)


_register_subcommands()
