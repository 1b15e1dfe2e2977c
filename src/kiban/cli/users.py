"""`kiban user`: staff accounts (職員アカウント) — add, list, unlock.

Passwords are read from a hidden prompt or from standard input (``--password-stdin``), never
from the command line, where they would land in shell history and the process list.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from sqlalchemy.orm import Session, sessionmaker

from kiban.core.accounts import ROLE_NAMES_JA, ROLES, AccountError

app = typer.Typer(help="Staff accounts: add, list, unlock.", no_args_is_help=True)

DATA_OPTION = typer.Option(None, "--data", help="Data directory (SQLite file lives here).")


def _factory(data: Path | None) -> sessionmaker[Session]:
    from kiban.core.config import load_settings
    from kiban.core.database import make_engine, session_factory, upgrade

    settings = load_settings(data)
    settings.ensure_dirs()
    upgrade(settings.database_url)
    return session_factory(make_engine(settings.database_url))


@app.command("add")
def add(
    username: str = typer.Argument(..., help="Login name: lower-case ASCII letters, digits, '.', '_', '-'."),
    role: str = typer.Option(..., "--role", help=f"One of: {', '.join(ROLES)}."),
    municipality: str | None = typer.Option(
        None, "--municipality", help="地方公共団体コード (6 digits); required for clerks."
    ),
    organisation: str | None = typer.Option(
        None, "--organisation", help="Organisation id; required for agencies and verifiers."
    ),
    display_name: str | None = typer.Option(None, "--display-name", help="Name shown in the UI."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from stdin."),
    data: Path | None = DATA_OPTION,
) -> None:
    """Create a staff account."""
    from kiban.core.accounts import create_user
    from kiban.core.database import transaction

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        with transaction(_factory(data)) as session:
            user = create_user(
                session,
                username,
                password,
                role,
                municipality_code=municipality,
                organisation=organisation,
                display_name=display_name,
            )
            summary = f"created {user.username} ({ROLE_NAMES_JA[user.role]})"
    except AccountError as exc:
        typer.echo(f"error: {exc.field}: {exc.message} [rule: {exc.rule}]", err=True)
        raise typer.Exit(1) from None
    typer.echo(summary)


@app.command("list")
def list_(data: Path | None = DATA_OPTION) -> None:
    """List staff accounts (never their password hashes)."""
    from kiban.core.accounts import list_users

    with _factory(data)() as session:
        users = list_users(session)
        for user in users:
            scope = user.municipality_code or user.organisation or "-"
            state = "disabled" if user.disabled else ("locked" if user.locked_until else "active")
            typer.echo(f"{user.username}\t{user.role}\t{scope}\t{state}\t{user.display_name}")
        if not users:
            typer.echo("no users", err=True)


@app.command("unlock")
def unlock(username: str = typer.Argument(...), data: Path | None = DATA_OPTION) -> None:
    """Clear a login lockout."""
    from kiban.core.accounts import unlock_user
    from kiban.core.database import transaction

    with transaction(_factory(data)) as session:
        found = unlock_user(session, username)
    if not found:
        typer.echo(f"error: no user {username}", err=True)
        raise typer.Exit(1)
    typer.echo(f"unlocked {username}")
