"""Distributed mode of the identity network (住基ネット): municipal and national nodes over JetStream.

Two roles, each a process with its own database, linked by one JetStream stream (default
``KIBAN_NET`` on ``kibannet.>``):

- **Municipal node** (市町村の既存住基システム + CS): the register and its numbering store of
  住民票コード, as in the embedded mode. It relays *only* the 本人確認情報 events of its outbox,
  :data:`UP_TYPES` (``register.identity_changed``, ``register.restriction_changed``, and the
  ``register.moved_out`` / ``moved_in`` the network relays to the other municipality), to
  ``<prefix>.up.<municipality>.<type>``; everything else stays in the municipality. It consumes
  ``<prefix>.down.<municipality>.>`` (one durable ``municipal-<code>`` per municipality it hosts):
  the 個人番号 the national role assigned (``numbering.number_assigned`` / ``…_reissued``) and the
  moves the network forwards (``network.move_out_forwarded`` / ``network.move_in_forwarded``).
- **National node** (地方公共団体情報システム機構): the prefectural and national copies, the copy of
  the DV等支援措置 and the 個人番号 (kiban.numbering with the number key, which never leaves this
  node). It consumes ``<prefix>.up.>`` with one durable (``national``), strictly in stream order,
  which is each 住民票コード's order; it relays :data:`DOWN_TYPES` to
  ``<prefix>.down.<municipality>.<type>`` (the person's, or the move's other end), so a number or
  a certificate reaches only the municipality it is for.

Both run the outbox relay and the durable consumer of :mod:`kiban.core.nats_bus` (exactly-once
effects through the inbox, rewind to the ack floor after a crash) plus an in-process delivery of
their own outbox to the handlers that live on the node. Design notes: docs/network.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from kiban.core.dispatch import build_registry, handler_modules
from kiban.core.events import DomainEvent, Registry, drain
from kiban.core.models.events import OutboxEvent
from kiban.core.nats_bus import Backlog, backlog, ensure_stream, run_consumer, run_relay
from kiban.network import moves
from kiban.network.handlers import copy_restrictions
from kiban.network.moves import MOVE_IN_FORWARDED, MOVE_OUT_FORWARDED, MOVED_IN, MOVED_OUT
from kiban.network.service import (
    IDENTITY_CHANGED_IN,
    IDENTITY_CHANGED_OUT,
    INITIAL_LOAD,
    REGISTRATION_CONFLICT,
    RESTRICTION_CHANGED_IN,
    IdentityChange,
    apply_identity_change,
    apply_initial_load,
    initial_load_person,
)
from kiban.numbering import service as numbering
from kiban.numbering.notices import NUMBER_ASSIGNED, NUMBER_REISSUED, notify_assigned
from kiban.numbering.service import NumberCipher, NumberingError

log = logging.getLogger(__name__)

DEFAULT_STREAM = "KIBAN_NET"
DEFAULT_PREFIX = "kibannet"
NATIONAL_DURABLE = "national"
CA_DURABLE = "ca"  # the CA's (and cards') reader of the 異動等情報 subjects
# What leaves the municipality (本人確認情報, the support measures, the 転出証明書情報 and 転入通知
# for the other municipality), and what comes back.
UP_TYPES = (IDENTITY_CHANGED_IN, RESTRICTION_CHANGED_IN, MOVED_OUT, MOVED_IN)
DOWN_TYPES = (
    NUMBER_ASSIGNED,
    NUMBER_REISSUED,
    MOVE_OUT_FORWARDED,
    MOVE_IN_FORWARDED,
    REGISTRATION_CONFLICT,  # to both municipalities (its ``notify``)
)
# What the national node's relay sends: the down types, and the 異動等情報 to the CA's subjects.
NATIONAL_TYPES = (*DOWN_TYPES, IDENTITY_CHANGED_OUT)
# Chunk of an initial load (persons a message; a message stays well under NATS's 1 MB default).
INITIAL_LOAD_CHUNK = 500
# Which payload item names the municipality a message comes from (up) or goes to (down).
_SENDER = {MOVED_OUT: "from_municipality_code", MOVED_IN: "to_municipality_code"}
_ADDRESSEE = {MOVE_OUT_FORWARDED: "to_municipality_code", MOVE_IN_FORWARDED: "from_municipality_code"}
UNKNOWN = "unknown"  # subject token of a message naming no valid municipality (the national quarantines it)
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9_-]{0,30}$")
_MUNICIPALITY_RE = re.compile(r"^[0-9]{6}$")
# Rows read to count a municipality's unpublished events (an outage's backlog is bounded by this).
UNPUBLISHED_SCAN_LIMIT = 200_000


def check_prefix(prefix: str) -> str:
    """A subject prefix is one lower-case token (the role and the municipality come after it)."""
    if not _PREFIX_RE.match(prefix):
        raise ValueError(f"subject prefix {prefix!r}: one token of a-z, 0-9, _ or - (rule: subject_token)")
    return prefix


def municipality_of(event: DomainEvent, item: str = "municipality_code") -> str:
    """The municipality token of an event's subject: the payload's 6-digit code, else ``unknown``."""
    code = event.payload.get(item)
    return code if isinstance(code, str) and _MUNICIPALITY_RE.match(code) else UNKNOWN


def up_subject(prefix: str) -> Callable[[DomainEvent], str]:
    """Municipality → national: ``<prefix>.up.<sending municipality>.<type>``."""

    def subject(event: DomainEvent) -> str:
        sender = municipality_of(event, _SENDER.get(event.type, "municipality_code"))
        return f"{prefix}.up.{sender}.{event.type}"

    return subject


def down_subject(prefix: str) -> Callable[[DomainEvent], str]:
    """National → one municipality (the person's, or a move's other end): ``<prefix>.down.<code>.<type>``."""

    def subject(event: DomainEvent) -> str:
        addressee = municipality_of(event, _ADDRESSEE.get(event.type, "municipality_code"))
        return f"{prefix}.down.{addressee}.{event.type}"

    return subject


def national_subjects(prefix: str) -> Callable[[DomainEvent], str | list[str]]:
    """Where the national node's relay sends each event.

    - a registration conflict: ``<prefix>.down.<code>.<type>`` for *both* municipalities (``notify``);
    - the 異動等情報 (``network.identity_changed``): ``<prefix>.ca.<municipality>.<type>``, read by
      the CA's durable :data:`CA_DURABLE` (the municipality token keeps the backlog per municipality);
    - the rest: :func:`down_subject` (the person's municipality, or a move's other end).
    """
    down = down_subject(prefix)

    def subject(event: DomainEvent) -> str | list[str]:
        if event.type == REGISTRATION_CONFLICT:
            notify = event.payload.get("notify")
            codes = [c for c in notify if isinstance(c, str)] if isinstance(notify, list) else []
            tokens = sorted({c if _MUNICIPALITY_RE.match(c) else UNKNOWN for c in codes}) or [UNKNOWN]
            return [f"{prefix}.down.{token}.{event.type}" for token in tokens]
        if event.type == IDENTITY_CHANGED_OUT:
            return f"{prefix}.ca.{municipality_of(event)}.{event.type}"
        return down(event)

    return subject


def municipal_durable(municipality_code: str) -> str:
    return f"municipal-{municipality_code}"


# --- numbering on the national node ---------------------------------------------------------------


class _OneCode:
    """A code generator that yields one given code: the national store records a code it did not draw."""

    def __init__(self, code: str) -> None:
        self._code: str | None = code

    def generate(self) -> str:
        if self._code is None:
            raise NumberingError("resident_code", "taken", "the code is already in the national store")
        code, self._code = self._code, None
        return code


class NationalNumbering:
    """付番 on the national node: an active person arriving without a 個人番号 gets one, once.

    The 住民票コード is recorded in the national numbering store on first sight (a 住民票コード変更
    links it to the previous code, so the number follows the person); the number is assigned by
    :func:`kiban.numbering.service.assign_individual_number` and the municipality is notified with
    ``numbering.number_assigned`` in the same transaction as the copy's new version.
    """

    def __init__(self, cipher: NumberCipher) -> None:
        self._cipher = cipher

    def __call__(self, session: Session, change: IdentityChange) -> str | None:
        code = change.resident_code
        try:
            known = numbering.active_number(session, code)
        except NumberingError as exc:
            if exc.rule == "retired":
                return None  # a retired code is not numbered again; the copy keeps what it has
            if exc.rule != "not_issued":
                raise
            self._learn(session, change)
            known = numbering.active_number(session, code)
        if known is not None:
            return known  # already assigned (its notice is on its way) or kept across a code change
        number = numbering.assign_individual_number(session, code, self._cipher)
        notify_assigned(session, {code: number}, {code: change.municipality_code})
        return number

    def _learn(self, session: Session, change: IdentityChange) -> None:
        previous = change.previous_resident_code
        if previous is not None:
            with contextlib.suppress(NumberingError):
                numbering.reissue_resident_code(
                    session, previous, "住民票コード変更", _OneCode(change.resident_code)
                )
                return
        numbering.issue_resident_codes(session, 1, _OneCode(change.resident_code))


# --- registries -----------------------------------------------------------------------------------


def national_registry(cipher: NumberCipher | None) -> Registry:
    """What the national node applies from the stream: the copies (numbering when a key is given)."""
    numberer = NationalNumbering(cipher) if cipher is not None else None

    def replicate(session: Session, event: DomainEvent) -> None:
        apply_identity_change(session, event, numberer=numberer)

    def initial_load(session: Session, event: DomainEvent) -> None:
        result = apply_initial_load(session, event, numberer=numberer)
        log.info("initial load %s from %s: %s", event.id, event.key, result)

    registry = Registry()
    registry.add(IDENTITY_CHANGED_IN, "network.replicate", replicate)
    registry.add(RESTRICTION_CHANGED_IN, "network.copy_restrictions", copy_restrictions)
    registry.add(INITIAL_LOAD, "network.initial_load", initial_load)
    moves.register_handlers(registry)
    return registry


def municipal_registry() -> Registry:
    """What the municipal node applies from the stream: 個人番号 notices, forwarded moves (register's)."""
    from kiban.register import handlers as register

    registry = Registry()
    for event_type in register.NUMBER_EVENTS:
        registry.add(event_type, "register.apply_individual_number", register.apply_individual_number)
    registry.add(MOVE_OUT_FORWARDED, "register.receive_move_out", register.receive_forwarded_move_out)
    registry.add(MOVE_IN_FORWARDED, "register.complete_move_out", register.complete_forwarded_move_in)
    registry.add(REGISTRATION_CONFLICT, "network.conflict_notice", conflict_notice)
    return registry


def conflict_notice(session: Session, event: DomainEvent) -> None:
    """A municipality hears of a second active registration of one of its people (二重登録).

    Logged for the municipality's staff: resolving it (which record is wrong) is their decision
    and the national operator's release of the quarantined message; nothing is changed here.
    """
    payload = event.payload
    log.warning(
        "registration conflict: 住民票コード %s active in %s, claimed by %s (event %s)",
        payload.get("resident_code"),
        payload.get("active_municipality_code"),
        payload.get("claiming_municipality_code"),
        payload.get("event_id"),
    )


def local_registry(role: str) -> Registry:
    """Handlers of the node's own outbox: the national node runs the network's, a municipality the rest."""
    network = "kiban.network.handlers"
    modules = [network] if role == "national" else [m for m in handler_modules() if m != network]
    return build_registry(modules)


# --- the nodes ------------------------------------------------------------------------------------


async def _deliver_locally(
    factory: sessionmaker[Session], registry: Registry, stop: asyncio.Event, interval: float
) -> None:
    while not stop.is_set():
        try:
            delivered = await asyncio.to_thread(drain, factory, registry)
        except Exception:  # a database blip must not stop delivery for good
            log.exception("local delivery round failed; retrying")
            delivered = 0
        if not delivered:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)


async def _prepare_stream(nats_url: str, stream: str, prefix: str) -> None:
    nc = await nats.connect(nats_url, name="kiban-network-setup")
    try:
        await ensure_stream(nc.jetstream(), stream, prefix)
    finally:
        await nc.close()


async def _until_stopped(tasks: list[asyncio.Task[Any]], stop: asyncio.Event) -> None:
    """Run the node's loops; the first one to fail stops the others and is re-raised."""
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_national(
    factory: sessionmaker[Session],
    nats_url: str,
    *,
    cipher: NumberCipher | None,
    stream: str = DEFAULT_STREAM,
    prefix: str = DEFAULT_PREFIX,
    durable: str = NATIONAL_DURABLE,
    batch: int = 100,
    ack_wait: float = 30.0,
    deliver_local: bool = True,
    interval: float = 0.2,
    metrics_port: int | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """The national node: apply ``<prefix>.up.>``, relay the numbers down, deliver its own outbox.

    With ``metrics_port``, ``/metrics`` there shows the lag of applied changes and the backlog
    per municipality (:class:`BacklogCollector`, :class:`~kiban.network.service.ReplicationCollector`).
    """
    check_prefix(prefix)
    stop = stop or asyncio.Event()
    await _prepare_stream(nats_url, stream, prefix)
    tasks: list[asyncio.Task[Any]] = [
        asyncio.create_task(
            run_consumer(
                factory,
                national_registry(cipher),
                nats_url,
                stream,
                durable,
                subject_prefix=f"{prefix}.up",
                batch=batch,
                ack_wait=ack_wait,
                stop=stop,
            )
        ),
        asyncio.create_task(
            run_relay(
                factory,
                nats_url,
                stream=stream,
                subject_prefix=prefix,
                types=NATIONAL_TYPES,
                subject=national_subjects(prefix),
                interval=interval,
                create_stream=False,
                stop=stop,
                name="kiban-national-relay",
            )
        ),
    ]
    if deliver_local:
        tasks.append(
            asyncio.create_task(_deliver_locally(factory, local_registry("national"), stop, interval))
        )
    if metrics_port is not None:
        from kiban.network.service import ReplicationCollector

        collector = BacklogCollector()
        _serve_metrics(metrics_port, [collector, ReplicationCollector(factory)])
        refresh = collector.refresh(nats_url, stop, stream=stream, prefix=prefix, durable=durable)
        tasks.append(asyncio.create_task(refresh))
    await _until_stopped(tasks, stop)


async def run_municipal(
    factory: sessionmaker[Session],
    nats_url: str,
    municipalities: Sequence[str],
    *,
    stream: str = DEFAULT_STREAM,
    prefix: str = DEFAULT_PREFIX,
    batch: int = 500,
    deliver_local: bool = True,
    interval: float = 0.2,
    metrics_port: int | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """A municipal node hosting ``municipalities``: relay 本人確認情報 up, apply the numbers that come down.

    With ``metrics_port``: the outbox backlog and the down backlog per municipality.
    """
    check_prefix(prefix)
    codes = [c for c in municipalities if _MUNICIPALITY_RE.match(c)]
    if not codes or len(codes) != len(municipalities):
        raise ValueError(f"municipalities {list(municipalities)}: 6-digit codes (rule: municipality_code)")
    stop = stop or asyncio.Event()
    await _prepare_stream(nats_url, stream, prefix)
    tasks: list[asyncio.Task[Any]] = [
        asyncio.create_task(
            run_relay(
                factory,
                nats_url,
                stream=stream,
                subject_prefix=prefix,
                batch=batch,
                types=UP_TYPES,
                subject=up_subject(prefix),
                interval=interval,
                create_stream=False,
                stop=stop,
                name="kiban-municipal-relay",
            )
        )
    ]
    registry = municipal_registry()
    for code in codes:
        tasks.append(
            asyncio.create_task(
                run_consumer(
                    factory,
                    registry,
                    nats_url,
                    stream,
                    municipal_durable(code),
                    subject_prefix=f"{prefix}.down.{code}",
                    stop=stop,
                )
            )
        )
    if deliver_local:
        tasks.append(
            asyncio.create_task(_deliver_locally(factory, local_registry("municipal"), stop, interval))
        )
    if metrics_port is not None:
        collector = BacklogCollector(factory, codes)
        _serve_metrics(metrics_port, [collector])
        refresh = collector.refresh(
            nats_url, stop, stream=stream, prefix=prefix, municipalities=codes, direction="down"
        )
        tasks.append(asyncio.create_task(refresh))
    await _until_stopped(tasks, stop)


def ca_registry() -> Registry:
    """What a CA node applies from ``<prefix>.ca.>``: every capability's handlers but the network's."""
    network = "kiban.network.handlers"
    return build_registry([m for m in handler_modules() if m != network])


async def run_ca(
    factory: sessionmaker[Session],
    nats_url: str,
    *,
    registry: Registry | None = None,
    stream: str = DEFAULT_STREAM,
    prefix: str = DEFAULT_PREFIX,
    durable: str = CA_DURABLE,
    stop: asyncio.Event | None = None,
    idle_exit: float | None = None,
) -> int:
    """The CA's feed: apply the 異動等情報 (``<prefix>.ca.>``) to the CA's database, in stream order.

    The same handlers as the embedded mode (``jpki.revoke_on_identity_change``, the cards'), with
    exactly-once effects through the inbox. Returns how many messages were acknowledged.
    """
    check_prefix(prefix)
    await _prepare_stream(nats_url, stream, prefix)
    return await run_consumer(
        factory,
        registry or ca_registry(),
        nats_url,
        stream,
        durable,
        subject_prefix=f"{prefix}.ca",
        stop=stop,
        idle_exit=idle_exit,
    )


# --- initial load (初期登録) from a municipal node ----------------------------------------------------


@dataclass(frozen=True)
class InitialLoadProgress:
    """One chunk of an initial load acknowledged by JetStream."""

    municipality_code: str
    persons: int
    last_resident_code: str  # resume with ``after=`` this code
    duplicate: bool  # JetStream already had this chunk (a resend)


def initial_load_events(
    session: Session,
    municipality_code: str,
    *,
    after: str | None = None,
    chunk: int = INITIAL_LOAD_CHUNK,
) -> Iterator[DomainEvent]:
    """The municipality's active residents as ``network.initial_load`` events, by 住民票コード.

    Only the 本人確認情報 (:func:`~kiban.network.service.initial_load_person`). Each event's id is
    derived from the municipality and its first and last code, so a resend of the same chunk is
    the same event (JetStream's duplicate window and the national inbox drop it).
    """
    from kiban.register.models import Resident, ResidentStatus

    if not _MUNICIPALITY_RE.match(municipality_code):
        raise ValueError(f"municipality {municipality_code!r}: a 6-digit code (rule: municipality_code)")
    if not 1 <= chunk <= 2_000:
        raise ValueError(f"chunk {chunk}: 1 to 2,000 persons (rule: range)")
    cursor = after or ""
    while True:
        residents = session.scalars(
            select(Resident)
            .where(
                Resident.municipality_code == municipality_code,
                Resident.status == ResidentStatus.ACTIVE.value,
                Resident.resident_code > cursor,
            )
            .order_by(Resident.resident_code)
            .limit(chunk)
        ).all()
        if not residents:
            return
        persons = [initial_load_person(r) for r in residents]
        first, cursor = residents[0].resident_code, residents[-1].resident_code
        ident = uuid.uuid5(uuid.NAMESPACE_URL, f"kiban:initial-load:{municipality_code}:{first}:{cursor}")
        yield DomainEvent(
            id=str(ident),
            type=INITIAL_LOAD,
            key=municipality_code,
            schema_version=1,
            occurred_at=datetime.now(UTC),
            payload={"municipality_code": municipality_code, "persons": persons},
            source=f"municipal:{municipality_code}",
        )
        session.expunge_all()  # bounded memory however large the municipality


async def publish_initial_load(
    factory: sessionmaker[Session],
    nats_url: str,
    municipalities: Sequence[str],
    *,
    stream: str = DEFAULT_STREAM,
    prefix: str = DEFAULT_PREFIX,
    after: str | None = None,
    chunk: int = INITIAL_LOAD_CHUNK,
    timeout: float = 10.0,
) -> AsyncIterator[InitialLoadProgress]:
    """Send the 初期登録 of ``municipalities`` up (``<prefix>.up.<code>.network.initial_load``).

    Yields each chunk once JetStream has stored it. Idempotent (the national node skips people it
    holds) and resumable: run again, or with ``after`` = the last code reported, after a failure.
    The national node applies the chunks in stream order with the municipality's changes.
    """
    check_prefix(prefix)
    await _prepare_stream(nats_url, stream, prefix)
    nc = await nats.connect(nats_url, name="kiban-initial-load")
    try:
        js = nc.jetstream()
        for code in municipalities:
            with factory() as session:
                for event in initial_load_events(session, code, after=after, chunk=chunk):
                    ack = await js.publish(
                        f"{prefix}.up.{code}.{INITIAL_LOAD}",
                        event.to_json(),
                        timeout=timeout,
                        stream=stream,
                        headers={"Nats-Msg-Id": event.id},
                    )
                    persons = event.payload["persons"]
                    yield InitialLoadProgress(
                        code, len(persons), persons[-1]["resident_code"], bool(ack.duplicate)
                    )
    finally:
        await nc.close()


def _serve_metrics(port: int, collectors: Sequence[Any]) -> None:
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    start_http_server(port, addr="127.0.0.1", registry=registry)


# --- backlog and lag (metrics, operator screen) -----------------------------------------------------


@dataclass(frozen=True)
class MunicipalBacklog:
    """One municipality's messages in the stream not yet acknowledged by the consuming node."""

    municipality_code: str
    direction: str  # "up" (to the national node) or "down" (to the municipality)
    pending: int
    oldest_age: timedelta | None  # how long the oldest of them has waited (None: nothing waits)


async def _stream_municipalities(js: Any, stream: str, prefix: str, direction: str) -> list[str]:
    info = await js.stream_info(stream, subjects_filter=f"{prefix}.{direction}.>")
    subjects = info.state.subjects or {}
    return sorted({subject.split(".")[2] for subject in subjects})


async def _quiet(_exc: Exception) -> None:
    """The failure is reported by the caller (a warning per refresh), not by nats-py's callback."""


async def fetch_backlog(
    nats_url: str,
    *,
    stream: str = DEFAULT_STREAM,
    prefix: str = DEFAULT_PREFIX,
    durable: str = NATIONAL_DURABLE,
    municipalities: Sequence[str] | None = None,
    direction: str = "up",
) -> list[MunicipalBacklog]:
    """Per municipality: messages the consuming node has not acknowledged, and the oldest one's age.

    ``up``: what the national node (durable ``durable``) still has to apply from each municipality;
    ``down``: what each municipality's node still has to apply (its ``municipal-<code>`` durable);
    ``ca``: the 異動等情報 the CA (durable :data:`CA_DURABLE`) has not applied yet.
    ``municipalities`` defaults to every municipality with messages in the stream.
    """
    check_prefix(prefix)
    # A report, not a node: fail fast when NATS is away (nats-py would retry for two minutes).
    nc = await nats.connect(
        nats_url,
        name="kiban-network-backlog",
        connect_timeout=2,
        max_reconnect_attempts=1,
        reconnect_time_wait=0.5,
        error_cb=_quiet,
    )
    try:
        js = nc.jetstream()
        codes = list(municipalities or await _stream_municipalities(js, stream, prefix, direction))
        now = datetime.now(UTC)
        out: list[MunicipalBacklog] = []
        if direction in ("up", "ca"):
            reader = durable if direction == "up" else CA_DURABLE
            found = await backlog(js, stream, reader, [f"{prefix}.{direction}.{code}.>" for code in codes])
            pairs: list[tuple[str, Backlog]] = list(zip(codes, found, strict=True))
        else:
            pairs = []
            for code in codes:
                [one] = await backlog(js, stream, municipal_durable(code), [f"{prefix}.down.{code}.>"])
                pairs.append((code, one))
        for code, b in pairs:
            age = max(now - b.oldest, timedelta(0)) if b.oldest is not None else None
            out.append(MunicipalBacklog(code, direction, b.pending, age))
        return out
    finally:
        await nc.close()


def backlog_report(nats_url: str, **kwargs: Any) -> list[MunicipalBacklog]:
    """:func:`fetch_backlog` for synchronous callers (an operator screen, the CLI)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(fetch_backlog(nats_url, **kwargs))
    # Called from inside an event loop (an async web handler): run it on a loop of its own.
    result: list[list[MunicipalBacklog]] = []

    def target() -> None:
        result.append(asyncio.run(fetch_backlog(nats_url, **kwargs)))

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    return result[0] if result else []


def unpublished_by_municipality(session: Session, *, limit: int = UNPUBLISHED_SCAN_LIMIT) -> dict[str, int]:
    """Per municipality: 本人確認情報 events in this node's outbox not yet in the stream (relay backlog)."""
    counts: dict[str, int] = {}
    rows = session.execute(
        select(OutboxEvent.type, OutboxEvent.payload)
        .where(OutboxEvent.published_at.is_(None), OutboxEvent.type.in_(UP_TYPES))
        .order_by(OutboxEvent.seq)
        .limit(limit)
    )
    for event_type, payload in rows:
        code = (
            payload.get(_SENDER.get(event_type, "municipality_code")) if isinstance(payload, dict) else None
        )
        key = code if isinstance(code, str) and _MUNICIPALITY_RE.match(code) else UNKNOWN
        counts[key] = counts.get(key, 0) + 1
    return counts


class BacklogCollector:
    """Prometheus gauges of distributed replication, per municipality.

    - ``kiban_network_backlog_messages{municipality,direction}``: in the stream, not yet
      acknowledged by the consuming node (``up``: national; ``down``: the municipality);
    - ``kiban_network_backlog_oldest_seconds{municipality,direction}``: how long the oldest waits;
    - ``kiban_network_unpublished_events{municipality}`` (municipal node, with ``factory``): in the
      outbox, not yet in the stream.

    The NATS figures are a snapshot that :meth:`refresh` (an async loop on the node) renews; a
    scrape never waits on NATS. The lag of applied changes: ``service.ReplicationCollector``.
    """

    def __init__(
        self, factory: sessionmaker[Session] | None = None, municipalities: Sequence[str] = ()
    ) -> None:
        self._factory = factory
        self._municipalities = list(municipalities)  # shown at 0 when nothing waits
        self.snapshot: list[MunicipalBacklog] = []

    async def refresh(
        self,
        nats_url: str,
        stop: asyncio.Event,
        every: float = 5.0,
        *,
        directions: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        """Renew the snapshot every ``every`` seconds until ``stop``; ``kwargs`` go to :func:`fetch_backlog`.

        ``directions`` (e.g. ``("up", "down", "ca")`` for ``kiban serve``) fetches each in turn.
        """
        while not stop.is_set():
            try:
                if directions:
                    found: list[MunicipalBacklog] = []
                    for direction in directions:
                        found += await fetch_backlog(nats_url, direction=direction, **kwargs)
                    self.snapshot = found
                else:
                    self.snapshot = await fetch_backlog(nats_url, **kwargs)
            except Exception as exc:  # NATS away: keep the last snapshot, say so in the log
                log.warning("backlog refresh failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        pending = GaugeMetricFamily(
            "kiban_network_backlog_messages",
            "Messages in the stream not yet acknowledged by the consuming node, per municipality.",
            labels=["municipality", "direction"],
        )
        oldest = GaugeMetricFamily(
            "kiban_network_backlog_oldest_seconds",
            "Age of the oldest unacknowledged message, per municipality (0 when none waits).",
            labels=["municipality", "direction"],
        )
        for b in self.snapshot:
            labels = [b.municipality_code, b.direction]
            pending.add_metric(labels, b.pending)
            oldest.add_metric(labels, b.oldest_age.total_seconds() if b.oldest_age else 0.0)
        yield pending
        yield oldest
        if self._factory is not None:
            unpublished = GaugeMetricFamily(
                "kiban_network_unpublished_events",
                "本人確認情報 events in the municipal outbox not yet in the stream, per municipality.",
                labels=["municipality"],
            )
            try:
                with self._factory() as session:
                    counts = unpublished_by_municipality(session)
            except Exception:
                log.warning("outbox backlog unavailable for /metrics")
                counts = {}
            for code in self._municipalities:
                counts.setdefault(code, 0)
            for code, n in sorted(counts.items()):
                unpublished.add_metric([code], n)
            yield unpublished
