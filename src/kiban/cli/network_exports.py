"""``kiban network export``: the network's exports from the command line (national operator's host).

The command runs with database access on the national role's machine, so it acts as the
national operator (``cli:<os user>``); every run is audited like the API's.
"""

from __future__ import annotations

import getpass
import json
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from kiban.network.exports import Caller, Level

app = typer.Typer(
    help="Network exports (住基ネット): 人口移動報告 CSV, the CA's 異動等情報 feed.", no_args_is_help=True
)


def _caller() -> Caller:
    from kiban.network.exports import Caller

    return Caller(username=f"cli:{getpass.getuser()}", role="national_operator", organisation="cli")


def _factory(data: Path | None) -> tuple[Engine, sessionmaker[Session]]:
    from kiban.core.config import load_settings
    from kiban.core.database import make_engine, session_factory

    engine = make_engine(load_settings(data).database_url)
    return engine, session_factory(engine)


def _level(value: str) -> Level:
    if value == "prefecture":
        return "prefecture"
    if value == "municipality":
        return "municipality"
    typer.echo("level: must be municipality or prefecture (rule: one_of)", err=True)
    raise typer.Exit(2)


@app.command("move-ins")
def move_ins(
    month: str = typer.Option(..., "--month", help="YYYY-MM (the month of the 異動年月日, JST)."),
    level: str = typer.Option("municipality", "--level", help="municipality or prefecture."),
    out: Path = typer.Option(None, "--out", help="Write the CSV here (default: standard output)."),
    data: Path = typer.Option(None, "--data", help="Data directory."),
) -> None:
    """Monthly 転入 extract for the 住民基本台帳人口移動報告 (CSV, UTF-8; counts only)."""
    from kiban.network.exports import ExportError, move_in_csv

    engine, factory = _factory(data)
    try:
        with factory() as session:
            try:
                text = move_in_csv(session, _caller(), month, level=_level(level))
            except ExportError as exc:
                typer.echo(f"{exc.field}: {exc.message} (rule: {exc.rule})", err=True)
                raise typer.Exit(2) from None
            session.commit()
    finally:
        engine.dispose()
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_bytes(text.encode("utf-8"))
        typer.echo(f"wrote {out}", err=True)


@app.command("identity-changes")
def identity_changes(
    after: int = typer.Option(0, "--after", min=0, help="Cursor: the last event already taken."),
    limit: int = typer.Option(100, "--limit", min=1, max=1000, help="Events per page."),
    settle: float = typer.Option(5.0, "--settle-seconds", min=0, help="Only events at least this old."),
    data: Path = typer.Option(None, "--data", help="Data directory."),
) -> None:
    """The 異動等情報 feed after a cursor, one JSON object per line, then the next cursor on stderr."""
    from kiban.network.exports import ExportError, identity_change_feed

    engine, factory = _factory(data)
    try:
        with factory() as session:
            try:
                page = identity_change_feed(
                    session, _caller(), after=after, limit=limit, settle=timedelta(seconds=settle)
                )
            except ExportError as exc:
                typer.echo(f"{exc.field}: {exc.message} (rule: {exc.rule})", err=True)
                raise typer.Exit(2) from None
            session.commit()
    finally:
        engine.dispose()
    for event in page.events:
        typer.echo(json.dumps(event, ensure_ascii=False, separators=(",", ":")))
    typer.echo(f"next_cursor={page.next_cursor}", err=True)
