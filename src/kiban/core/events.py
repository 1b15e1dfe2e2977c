"""Domain events (ドメインイベント): transactional outbox, idempotent handlers, embedded delivery.

An event is written by :func:`emit` into ``event_outbox`` inside the caller's transaction, so it
exists exactly when the change that caused it does. Delivery is at least once; every handler runs
in a transaction together with an ``event_inbox`` row keyed by (handler name, event id), so a
repeated delivery finds the row and the effect happens exactly once.

Embedded mode delivers in-process with :func:`deliver_pending` / :func:`drain`; distributed mode
carries the same rows over NATS JetStream (:mod:`kiban.core.nats_bus`), and its consumer applies
events with the same :func:`apply_event`. Design notes: ``docs/events.md``.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import os
import re
import socket
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Table, delete, exists, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, sessionmaker

from kiban.core.database import transaction, utcnow
from kiban.core.models.events import EventFailure, InboxEntry, OutboxEvent

log = logging.getLogger(__name__)

# Dotted lower-case names, at least two parts: "<capability>.<what happened>".
TYPE_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
HANDLER_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*([.:-][a-z0-9_]+)*$")
MAX_TYPE_LENGTH = 100
MAX_KEY_LENGTH = 128
MAX_SOURCE_LENGTH = 100
MAX_HANDLER_NAME_LENGTH = 100
MAX_ERROR_LENGTH = 4000


class EventError(ValueError):
    """Bad input to the event API: says which field broke which rule; nothing was written."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


def default_source() -> str:
    """The node name stamped on emitted events (``KIBAN_NODE`` or the host name)."""
    return (os.environ.get("KIBAN_NODE") or socket.gethostname() or "kiban")[:MAX_SOURCE_LENGTH]


# --- the event ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DomainEvent:
    """One thing that happened, as other capabilities see it (the wire and storage form)."""

    id: str
    type: str
    key: str
    schema_version: int
    occurred_at: datetime
    payload: dict[str, Any]
    source: str

    def to_document(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "key": self.key,
            "schema_version": self.schema_version,
            "occurred_at": self.occurred_at.isoformat(),
            "payload": self.payload,
            "source": self.source,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_document(), ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def from_document(cls, doc: Any) -> DomainEvent:
        """Validate a document from outside (a NATS message); :class:`EventError` names the bad field."""
        if not isinstance(doc, Mapping):
            raise EventError("event", "must be a JSON object")
        for name in ("id", "type", "key", "schema_version", "occurred_at", "payload", "source"):
            if name not in doc:
                raise EventError(name, "is missing")
        occurred = doc["occurred_at"]
        if not isinstance(occurred, str):
            raise EventError("occurred_at", "must be an ISO 8601 string")
        try:
            occurred_at = datetime.fromisoformat(occurred)
        except ValueError as exc:
            raise EventError("occurred_at", "must be an ISO 8601 timestamp") from exc
        source = doc["source"]
        if not isinstance(source, str) or not source or len(source) > MAX_SOURCE_LENGTH:
            raise EventError("source", f"must be a non-empty string of at most {MAX_SOURCE_LENGTH} chars")
        return cls(
            id=_check_event_id(doc["id"]),
            type=_check_type(doc["type"]),
            key=_check_key(doc["key"]),
            schema_version=_check_schema_version(doc["schema_version"]),
            occurred_at=_check_aware(occurred_at),
            payload=_check_payload(doc["payload"]),
            source=source,
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> DomainEvent:
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise EventError("event", f"is not valid JSON ({exc})") from exc
        return cls.from_document(doc)


def _check_type(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_TYPE_LENGTH or not TYPE_RE.match(value):
        raise EventError(
            "type",
            "must be dotted lower-case words such as 'register.identity_changed' "
            f"(at most {MAX_TYPE_LENGTH} characters), got {value!r}",
        )
    return value


def _check_key(value: Any) -> str:
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_KEY_LENGTH
        or not value.isprintable()
        or value != value.strip()
    ):
        raise EventError(
            "key",
            f"must be a non-empty printable string without surrounding spaces, at most {MAX_KEY_LENGTH} "
            f"characters (e.g. a 住民票コード), got {value!r}",
        )
    return value


def _check_schema_version(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EventError("schema_version", f"must be an integer >= 1, got {value!r}")
    return value


def _check_event_id(value: Any) -> str:
    try:
        parsed = uuid.UUID(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None or str(parsed) != value:
        raise EventError("id", f"must be a UUID in canonical lower-case form, got {value!r}")
    return value


def _check_aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise EventError("occurred_at", "must be timezone-aware")
    return value.astimezone(UTC)


def _check_json(value: Any, path: str) -> None:
    # Only what JSON keeps as it is: no tuples, sets, bytes, NaN or non-string keys sneaking through.
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise EventError(path, f"must be JSON: {value!r} is not a finite number")
        return
    # Members of the exact plain types need no recursion (nor a path string): bulk payloads are
    # mostly strings.
    if isinstance(value, list):
        for i, item in enumerate(value):
            if type(item) not in _PLAIN:
                _check_json(item, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise EventError(path, f"must be JSON: object key {k!r} is not a string")
            if type(item) not in _PLAIN:
                _check_json(item, f"{path}.{k}")
        return
    raise EventError(path, f"must be JSON: {type(value).__name__} is not a JSON value")


_PLAIN = frozenset({str, int, bool, type(None)})


def _check_payload(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise EventError("payload", f"must be a JSON object (dict), got {type(value).__name__}")
    _check_json(value, "payload")
    return value


def emit(
    session: Session,
    type: str,
    key: str,
    payload: dict[str, Any],
    *,
    schema_version: int = 1,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    source: str | None = None,
) -> DomainEvent:
    """Record an event in the caller's transaction (送信箱に書く); a rollback drops it with the change.

    Everything is validated before anything is written: a bad field raises :class:`EventError`.
    Events of one key must come from transactions that serialise on that key (the register locks
    the resident's row), so that outbox order is the order the changes happened.
    """
    event = DomainEvent(
        id=_check_event_id(event_id) if event_id is not None else str(uuid.uuid4()),
        type=_check_type(type),
        key=_check_key(key),
        schema_version=_check_schema_version(schema_version),
        occurred_at=_check_aware(occurred_at) if occurred_at is not None else utcnow(),
        # A private deep copy: the caller may mutate its dict after emitting.
        payload=json.loads(json.dumps(_check_payload(payload))),
        source=(source or default_source())[:MAX_SOURCE_LENGTH],
    )
    session.add(
        OutboxEvent(
            event_id=event.id,
            type=event.type,
            key=event.key,
            schema_version=event.schema_version,
            occurred_at=event.occurred_at,
            payload=event.payload,
            source=event.source,
        )
    )
    # Flushing now gives the row its sequence number in emit order and reports a reused id here.
    session.flush()
    return event


_EMIT_REQUIRED = frozenset({"type", "key", "payload"})
_EMIT_OPTIONAL = frozenset({"schema_version", "event_id", "occurred_at", "source"})


def emit_many(session: Session, events: Iterable[Mapping[str, Any]]) -> list[DomainEvent]:
    """Record several events at once, in order, in the caller's transaction (bulk paths).

    Each mapping takes :func:`emit`'s arguments by name (``type``, ``key``, ``payload`` and
    optionally ``schema_version``, ``event_id``, ``occurred_at``, ``source``). All are validated
    as :func:`emit` validates before anything is written (an error names ``events[i].field``);
    then one COPY (PostgreSQL) or one executemany INSERT writes the outbox rows, whose seqs follow
    the given order, so events of one key keep their order. A reused event id raises the
    database's IntegrityError, as with :func:`emit`.
    """
    rows = _checked_rows(events)
    if rows:
        _write_outbox(session, rows)
    return [
        # The decoded text is the event's private copy of the payload (emit() makes one too).
        DomainEvent(
            id=r[0],
            type=r[1],
            key=r[2],
            schema_version=r[3],
            occurred_at=r[4],
            payload=json.loads(r[6]),
            source=r[7],
        )
        for r in rows
    ]


def emit_batch(session: Session, events: Iterable[Mapping[str, Any]]) -> int:
    """:func:`emit_many` for bulk paths that need no events back: returns how many were written.

    Same validation, order and transaction semantics; it skips the decoded copy of each payload
    and the :class:`DomainEvent` per event, which cost about as much as writing the row.
    """
    return emit_checked(session, check_events(events))


class CheckedEvents:
    """Events validated by :func:`check_events`, serialised, waiting for :func:`emit_checked`."""

    __slots__ = ("_rows",)

    def __init__(self, rows: list[_Row]) -> None:
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)


def check_events(events: Iterable[Mapping[str, Any]]) -> CheckedEvents:
    """:func:`emit_batch`'s validation alone (errors name ``events[i].field``); nothing is written.

    For a bulk path that checks everything before it writes anything: the payloads are
    serialised now, so later changes to the caller's dicts do not reach the outbox.
    """
    return CheckedEvents(_checked_rows(events))


def emit_checked(session: Session, checked: CheckedEvents) -> int:
    """Write events checked by :func:`check_events`, in order, in the caller's transaction."""
    if checked._rows:
        _write_outbox(session, checked._rows)
    return len(checked._rows)


def random_event_ids(count: int) -> list[str]:
    """``count`` random (version 4) UUIDs in canonical form, as ``str(uuid.uuid4())`` makes them.

    One read of the system's random source for all of them: a bulk path emits thousands at once.
    """
    raw = os.urandom(16 * count).hex()
    ids = []
    for at in range(0, 32 * count, 32):
        h = raw[at : at + 32]
        # Version 4 in the 13th digit, variant 10xx in the 17th (RFC 9562, section 5.4).
        ids.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}")
    return ids


_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}

# (event_id, type, key, schema_version, occurred_at, payload, payload text, source)
_Row = tuple[str, str, str, int, datetime, Any, str, str]


def _checked_rows(events: Iterable[Mapping[str, Any]]) -> list[_Row]:
    """emit()'s validation of every event (errors name ``events[i].field``), nothing written."""
    events = list(events)
    now = utcnow()
    fallback_source = None
    fresh = iter(
        random_event_ids(sum(1 for e in events if not isinstance(e, Mapping) or e.get("event_id") is None))
    )
    rows: list[_Row] = []
    seen: set[str] = set()
    types: set[str] = set()
    for i, given in enumerate(events):
        try:
            if not isinstance(given, Mapping):
                raise EventError("event", "must be a mapping of emit()'s arguments")
            unknown = set(given) - _EMIT_REQUIRED - _EMIT_OPTIONAL
            missing = _EMIT_REQUIRED - set(given)
            if unknown or missing:
                raise EventError(
                    "event",
                    f"unknown fields {sorted(unknown)}" if unknown else f"missing fields {sorted(missing)}",
                )
            event_id = given.get("event_id")
            occurred_at = given.get("occurred_at")
            source = given.get("source")
            if source is None:
                fallback_source = fallback_source or default_source()
                source = fallback_source
            payload = _check_payload(given["payload"])
            event_id = next(fresh) if event_id is None else _check_event_id(event_id)
            type_ = given["type"]
            if type(type_) is not str or type_ not in types:
                types.add(_check_type(type_))
            row = (
                event_id,
                type_,
                _check_key(given["key"]),
                _check_schema_version(given.get("schema_version", 1)),
                _check_aware(occurred_at) if occurred_at is not None else now,
                payload,
                # One serialisation: the private copy and the text written to the outbox.
                json.dumps(payload),
                source[:MAX_SOURCE_LENGTH],
            )
            if event_id in seen:
                raise EventError("id", f"{event_id} is given twice in this batch")
            seen.add(event_id)
        except EventError as exc:
            field = "" if exc.field == "event" else f".{exc.field}"
            raise EventError(f"events[{i}]{field}", exc.rule) from exc
        rows.append(row)
    return rows


_OUTBOX_COLUMNS = ("event_id", "type", "key", "schema_version", "occurred_at", "payload", "source")


def _write_outbox(session: Session, rows: list[_Row]) -> None:
    # Earlier emit() rows of this session must get their seqs first.
    session.flush()
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        session.execute(
            insert(cast(Table, OutboxEvent.__table__)),
            [
                {
                    "event_id": r[0],
                    "type": r[1],
                    "key": r[2],
                    "schema_version": r[3],
                    "occurred_at": r[4],
                    "payload": json.loads(r[6]),
                    "source": r[7],
                }
                for r in rows
            ],
        )
        return
    driver = connection.connection.driver_connection
    assert driver is not None
    # COPY assigns the identity seqs in row order; the payload goes as the text already made.
    statement = f"COPY {OutboxEvent.__tablename__} ({', '.join(_OUTBOX_COLUMNS)}) FROM STDIN"
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        write = copy.write_row
        for r in rows:
            write((r[0], r[1], r[2], r[3], r[4], r[6], r[7]))


def row_to_event(row: OutboxEvent) -> DomainEvent:
    return DomainEvent(
        id=row.event_id,
        type=row.type,
        key=row.key,
        schema_version=row.schema_version,
        occurred_at=row.occurred_at,
        payload=row.payload,
        source=row.source,
    )


# --- handlers ----------------------------------------------------------------------------------

Handler = Callable[[Session, DomainEvent], None]


@dataclass(frozen=True)
class Subscription:
    """A named handler for one event type; the name is the handler's identity in the inbox."""

    name: str
    event_type: str
    handler: Handler


class Registry:
    """Which handlers run for which event types. Create one per process (or per test)."""

    def __init__(self) -> None:
        self._by_type: dict[str, list[Subscription]] = {}

    def add(self, event_type: str, name: str, handler: Handler) -> Subscription:
        _check_type(event_type)
        if (
            not isinstance(name, str)
            or len(name) > MAX_HANDLER_NAME_LENGTH
            or not HANDLER_NAME_RE.match(name)
        ):
            raise EventError(
                "name",
                "must be a lower-case handler name such as 'network.replicate' "
                f"(at most {MAX_HANDLER_NAME_LENGTH} characters), got {name!r}",
            )
        subs = self._by_type.setdefault(event_type, [])
        if any(s.name == name for s in subs):
            raise EventError("name", f"handler {name!r} is already subscribed to {event_type!r}")
        sub = Subscription(name=name, event_type=event_type, handler=handler)
        subs.append(sub)
        return sub

    def subscribe(self, event_type: str, *, name: str) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`add`: ``@registry.subscribe("register.moved_out", name="network.x")``."""

        def decorate(handler: Handler) -> Handler:
            self.add(event_type, name, handler)
            return handler

        return decorate

    def handlers_for(self, event_type: str) -> list[Subscription]:
        return list(self._by_type.get(event_type, ()))

    @property
    def event_types(self) -> list[str]:
        return sorted(self._by_type)

    def find(self, name: str) -> list[Subscription]:
        return [s for subs in self._by_type.values() for s in subs if s.name == name]


default_registry = Registry()
subscribe = default_registry.subscribe


# --- applying one event ------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failing handler is retried before its event is parked (隔離)."""

    max_attempts: int = 5
    # Wait before attempt n+1 is backoff * 2**(n-1), capped; zero retries on the next round.
    backoff: timedelta = timedelta(0)
    max_backoff: timedelta = timedelta(minutes=10)

    def delay_after(self, attempts: int) -> timedelta:
        if self.backoff <= timedelta(0):
            return timedelta(0)
        return min(self.backoff * (2 ** max(attempts - 1, 0)), self.max_backoff)


DEFAULT_POLICY = RetryPolicy()


class HandlerOutcome(enum.Enum):
    APPLIED = "applied"  # ran now and committed with its inbox row
    ALREADY = "already"  # the inbox row was there: a repeated delivery, absorbed
    FAILED = "failed"  # raised; rolled back; will be retried
    WAITING = "waiting"  # failed before and its backoff has not passed yet
    PARKED = "parked"  # failed too often; quarantined in event_failure

    @property
    def settled(self) -> bool:
        return self in (HandlerOutcome.APPLIED, HandlerOutcome.ALREADY, HandlerOutcome.PARKED)


@dataclass
class ApplyResult:
    outcomes: dict[str, HandlerOutcome] = field(default_factory=dict)

    @property
    def settled(self) -> bool:
        """Every handler is done with the event (applied, already applied, or parked)."""
        return all(o.settled for o in self.outcomes.values())

    @property
    def attempted(self) -> int:
        return sum(o in (HandlerOutcome.APPLIED, HandlerOutcome.FAILED) for o in self.outcomes.values())


def _format_error(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    tb = traceback.extract_tb(exc.__traceback__)
    if tb:
        last = tb[-1]
        text += f" (at {last.filename}:{last.lineno} in {last.name})"
    return text[:MAX_ERROR_LENGTH]


def record_failure(
    factory: sessionmaker[Session],
    handler: str,
    event_document: dict[str, Any],
    error: str,
    policy: RetryPolicy,
    *,
    park_now: bool = False,
) -> HandlerOutcome:
    """Count a failed attempt in its own transaction; park the event when attempts run out."""
    event_id = str(event_document.get("id", "?"))[:64]
    for _ in range(3):  # a concurrent first failure may insert the row under us: retry as an update
        now = utcnow()
        try:
            with factory() as session, session.begin():
                row = session.get(EventFailure, (handler, event_id), with_for_update=True)
                if row is None:
                    row = EventFailure(
                        handler=handler,
                        event_id=event_id,
                        attempts=0,
                        last_error="",
                        event=event_document,
                        first_failed_at=now,
                        last_failed_at=now,
                    )
                    session.add(row)
                row.attempts += 1
                row.last_error = error[:MAX_ERROR_LENGTH]
                row.last_failed_at = now
                if park_now or row.attempts >= policy.max_attempts:
                    row.parked_at = now
                    row.next_attempt_at = None
                    outcome = HandlerOutcome.PARKED
                else:
                    row.next_attempt_at = now + policy.delay_after(row.attempts)
                    outcome = HandlerOutcome.FAILED
            if outcome is HandlerOutcome.PARKED:
                log.error("event %s parked for handler %s: %s", event_id, handler, error)
            else:
                log.warning("event %s failed in handler %s: %s", event_id, handler, error)
            return outcome
        except IntegrityError:
            continue
    raise RuntimeError(f"could not record the failure of handler {handler} on event {event_id}")


def run_handler(
    factory: sessionmaker[Session],
    sub: Subscription,
    event: DomainEvent,
    policy: RetryPolicy = DEFAULT_POLICY,
    *,
    ignore_parked: bool = False,
) -> HandlerOutcome:
    """Run one handler on one event exactly once: inbox row and effect commit together, or neither."""
    with factory() as session:
        if session.get(InboxEntry, (sub.name, event.id)) is not None:
            return HandlerOutcome.ALREADY
        failure = session.get(EventFailure, (sub.name, event.id))
        if failure is not None and not ignore_parked:
            if failure.parked_at is not None:
                return HandlerOutcome.PARKED
            if failure.next_attempt_at is not None and failure.next_attempt_at > utcnow():
                return HandlerOutcome.WAITING
    try:
        with factory() as session, session.begin():
            # The inbox row first: a concurrent delivery of the same event waits on it, then conflicts.
            session.add(InboxEntry(handler=sub.name, event_id=event.id, handled_at=utcnow()))
            try:
                session.flush()
            except IntegrityError as exc:
                raise _AlreadyHandled from exc
            sub.handler(session, event)
            if failure is not None:
                session.execute(
                    delete(EventFailure).where(
                        EventFailure.handler == sub.name, EventFailure.event_id == event.id
                    )
                )
        return HandlerOutcome.APPLIED
    except _AlreadyHandled:
        return HandlerOutcome.ALREADY
    except Exception as exc:  # a handler's failure must not stop delivery to others
        return record_failure(factory, sub.name, event.to_document(), _format_error(exc), policy)


class _AlreadyHandled(Exception):
    pass


def apply_event(
    factory: sessionmaker[Session],
    registry: Registry,
    event: DomainEvent,
    policy: RetryPolicy = DEFAULT_POLICY,
) -> ApplyResult:
    """Give ``event`` to every subscribed handler (each in its own transaction)."""
    result = ApplyResult()
    for sub in registry.handlers_for(event.type):
        result.outcomes[sub.name] = run_handler(factory, sub, event, policy)
    return result


# --- embedded dispatcher -----------------------------------------------------------------------


@dataclass
class RoundStats:
    delivered: int = 0  # outbox rows marked delivered
    attempted: int = 0  # handler runs (applied or failed)
    blocked: int = 0  # keys left waiting behind an unsettled event
    already: int = 0  # handler runs skipped because the inbox had the event (wasted work)


def _pending_heads(limit: int) -> Any:
    later = OutboxEvent
    earlier = aliased(OutboxEvent)
    earlier_pending = exists().where(
        earlier.key == later.key, earlier.delivered_at.is_(None), earlier.seq < later.seq
    )
    return (
        select(later)
        .where(later.delivered_at.is_(None), ~earlier_pending)
        .order_by(later.seq)
        .limit(limit)
        # Another dispatcher skips keys we hold; locking the head row holds the whole key.
        .with_for_update(skip_locked=True, of=later)
    )


def deliver_round(
    factory: sessionmaker[Session],
    registry: Registry,
    *,
    limit: int = 100,
    policy: RetryPolicy = DEFAULT_POLICY,
) -> RoundStats:
    """One pass over the outbox: up to ``limit`` events, each key in order, keys independent."""
    stats = RoundStats()
    budget = limit
    done: list[int] = []
    with factory() as claim, claim.begin():
        heads = list(claim.scalars(_pending_heads(limit)))
        for head in heads:
            if budget <= 0:
                break
            run = list(
                claim.scalars(
                    select(OutboxEvent)
                    .where(OutboxEvent.key == head.key, OutboxEvent.delivered_at.is_(None))
                    .order_by(OutboxEvent.seq)
                    .limit(budget)
                )
            )
            for row in run:
                budget -= 1
                result = apply_event(factory, registry, row_to_event(row), policy)
                stats.attempted += result.attempted
                stats.already += sum(o is HandlerOutcome.ALREADY for o in result.outcomes.values())
                if not result.settled:
                    # Later events of this key wait; other keys go on.
                    stats.blocked += 1
                    break
                done.append(row.seq)
        locking = claim.get_bind().dialect.name != "sqlite"
        if locking:
            # In the claiming transaction: the marks and the release of the keys are one commit.
            stats.delivered = _mark_delivered(claim, done)
    if not locking and done:
        # SQLite has no row locks to hold, and a write in the claiming session would hold the
        # database lock while the handlers' transactions wait; mark in a transaction of its own.
        with factory() as session, session.begin():
            stats.delivered = _mark_delivered(session, done)
    return stats


def _mark_delivered(session: Session, seqs: list[int]) -> int:
    marked = 0
    for start in range(0, len(seqs), 500):
        result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
            update(OutboxEvent)
            # Without row locks (SQLite) a second dispatcher may have marked some already.
            .where(OutboxEvent.seq.in_(seqs[start : start + 500]), OutboxEvent.delivered_at.is_(None))
            .values(delivered_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        marked += result.rowcount
    return marked


def deliver_pending(
    factory: sessionmaker[Session],
    registry: Registry,
    *,
    limit: int = 100,
    policy: RetryPolicy = DEFAULT_POLICY,
) -> int:
    """Deliver up to ``limit`` pending outbox events in process; returns how many were completed."""
    return deliver_round(factory, registry, limit=limit, policy=policy).delivered


def drain(
    factory: sessionmaker[Session],
    registry: Registry,
    *,
    limit: int = 500,
    policy: RetryPolicy = DEFAULT_POLICY,
) -> int:
    """Deliver until nothing more can be done now (call after each commit in embedded mode).

    Stops when the outbox is empty or what is left waits for a backoff or another dispatcher.
    """
    total = 0
    while True:
        stats = deliver_round(factory, registry, limit=limit, policy=policy)
        total += stats.delivered
        if stats.delivered == 0 and stats.attempted == 0:
            return total


@contextmanager
def unit_of_work(
    factory: sessionmaker[Session],
    registry: Registry,
    *,
    policy: RetryPolicy = DEFAULT_POLICY,
) -> Iterator[Session]:
    """Embedded mode's usual shape: one transaction, then :func:`drain` once it has committed."""
    with transaction(factory) as session:
        yield session
    drain(factory, registry, policy=policy)


def pending_count(session: Session) -> int:
    return session.scalar(select(func.count()).where(OutboxEvent.delivered_at.is_(None))) or 0


@dataclass(frozen=True)
class EventStats:
    """Gauges for /metrics and readiness: what is waiting, failing or parked."""

    undelivered: int  # outbox rows not yet delivered in process
    unpublished: int  # outbox rows not yet acknowledged by JetStream
    failing: int  # (handler, event) pairs failing and still being retried
    parked: int  # (handler, event) pairs quarantined, waiting for an operator


def event_stats(session: Session) -> EventStats:
    outbox = session.execute(
        select(
            func.count().filter(OutboxEvent.delivered_at.is_(None)),
            func.count().filter(OutboxEvent.published_at.is_(None)),
        )
    ).one()
    failures = session.execute(
        select(
            func.count().filter(EventFailure.parked_at.is_(None)),
            func.count().filter(EventFailure.parked_at.is_not(None)),
        )
    ).one()
    return EventStats(
        undelivered=outbox[0] or 0,
        unpublished=outbox[1] or 0,
        failing=failures[0] or 0,
        parked=failures[1] or 0,
    )


# --- parked events -----------------------------------------------------------------------------


def parked(session: Session) -> list[EventFailure]:
    """Events quarantined after repeated failures, oldest first."""
    return list(
        session.scalars(
            select(EventFailure)
            .where(EventFailure.parked_at.is_not(None))
            .order_by(EventFailure.parked_at, EventFailure.event_id)
        )
    )


def replay_parked(
    factory: sessionmaker[Session],
    registry: Registry,
    handler: str,
    event_id: str,
    policy: RetryPolicy = DEFAULT_POLICY,
) -> HandlerOutcome:
    """Run a parked event through its handler again (after a fix); APPLIED clears the parking."""
    with factory() as session:
        row = session.get(EventFailure, (handler, event_id))
        if row is None or row.parked_at is None:
            raise EventError("event_id", f"no parked event {event_id!r} for handler {handler!r}")
        event = DomainEvent.from_document(row.event)
    subs = [s for s in registry.find(handler) if s.event_type == event.type]
    if not subs:
        raise EventError("handler", f"{handler!r} is not subscribed to {event.type!r} in this registry")
    outcome = run_handler(factory, subs[0], event, policy, ignore_parked=True)
    if outcome is HandlerOutcome.FAILED:
        # One more failure on an operator's replay parks it again straight away.
        with factory() as session, session.begin():
            session.execute(
                update(EventFailure)
                .where(EventFailure.handler == handler, EventFailure.event_id == event_id)
                .values(parked_at=utcnow(), next_attempt_at=None)
            )
        return HandlerOutcome.PARKED
    return outcome
