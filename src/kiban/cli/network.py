"""`kiban network`: the identity network's nodes in distributed mode, and what an operator checks.

    kiban network national  --data DIR [--db URL] [--nats URL] [--numbering-key PATH] [--metrics-port N]
    kiban network municipal --data DIR [--db URL] [--nats URL] --municipality 131016 [--municipality …]
    kiban network backlog   [--nats URL] [--direction up|down|ca] per municipality: waiting, oldest
    kiban network initial-load --municipality 131016 [--after CODE]  初期登録 sent up (municipal node)
    kiban network ca        --data DIR [--db URL]                the CA's feed of 異動等情報
    kiban network status    --data DIR [--db URL]                replication lag and quarantine

Design notes: docs/network.md (distributed mode).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

import typer

from kiban.core.config import load_settings

app = typer.Typer(help="Identity network (住基ネット): distributed nodes, backlog, replication status.")

DATA = typer.Option(None, "--data", help="Data directory (or KIBAN_DATA_DIR / KIBAN_DATABASE_URL).")
DB = typer.Option(None, "--db", help="Database URL (overrides --data).")
NATS = typer.Option(None, "--nats", help="NATS URL (default: KIBAN_NATS_URL).")
STREAM = typer.Option("KIBAN_NET", "--stream", help="JetStream stream of the network.")
PREFIX = typer.Option("kibannet", "--prefix", help="Subject prefix (one token).")


def _database_url(data: Path | None, db: str | None) -> str:
    return db or load_settings(data).database_url


def _nats_url(nats_url: str | None) -> str:
    return nats_url or load_settings().nats_url


def _run(main: object) -> None:
    """Run a node until SIGTERM/SIGINT (a clean stop: nothing unacknowledged is lost either way)."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)  # type: ignore[operator]

    asyncio.run(runner())


@app.command()
def national(
    data: Path | None = DATA,
    db: str | None = DB,
    nats_url: str | None = NATS,
    stream: str = STREAM,
    prefix: str = PREFIX,
    durable: str = typer.Option("national", help="Durable consumer name (one process per name)."),
    numbering_key: Path | None = typer.Option(
        None, help="個人番号 key (default: DATA/keys/numbering.key, created when missing)."
    ),
    no_numbering: bool = typer.Option(False, help="Do not assign 個人番号 (the register does, embedded)."),
    metrics_port: int | None = typer.Option(None, help="Serve /metrics on 127.0.0.1:PORT."),
    batch: int = typer.Option(100, help="Messages fetched at a time."),
) -> None:
    """The national node: prefectural and national copies, DV measures, 個人番号; numbers go down."""
    from kiban.core.database import make_engine, session_factory
    from kiban.core.identifiers import IndividualNumberCipher
    from kiban.network.distributed import run_national

    settings = load_settings(data)
    factory = session_factory(make_engine(_database_url(data, db)))
    cipher = None
    if not no_numbering:
        key = numbering_key or settings.keys_dir / "numbering.key"
        key.parent.mkdir(parents=True, exist_ok=True)
        cipher = IndividualNumberCipher.from_key_file(key)

    async def main(stop: asyncio.Event) -> None:
        await run_national(
            factory,
            _nats_url(nats_url),
            cipher=cipher,
            stream=stream,
            prefix=prefix,
            durable=durable,
            batch=batch,
            metrics_port=metrics_port,
            stop=stop,
        )

    _run(main)


@app.command()
def municipal(
    municipality: list[str] = typer.Option(..., help="Municipality code(s) this node hosts (6 digits)."),
    data: Path | None = DATA,
    db: str | None = DB,
    nats_url: str | None = NATS,
    stream: str = STREAM,
    prefix: str = PREFIX,
    local_delivery: bool = typer.Option(
        True, help="Deliver the outbox to the register's own handlers here (off when kiban serve does it)."
    ),
    metrics_port: int | None = typer.Option(None, help="Serve /metrics on 127.0.0.1:PORT."),
    batch: int = typer.Option(500, help="Outbox rows published per batch."),
) -> None:
    """A municipal node: relays 本人確認情報 to the national node, writes the 個人番号 it is sent."""
    from kiban.core.database import make_engine, session_factory
    from kiban.network.distributed import run_municipal

    factory = session_factory(make_engine(_database_url(data, db)))

    async def main(stop: asyncio.Event) -> None:
        await run_municipal(
            factory,
            _nats_url(nats_url),
            municipality,
            stream=stream,
            prefix=prefix,
            batch=batch,
            deliver_local=local_delivery,
            metrics_port=metrics_port,
            stop=stop,
        )

    try:
        _run(main)
    except ValueError as exc:
        typer.echo(f"kiban network municipal: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command()
def backlog(
    nats_url: str | None = NATS,
    stream: str = STREAM,
    prefix: str = PREFIX,
    durable: str = typer.Option("national", help="The national node's durable."),
    direction: str = typer.Option(
        "up", help="up: waiting for the national node; down: for municipalities; ca: for the CA."
    ),
) -> None:
    """Per municipality: messages not yet applied by the consuming node, and the oldest one's age."""
    from kiban.network.distributed import backlog_report

    if direction not in ("up", "down", "ca"):
        typer.echo("kiban network backlog: --direction is up, down or ca", err=True)
        raise typer.Exit(2)
    url = _nats_url(nats_url)
    try:
        rows = backlog_report(url, stream=stream, prefix=prefix, durable=durable, direction=direction)
    except Exception as exc:  # nats-py raises its own hierarchy and OSError; none is a usage bug
        typer.echo(f"refused: nats: cannot read the stream at {url}: {exc} (rule: nats_reachable)", err=True)
        raise typer.Exit(1) from None
    typer.echo("municipality\tdirection\tpending\toldest_seconds")
    for row in rows:
        age = f"{row.oldest_age.total_seconds():.1f}" if row.oldest_age is not None else "-"
        typer.echo(f"{row.municipality_code}\t{row.direction}\t{row.pending}\t{age}")


@app.command("initial-load")
def initial_load(
    municipality: list[str] = typer.Option(..., help="Municipality code(s) to load (6 digits)."),
    data: Path | None = DATA,
    db: str | None = DB,
    nats_url: str | None = NATS,
    stream: str = STREAM,
    prefix: str = PREFIX,
    after: str | None = typer.Option(None, help="Resume after this 住民票コード (the last one reported)."),
    chunk: int = typer.Option(500, help="Persons a message (1-2,000)."),
) -> None:
    """初期登録 in distributed mode: the register's active residents go up to the national node in chunks.

    Run on the municipal node. Idempotent (the national node skips people it already holds) and
    resumable (--after the last code printed).
    """
    from kiban.core.database import make_engine, session_factory
    from kiban.network.distributed import publish_initial_load

    factory = session_factory(make_engine(_database_url(data, db)))

    async def main() -> tuple[int, int]:
        persons = chunks = 0
        async for progress in publish_initial_load(
            factory, _nats_url(nats_url), municipality, stream=stream, prefix=prefix, after=after, chunk=chunk
        ):
            persons += progress.persons
            chunks += 1
            resend = " (already in the stream)" if progress.duplicate else ""
            typer.echo(
                f"{progress.municipality_code}\t{progress.persons}\tlast={progress.last_resident_code}{resend}"
            )
        return persons, chunks

    try:
        persons, chunks = asyncio.run(main())
    except ValueError as exc:
        typer.echo(f"kiban network initial-load: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"sent {persons} persons in {chunks} messages")


@app.command()
def ca(
    data: Path | None = DATA,
    db: str | None = DB,
    nats_url: str | None = NATS,
    stream: str = STREAM,
    prefix: str = PREFIX,
) -> None:
    """The CA's feed of 異動等情報 (network.identity_changed) from the national node, applied here."""
    from kiban.core.database import make_engine, session_factory
    from kiban.network.distributed import run_ca

    factory = session_factory(make_engine(_database_url(data, db)))

    async def main(stop: asyncio.Event) -> None:
        await run_ca(factory, _nats_url(nats_url), stream=stream, prefix=prefix, stop=stop)

    _run(main)


@app.command()
def status(data: Path | None = DATA, db: str | None = DB) -> None:
    """Replication per municipality (national copy): versions, newest change, lag, quarantined."""
    from kiban.core.database import make_engine, session_factory
    from kiban.network.service import replication_status

    with session_factory(make_engine(_database_url(data, db)))() as s:
        rows = replication_status(s)
    typer.echo("municipality\tversions\tlast_occurred_at\tlag_seconds\tquarantined")
    for st in rows:
        lag = f"{st.lag.total_seconds():.3f}" if st.lag is not None else "-"
        occurred = st.last_occurred_at.isoformat() if st.last_occurred_at else "-"
        typer.echo(f"{st.municipality_code}\t{st.versions}\t{occurred}\t{lag}\t{st.quarantined}")


if __name__ == "__main__":
    app()
