"""`kiban id`: identifier commands (SPEC §3, §7)."""

from __future__ import annotations

import typer

from kiban.core.identifiers import KIND_LABELS, IdentifierError, identify

app = typer.Typer(no_args_is_help=True, help="Identifiers: 個人番号, 住民票コード, 地方公共団体コード.")


# ignore_unknown_options: a value such as "-123" is checked (and refused) rather than read as an option.
@app.command("check", context_settings={"ignore_unknown_options": True})
def check(
    value: str = typer.Argument(
        ..., metavar="VALUE", help="A 個人番号 (12 digits), 住民票コード (11) or 地方公共団体コード (6)."
    ),
) -> None:
    """Validate an identifier: exit 0 and "valid" when it is, exit 1 and the failed rule when not."""
    try:
        kind, normalised = identify(value)
    except IdentifierError as error:
        typer.echo(f"invalid: {error}")
        raise typer.Exit(1) from None
    typer.echo(f"valid: {KIND_LABELS[kind]} ({kind}) {normalised}")
