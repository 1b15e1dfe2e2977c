"""`kiban events`: the outbox seen from the operator's desk — status, delivery, parked events, NATS."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from sqlalchemy.orm import Session, sessionmaker

from kiban.core.config import Settings, load_settings

app = typer.Typer(help="Domain events (outbox, in-process delivery, NATS JetStream).", no_args_is_help=True)

DATA = typer.Option(None, "--data", help="Data directory (or KIBAN_DATABASE_URL).")


def _factory(settings: Settings) -> sessionmaker[Session]:
    from kiban.core.database import make_engine, session_factory

    return session_factory(make_engine(settings.database_url))


@app.command()
def status(data: Path = DATA) -> None:
    """Counts of undelivered, unpublished, failing and parked events."""
    from kiban.core.events import event_stats

    with _factory(load_settings(data))() as s:
        stats = event_stats(s)
    for name in ("undelivered", "unpublished", "failing", "parked"):
        typer.echo(f"{name}\t{getattr(stats, name)}")


@app.command()
def drain(data: Path = DATA) -> None:
    """Deliver every pending event in this process (embedded mode), then print how many."""
    from kiban.core.dispatch import build_registry
    from kiban.core.events import drain as drain_events

    typer.echo(f"delivered\t{drain_events(_factory(load_settings(data)), build_registry())}")


@app.command()
def parked(data: Path = DATA) -> None:
    """Events quarantined after repeated failures: handler, event id, type, key, error."""
    from kiban.core.events import parked as parked_events

    with _factory(load_settings(data))() as s:
        rows = parked_events(s)
    for row in rows:
        typer.echo(f"{row.handler}\t{row.event_id}\t{row.attempts}\t{row.last_error[:200]}")
    if not rows:
        typer.echo("no parked events")


@app.command()
def replay(
    handler: str = typer.Argument(..., help="Handler name, e.g. register.apply_individual_number."),
    event_id: str = typer.Argument(..., help="The parked event's id."),
    data: Path = DATA,
) -> None:
    """Run one parked event through its handler again (after the cause was fixed)."""
    from kiban.core.dispatch import build_registry
    from kiban.core.events import EventError, replay_parked

    try:
        outcome = replay_parked(_factory(load_settings(data)), build_registry(), handler, event_id)
    except (EventError, LookupError, ValueError) as exc:
        typer.echo(f"kiban events replay: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(outcome.name.lower())
    if outcome.name.lower() not in ("applied", "already"):
        raise typer.Exit(1)


@app.command()
def relay(data: Path = DATA, once: bool = typer.Option(False, help="Exit when the outbox is empty.")) -> None:
    """Publish the outbox to NATS JetStream (production mode; one relay per database)."""
    from kiban.core.nats_bus import run_relay

    settings = load_settings(data)
    total = asyncio.run(
        run_relay(_factory(settings), settings.nats_url, stream="KIBAN", subject_prefix="kiban", once=once)
    )
    typer.echo(f"published\t{total}")


@app.command()
def consume(
    durable: str = typer.Option(..., help="Durable consumer name (one process per name)."),
    data: Path = DATA,
) -> None:
    """Apply events from JetStream with every handler this code base provides."""
    from kiban.core.dispatch import build_registry
    from kiban.core.nats_bus import run_consumer

    settings = load_settings(data)
    total = asyncio.run(
        run_consumer(_factory(settings), build_registry(), settings.nats_url, "KIBAN", durable)
    )
    typer.echo(f"acknowledged\t{total}")
