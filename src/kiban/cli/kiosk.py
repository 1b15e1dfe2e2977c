"""`kiban kiosk`: the kiosk centre's administration — operators, kiosks, participation, settlement,
and the interface-version drill (SPEC K6). See docs/kiosk.md."""

from __future__ import annotations

from pathlib import Path

import typer
from sqlalchemy.orm import Session, sessionmaker

from kiban.kiosk import service
from kiban.kiosk.service import KioskError

app = typer.Typer(
    help="Kiosk issuance (コンビニ交付): operators, kiosks, participation, settlement.", no_args_is_help=True
)

DATA_OPTION = typer.Option(None, "--data", help="Data directory (SQLite file lives here).")


def _factory(data: Path | None) -> sessionmaker[Session]:
    from kiban.core.config import load_settings
    from kiban.core.database import make_engine, session_factory, upgrade

    settings = load_settings(data)
    settings.ensure_dirs()
    upgrade(settings.database_url)
    return session_factory(make_engine(settings.database_url))


def _refuse(exc: KioskError) -> None:
    typer.echo(f"refused: {exc.field}: {exc.rule} — {exc}", err=True)
    raise typer.Exit(1)


@app.command("add-operator")
def add_operator(operator_id: str, name: str, data: Path | None = DATA_OPTION) -> None:
    """Register a kiosk chain (事業者)."""
    try:
        with _factory(data).begin() as s:
            service.register_operator(s, operator_id, name)
    except KioskError as exc:
        _refuse(exc)
    typer.echo(f"operator {operator_id} registered")


@app.command("add-kiosk")
def add_kiosk(
    operator_id: str,
    kiosk_id: str,
    store: str = typer.Option(..., "--store", help="Store name."),
    version: str = typer.Option("2", "--interface-version"),
    data: Path | None = DATA_OPTION,
) -> None:
    """Register a kiosk; prints its credential once (only its hash is kept)."""
    try:
        with _factory(data).begin() as s:
            _, credential = service.register_kiosk(s, operator_id, kiosk_id, store, version)
    except KioskError as exc:
        _refuse(exc)
    typer.echo(f"kiosk {kiosk_id} registered; credential (shown once): {credential}")


@app.command("participate")
def participate(
    municipality: str,
    document_type: str,
    fee: int = typer.Option(..., "--fee", help="円 per document."),
    min_age: int = typer.Option(15, "--min-age"),
    off: bool = typer.Option(False, "--off", help="Opt out of this document type."),
    data: Path | None = DATA_OPTION,
) -> None:
    """A municipality opts in (or out, --off) for a document type."""
    try:
        with _factory(data).begin() as s:
            service.set_participation(
                s, municipality, document_type, fee=fee, min_age=min_age, enabled=not off
            )
    except KioskError as exc:
        _refuse(exc)
    typer.echo(f"{municipality} {document_type}: {'off' if off else f'{fee}円, {min_age}+'}")


@app.command("settlement")
def settlement(year: int, month: int, data: Path | None = DATA_OPTION) -> None:
    """The month's settlement (JST) per municipality, document type and operator, as Markdown."""
    try:
        with _factory(data)() as s:
            lines = service.settlement(s, year, month)
    except KioskError as exc:
        _refuse(exc)
    typer.echo(service.settlement_markdown(lines, year, month), nl=False)


@app.command("withdraw-version")
def withdraw_version(
    version: str, reason: str = typer.Option(..., "--reason"), data: Path | None = DATA_OPTION
) -> None:
    """Refuse every request of kiosks speaking ``version`` (a broken update)."""
    with _factory(data).begin() as s:
        service.withdraw_version(s, version[:16], reason[:200])
    typer.echo(f"interface version {version} withdrawn")


@app.command("restore-version")
def restore_version(version: str, data: Path | None = DATA_OPTION) -> None:
    with _factory(data).begin() as s:
        service.restore_version(s, version[:16])
    typer.echo(f"interface version {version} restored")
