"""Distributed mode: the outbox relayed to NATS JetStream, and a durable consumer applying events.

- :func:`publish_pending` (the relay, 中継) sends outbox rows in sequence order to
  ``<subject_prefix>.<type>`` with ``Nats-Msg-Id`` = the event id, and marks a row published only
  after JetStream's PubAck. A relay that dies between the PubAck and the mark publishes the rows
  again; JetStream's duplicate window drops them, and the consumers' inbox absorbs what is left.
- :func:`run_consumer` reads a durable pull consumer one message at a time, in stream order, and
  acknowledges a message only after every handler's transaction has committed (:func:`apply_event`).
  A crash between commit and ack means redelivery, which the inbox absorbs.

Command line (used by the two-process test, and by operators)::

    python -m kiban.core.nats_bus relay   --db URL [--stream KIBAN] [--subject-prefix kiban]
    python -m kiban.core.nats_bus consume --db URL --registry pkg.module:REGISTRY --durable NAME

Design notes: ``docs/events.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import signal
import sys
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig
from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from kiban.core.database import make_engine, session_factory, utcnow
from kiban.core.events import (
    DEFAULT_POLICY,
    DomainEvent,
    EventError,
    Registry,
    RetryPolicy,
    apply_event,
    record_failure,
    row_to_event,
)
from kiban.core.models.events import OutboxEvent

log = logging.getLogger(__name__)

DEFAULT_STREAM = "KIBAN"
DEFAULT_SUBJECT_PREFIX = "kiban"
# One relay per database at a time (PostgreSQL advisory lock id; "KIBANRL" in ASCII).
RELAY_LOCK_ID = 0x4B4942414E524C


def subject_for(subject_prefix: str, event_type: str) -> str:
    return f"{subject_prefix}.{event_type}"


def consumer_handler_name(durable: str) -> str:
    """The name malformed messages are parked under (they never reach a handler)."""
    return f"nats:{durable}"[:100]


async def ensure_stream(
    js: JetStreamContext,
    stream: str = DEFAULT_STREAM,
    subject_prefix: str = DEFAULT_SUBJECT_PREFIX,
    *,
    duplicate_window: float = 120.0,
    max_age: float | None = None,
    replicas: int = 1,
) -> None:
    """Create (or update) the stream carrying ``<subject_prefix>.>``.

    Limits retention, never interest or work-queue: the consumer rewinds to its ack floor after a
    crash (see :func:`run_consumer`), which needs the messages still to be there.
    """
    config = StreamConfig(
        name=stream,
        subjects=[f"{subject_prefix}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=duplicate_window,
        max_age=max_age,
        num_replicas=replicas,
    )
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        await js.update_stream(config)


# --- relay ---------------------------------------------------------------------------------------


async def publish_pending(
    factory: sessionmaker[Session],
    js: JetStreamContext,
    *,
    stream: str = DEFAULT_STREAM,
    subject_prefix: str = DEFAULT_SUBJECT_PREFIX,
    limit: int = 500,
    timeout: float = 5.0,
    types: Collection[str] | None = None,
    subject: Callable[[DomainEvent], str | Sequence[str]] | None = None,
) -> int:
    """Publish up to ``limit`` unpublished outbox rows in order; returns how many rows it finished.

    Stops at the first failed publish (so that a key's events never overtake each other) after
    marking what was acknowledged, then re-raises. Without ``types`` every row is published and
    the count is what JetStream stored. ``types`` limits the relay to those event types: a row of
    another type stays on its node (it is not for this stream) and is marked as passed over (its
    ``published_at`` set too, and counted), so that the relay's scan is bounded by its backlog
    rather than by the node's whole history. One relay per database, as always. ``subject`` names
    each event's subject instead of ``<subject_prefix>.<type>`` (e.g. a token for the destination);
    it may name several (the event is published to each, ``Nats-Msg-Id`` = ``<id>@<subject>``), and
    the row is finished once all of them are acknowledged: a failure part-way sends them all again,
    and JetStream drops the ones it has.
    """
    published: list[int] = []
    failure: BaseException | None = None
    duplicates = 0
    passed_over = 0
    with factory() as session, session.begin():
        # Two relays would interleave their batches in the stream; the second one stands by.
        if session.get_bind().dialect.name == "postgresql" and not session.scalar(
            select(func.pg_try_advisory_xact_lock(RELAY_LOCK_ID))
        ):
            return 0
        query = select(OutboxEvent).where(OutboxEvent.published_at.is_(None))
        rows = session.scalars(query.order_by(OutboxEvent.seq).limit(limit)).all()
        for row in rows:
            if types is not None and row.type not in types:
                published.append(row.seq)  # finished: not for this stream
                passed_over += 1
                continue
            event = row_to_event(row)
            named = subject(event) if subject is not None else subject_for(subject_prefix, event.type)
            targets = [named] if isinstance(named, str) else list(named)
            try:
                for target in targets:
                    # One subject: the event id. Several (a notice for two addressees): one id per
                    # subject, else JetStream's duplicate window would drop all but the first.
                    msg_id = event.id if len(targets) == 1 else f"{event.id}@{target}"
                    ack = await js.publish(
                        target,
                        event.to_json(),
                        timeout=timeout,
                        stream=stream,
                        headers={"Nats-Msg-Id": msg_id},
                    )
                    duplicates += bool(ack.duplicate)
            except Exception as exc:  # marked below what did get through, then re-raised
                failure = exc
                break
            published.append(row.seq)
        now = utcnow()
        for start in range(0, len(published), 500):
            session.execute(
                update(OutboxEvent)
                .where(OutboxEvent.seq.in_(published[start : start + 500]))
                .values(published_at=now)
                .execution_options(synchronize_session=False)
            )
    if duplicates:
        log.info(
            "relay: %d of %d events were already in the stream (dropped by Nats-Msg-Id)",
            duplicates,
            len(published) - passed_over,
        )
    if failure is not None:
        raise failure
    return len(published)


async def run_relay(
    factory: sessionmaker[Session],
    nats_url: str,
    *,
    stream: str = DEFAULT_STREAM,
    subject_prefix: str = DEFAULT_SUBJECT_PREFIX,
    batch: int = 500,
    interval: float = 0.2,
    pause: float = 0.0,
    once: bool = False,
    create_stream: bool = True,
    stop: asyncio.Event | None = None,
    types: Collection[str] | None = None,
    subject: Callable[[DomainEvent], str | Sequence[str]] | None = None,
    name: str = "kiban-relay",
) -> int:
    """Relay the outbox until ``stop`` is set (or, with ``once``, until it is empty).

    ``types`` and ``subject``: see :func:`publish_pending`.
    """
    stop = stop or asyncio.Event()
    nc = await nats.connect(nats_url, name=name)
    total = 0
    try:
        js = nc.jetstream()
        if create_stream:
            await ensure_stream(js, stream, subject_prefix)
        while not stop.is_set():
            try:
                sent = await publish_pending(
                    factory,
                    js,
                    stream=stream,
                    subject_prefix=subject_prefix,
                    limit=batch,
                    types=types,
                    subject=subject,
                )
            except (TimeoutError, nats.errors.Error) as exc:
                log.warning("relay: publish failed, will retry: %s", exc)
                sent = 0
            except OperationalError as exc:
                # A deadlock with the local dispatcher marking the same rows delivered (PostgreSQL
                # picks a victim), a locked SQLite file, a database blip: the batch is sent again
                # and JetStream drops what it already has (Nats-Msg-Id).
                log.warning("relay: marking failed, will retry: %s", str(exc).splitlines()[0])
                sent = 0
            total += sent
            if sent == 0:
                if once:
                    break
                await _sleep_or_stop(stop, interval)
            elif pause:
                await _sleep_or_stop(stop, pause)
    finally:
        await nc.close()
    return total


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


# --- consumer ------------------------------------------------------------------------------------


async def bind_consumer(
    js: JetStreamContext,
    stream: str,
    durable: str,
    *,
    subject_prefix: str = DEFAULT_SUBJECT_PREFIX,
    max_ack_pending: int = 100,
    ack_wait: float = 30.0,
) -> JetStreamContext.PullSubscription:
    """Bind to the durable consumer, rewinding it to its ack floor if a previous run died.

    JetStream would redeliver a dead run's unacknowledged messages only after ``ack_wait`` and
    after newer ones, which breaks per-key order. Recreating the durable at ``ack_floor + 1`` makes
    them come first and at once; those the dead run had already committed meet the inbox.
    """
    try:
        info = await js.consumer_info(stream, durable)
    except nats.js.errors.NotFoundError:
        info = None
    start: int | None = None
    if info is not None and (info.num_ack_pending or 0) > 0:
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        log.info(
            "consumer %s: %d unacknowledged, rewinding to stream seq %d",
            durable,
            info.num_ack_pending,
            floor + 1,
        )
        await js.delete_consumer(stream, durable)
        info = None
        start = floor + 1
    if info is None:
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait,
            max_ack_pending=max_ack_pending,
            filter_subject=f"{subject_prefix}.>",
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start else DeliverPolicy.ALL,
            opt_start_seq=start,
        )
        await js.add_consumer(stream, config)
    return await js.pull_subscribe_bind(durable=durable, stream=stream)


class _Stopping(Exception):
    pass


async def handle_message(
    factory: sessionmaker[Session],
    registry: Registry,
    msg: Msg,
    *,
    durable: str,
    policy: RetryPolicy = DEFAULT_POLICY,
    retry_sleep: float = 0.5,
    stop: asyncio.Event | None = None,
) -> None:
    """Apply one message; returns when it may be acknowledged (applied, absorbed or parked)."""
    try:
        event = DomainEvent.from_json(msg.data)
    except EventError as exc:
        # A malformed message is quarantined, never applied, and must not stop the stream.
        msg_id = (msg.headers or {}).get("Nats-Msg-Id", "")
        stream_seq = msg.metadata.sequence.stream
        ident = msg_id if msg_id and len(msg_id) <= 64 else f"stream-seq-{stream_seq}"
        document: dict[str, Any] = {
            "id": ident,
            "subject": msg.subject,
            "stream_seq": stream_seq,
            "raw": msg.data.decode("utf-8", errors="replace")[:10_000],
        }
        await asyncio.to_thread(
            record_failure, factory, consumer_handler_name(durable), document, str(exc), policy, park_now=True
        )
        return
    while True:
        # Handlers are synchronous SQLAlchemy code: a thread keeps the NATS connection serviced.
        result = await asyncio.to_thread(apply_event, factory, registry, event, policy)
        if result.settled:
            return
        # Retry in place: moving on would let this key's later events overtake this one.
        if stop is not None and stop.is_set():
            raise _Stopping
        await msg.in_progress()
        await asyncio.sleep(max(retry_sleep, policy.delay_after(1).total_seconds()))


async def run_consumer(
    factory: sessionmaker[Session],
    registry: Registry,
    nats_url: str,
    stream: str = DEFAULT_STREAM,
    durable: str = "kiban",
    *,
    subject_prefix: str = DEFAULT_SUBJECT_PREFIX,
    batch: int = 100,
    fetch_timeout: float = 1.0,
    ack_wait: float = 30.0,
    policy: RetryPolicy = DEFAULT_POLICY,
    retry_sleep: float = 0.5,
    idle_exit: float | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Consume ``stream`` through the durable ``durable`` until ``stop`` (or ``idle_exit`` seconds idle).

    Returns the number of messages acknowledged. Messages are handled strictly one after the
    other in stream order, which is what keeps each key's events in order.
    """
    stop = stop or asyncio.Event()
    nc: NATS = await nats.connect(nats_url, name=f"kiban-consumer-{durable}")
    acked = 0
    loop = asyncio.get_running_loop()
    idle_since = loop.time()
    try:
        js = nc.jetstream()
        sub = await bind_consumer(
            js, stream, durable, subject_prefix=subject_prefix, max_ack_pending=batch, ack_wait=ack_wait
        )
        while not stop.is_set():
            try:
                msgs = await sub.fetch(batch, timeout=fetch_timeout)
            except TimeoutError:
                if idle_exit is not None and loop.time() - idle_since >= idle_exit:
                    break
                continue
            except nats.errors.Error as exc:
                # The client reconnects by itself; the durable keeps our place.
                log.warning("consumer %s: fetch failed, retrying: %s", durable, exc)
                await _sleep_or_stop(stop, 1.0)
                continue
            for msg in msgs:
                if stop.is_set():
                    break  # not acknowledged: the next run starts from here
                try:
                    await handle_message(
                        factory,
                        registry,
                        msg,
                        durable=durable,
                        policy=policy,
                        retry_sleep=retry_sleep,
                        stop=stop,
                    )
                except _Stopping:
                    break
                # Only now, after the commit: a crash before this line means redelivery.
                try:
                    await msg.ack()
                except nats.errors.Error as exc:
                    # Redelivered later, after newer messages; already in the inbox, so order holds.
                    log.warning(
                        "consumer %s: ack failed, the inbox will absorb the redelivery: %s", durable, exc
                    )
                    continue
                acked += 1
            idle_since = loop.time()
    finally:
        await nc.close()
    return acked


# --- backlog ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backlog:
    """Messages on ``filter_subject`` that the durable has not acknowledged yet."""

    filter_subject: str
    pending: int  # after the durable's ack floor: undelivered or delivered and not acknowledged
    oldest: datetime | None  # when the oldest of them was stored (None when there is none)


async def ack_floor(js: JetStreamContext, stream: str, durable: str) -> int:
    """The stream sequence up to which ``durable`` has acknowledged everything (0: nothing, or no durable)."""
    try:
        info = await js.consumer_info(stream, durable)
    except nats.js.errors.NotFoundError:
        return 0
    return info.ack_floor.stream_seq if info.ack_floor else 0


async def backlog(
    js: JetStreamContext, stream: str, durable: str, filter_subjects: Sequence[str]
) -> list[Backlog]:
    """Per filter subject: how many messages ``durable`` has not acknowledged, and the oldest's age.

    A short-lived consumer per filter starts right after the durable's ack floor; its
    ``num_pending`` is the count, and its first message's metadata is the oldest one's time. The
    durable itself is only read, never moved. Three or four requests per filter: meant for a scrape
    every few seconds over tens or hundreds of filters, not thousands.
    """
    start = await ack_floor(js, stream, durable) + 1
    out: list[Backlog] = []
    for filter_subject in filter_subjects:
        name = f"backlog-{uuid.uuid4().hex[:16]}"
        config = ConsumerConfig(
            name=name,
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            filter_subject=filter_subject,
            headers_only=True,
            mem_storage=True,
            inactive_threshold=30.0,  # gone by itself if we die before deleting it
        )
        info = await js.add_consumer(stream, config)
        oldest: datetime | None = None
        try:
            pending = int(info.num_pending or 0)
            if pending:
                sub = await js.pull_subscribe_bind(durable=name, stream=stream)
                with contextlib.suppress(TimeoutError):
                    [first] = await sub.fetch(1, timeout=2.0)
                    oldest = first.metadata.timestamp
                await sub.unsubscribe()
        finally:
            with contextlib.suppress(nats.errors.Error):
                await js.delete_consumer(stream, name)
        out.append(Backlog(filter_subject, pending, oldest))
    return out


# --- command line --------------------------------------------------------------------------------


def load_registry(spec: str) -> Registry:
    """``module:attribute`` naming a :class:`Registry` or a function returning one."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"--registry: expected 'module:attribute', got {spec!r}")
    target = getattr(importlib.import_module(module_name), attr)
    registry = target() if callable(target) and not isinstance(target, Registry) else target
    if not isinstance(registry, Registry):
        raise SystemExit(f"--registry: {spec} is not a kiban.core.events.Registry")
    return registry


def _parser() -> argparse.ArgumentParser:
    from kiban.core.config import load_settings

    settings = load_settings()
    parser = argparse.ArgumentParser(
        prog="python -m kiban.core.nats_bus", description=__doc__.splitlines()[0]
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db", default=settings.database_url, help="database URL (default: KIBAN_DATABASE_URL)"
    )
    common.add_argument("--nats-url", default=settings.nats_url)
    common.add_argument("--stream", default=DEFAULT_STREAM)
    common.add_argument("--subject-prefix", default=DEFAULT_SUBJECT_PREFIX)
    common.add_argument("--batch", type=int, default=None)
    sub = parser.add_subparsers(dest="command", required=True)
    relay = sub.add_parser("relay", parents=[common], help="publish the outbox to JetStream")
    relay.add_argument("--interval", type=float, default=0.2, help="seconds to wait when the outbox is empty")
    relay.add_argument("--pause", type=float, default=0.0, help="seconds between batches (to spread load)")
    relay.add_argument("--once", action="store_true", help="exit when the outbox is empty")
    relay.add_argument("--no-create-stream", action="store_true")
    consume = sub.add_parser("consume", parents=[common], help="apply events from a durable consumer")
    consume.add_argument("--registry", required=True, help="module:attribute of the handlers' Registry")
    consume.add_argument("--durable", required=True)
    consume.add_argument("--max-attempts", type=int, default=DEFAULT_POLICY.max_attempts)
    consume.add_argument("--ack-wait", type=float, default=30.0)
    consume.add_argument("--idle-exit", type=float, default=None, help="exit after this many idle seconds")
    return parser


async def _main(args: argparse.Namespace) -> int:
    engine = make_engine(args.db)
    factory = session_factory(engine)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if args.command == "relay":
            total = await run_relay(
                factory,
                args.nats_url,
                stream=args.stream,
                subject_prefix=args.subject_prefix,
                batch=args.batch or 500,
                interval=args.interval,
                pause=args.pause,
                once=args.once,
                create_stream=not args.no_create_stream,
                stop=stop,
            )
            log.info("relay: published %d events", total)
        else:
            registry = load_registry(args.registry)
            total = await run_consumer(
                factory,
                registry,
                args.nats_url,
                args.stream,
                args.durable,
                subject_prefix=args.subject_prefix,
                batch=args.batch or 100,
                ack_wait=args.ack_wait,
                policy=RetryPolicy(max_attempts=args.max_attempts),
                idle_exit=args.idle_exit,
                stop=stop,
            )
            log.info("consumer %s: acknowledged %d messages", args.durable, total)
    finally:
        engine.dispose()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    args = _parser().parse_args(argv)
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
