"""Domain events: the outbox is transactional, effects happen once, keys keep their order, failures park."""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from conftest import is_postgres
from kiban.core.events import (
    TYPE_RE,
    DomainEvent,
    EventError,
    HandlerOutcome,
    Registry,
    RetryPolicy,
    RoundStats,
    apply_event,
    deliver_pending,
    deliver_round,
    drain,
    emit,
    event_stats,
    parked,
    pending_count,
    replay_parked,
    row_to_event,
    unit_of_work,
)
from kiban.core.models.events import EventFailure, InboxEntry, OutboxEvent
from procs import ledger

RESIDENT_CODE = "12345678901"  # a 住民票コード-shaped key (synthetic)
QUICK = RetryPolicy(max_attempts=3)


@pytest.fixture
def ledger_tables(engine: Engine) -> Iterator[None]:
    ledger.create(engine)
    yield
    ledger.drop(engine)


def _outbox_count(factory: sessionmaker[Session]) -> int:
    with factory() as s:
        return s.scalar(select(func.count()).select_from(OutboxEvent)) or 0


def _emit_counted(factory: sessionmaker[Session], keys: list[str]) -> None:
    """One event per entry of ``keys``, numbered 1, 2, … per key, in list order."""
    seen: dict[str, int] = {}
    with factory() as s, s.begin():
        for key in keys:
            seen[key] = seen.get(key, 0) + 1
            emit(s, ledger.EVENT_TYPE, key, {"n": seen[key]})


def _ledger_rows(factory: sessionmaker[Session]) -> list[tuple[int, str, int, str, bool]]:
    with factory() as s:
        return ledger.rows(s)


def _assert_exactly_once_in_order(factory: sessionmaker[Session], keys: list[str]) -> None:
    rows = _ledger_rows(factory)
    expected: dict[str, list[int]] = {}
    for key in keys:
        expected.setdefault(key, []).append(len(expected.get(key, [])) + 1)
    got: dict[str, list[int]] = {}
    for _id, key, n, _eid, _ok in rows:
        got.setdefault(key, []).append(n)
    assert got == expected
    assert all(ok for *_rest, ok in rows)


# --- emit ----------------------------------------------------------------------------------------


def test_emit_rolls_back_with_the_change(session_maker: sessionmaker[Session]) -> None:
    with session_maker() as s:
        s.begin()
        emit(s, "register.identity_changed", RESIDENT_CODE, {"reason": "転居"})
        s.rollback()
    assert _outbox_count(session_maker) == 0

    with session_maker() as s, s.begin():
        event = emit(s, "register.identity_changed", RESIDENT_CODE, {"reason": "転居"}, schema_version=2)
    with session_maker() as s:
        row = s.scalars(select(OutboxEvent)).one()
    assert (row.event_id, row.type, row.key, row.schema_version) == (
        event.id,
        "register.identity_changed",
        RESIDENT_CODE,
        2,
    )
    assert row.payload == {"reason": "転居"}
    assert row.occurred_at.tzinfo is not None and row.delivered_at is None and row.published_at is None


def test_emit_keeps_a_private_copy_of_the_payload(session: Session) -> None:
    payload: dict[str, Any] = {"names": ["山田"]}
    event = emit(session, "register.identity_changed", RESIDENT_CODE, payload)
    payload["names"].append("田中")
    assert event.payload == {"names": ["山田"]}


def test_emit_refuses_a_reused_event_id(session_maker: sessionmaker[Session]) -> None:
    event_id = str(uuid.uuid4())
    with session_maker() as s, s.begin():
        emit(s, "register.identity_changed", RESIDENT_CODE, {}, event_id=event_id)
    with pytest.raises(Exception, match="(?i)unique|duplicate"), session_maker() as s, s.begin():
        emit(s, "register.identity_changed", RESIDENT_CODE, {}, event_id=event_id)
    assert _outbox_count(session_maker) == 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"type": "register"}, "type"),
        ({"type": "Register.identity_changed"}, "type"),
        ({"type": "register..moved_out"}, "type"),
        ({"type": "register.moved out"}, "type"),
        ({"type": "登録.変更"}, "type"),
        ({"key": ""}, "key"),
        ({"key": " 12345678901"}, "key"),
        ({"key": "1" * 129}, "key"),
        ({"payload": ["not", "an", "object"]}, "payload"),
        ({"payload": {"when": datetime(2026, 1, 1, tzinfo=UTC)}}, "payload.when"),
        ({"payload": {"codes": {"a", "b"}}}, "payload.codes"),
        ({"payload": {"nested": {"x": [1, math.nan]}}}, "payload.nested.x[1]"),
        ({"payload": {1: "int key"}}, "payload"),
        ({"schema_version": 0}, "schema_version"),
        ({"schema_version": True}, "schema_version"),
        ({"event_id": "not-a-uuid"}, "id"),
        ({"event_id": str(uuid.uuid4()).upper()}, "id"),
        ({"occurred_at": datetime(2026, 1, 1)}, "occurred_at"),
    ],
)
def test_emit_rejects_bad_input_and_writes_nothing(
    session_maker: sessionmaker[Session], kwargs: dict[str, Any], field: str
) -> None:
    args: dict[str, Any] = {"type": "register.identity_changed", "key": RESIDENT_CODE, "payload": {"a": 1}}
    args.update(kwargs)
    with session_maker() as s, s.begin():
        with pytest.raises(EventError) as info:
            emit(s, args.pop("type"), args.pop("key"), args.pop("payload"), **args)
        assert info.value.field == field
        assert str(info.value).startswith(f"{field}: ")
    assert _outbox_count(session_maker) == 0


@example("register.identity_changed").via("SPEC §8")
@example("numbering.number_reissued").via("SPEC §8")
@given(st.from_regex(TYPE_RE, fullmatch=True).filter(lambda t: len(t) <= 100))
def test_every_well_formed_type_becomes_a_subject(event_type: str) -> None:
    event = DomainEvent.from_document(
        {
            "id": str(uuid.uuid4()),
            "type": event_type,
            "key": RESIDENT_CODE,
            "schema_version": 1,
            "occurred_at": "2026-11-25T09:00:00+09:00",
            "payload": {},
            "source": "node-a",
        }
    )
    assert event.type == event_type and event.occurred_at == datetime(2026, 11, 25, 0, 0, tzinfo=UTC)


@given(st.text(max_size=30).filter(lambda t: not TYPE_RE.match(t)))
def test_malformed_types_are_refused(event_type: str) -> None:
    with pytest.raises(EventError) as info:
        Registry().add(event_type, "x.handler", lambda s, e: None)
    assert info.value.field == "type"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.dictionaries(st.text(max_size=8), json_values, max_size=5))
def test_payload_round_trips_through_outbox_and_wire(
    session_maker: sessionmaker[Session], payload: dict[str, Any]
) -> None:
    with session_maker() as s, s.begin():
        event = emit(s, "register.identity_changed", RESIDENT_CODE, payload)
    with session_maker() as s:
        row = s.scalars(select(OutboxEvent).where(OutboxEvent.event_id == event.id)).one()
        assert row.payload == payload
    assert DomainEvent.from_json(event.to_json()) == event


def test_wire_documents_are_checked_field_by_field() -> None:
    good = DomainEvent(
        id=str(uuid.uuid4()),
        type="cards.state_changed",
        key="card-1",
        schema_version=1,
        occurred_at=datetime(2026, 11, 25, 9, 0, tzinfo=timezone(timedelta(hours=9))),
        payload={"state": "一時停止"},
        source="node",
    ).to_document()
    assert DomainEvent.from_document(good).occurred_at.tzinfo == UTC
    for name, bad, field in [
        ("occurred_at", "2026-11-25T09:00:00", "occurred_at"),
        ("occurred_at", "yesterday", "occurred_at"),
        ("schema_version", "1", "schema_version"),
        ("payload", None, "payload"),
        ("source", "", "source"),
    ]:
        with pytest.raises(EventError) as info:
            DomainEvent.from_document({**good, name: bad})
        assert info.value.field == field
    with pytest.raises(EventError, match="^key: is missing"):
        DomainEvent.from_document({k: v for k, v in good.items() if k != "key"})
    with pytest.raises(EventError, match="^event: is not valid JSON"):
        DomainEvent.from_json(b"{not json")


# --- registry ------------------------------------------------------------------------------------


def test_registry_names_are_unique_per_type() -> None:
    registry = Registry()

    @registry.subscribe("register.moved_out", name="network.forward")
    def forward(session: Session, event: DomainEvent) -> None:
        pass

    registry.add("register.identity_changed", "network.forward", forward)  # same name, other type: fine
    with pytest.raises(EventError, match="^name: .*already subscribed"):
        registry.add("register.moved_out", "network.forward", forward)
    with pytest.raises(EventError) as info:
        registry.add("register.moved_out", "Network Forward", forward)
    assert info.value.field == "name"
    assert [s.name for s in registry.handlers_for("register.moved_out")] == ["network.forward"]
    assert registry.handlers_for("jpki.certificate_status_changed") == []


# --- embedded delivery ---------------------------------------------------------------------------


def test_events_without_handlers_are_marked_delivered(session_maker: sessionmaker[Session]) -> None:
    with session_maker() as s, s.begin():
        emit(s, "linkage.exchange_recorded", "fugo-1", {})
    assert deliver_pending(session_maker, Registry()) == 1
    with session_maker() as s:
        assert pending_count(s) == 0


def test_repeated_delivery_has_one_effect(session_maker: sessionmaker[Session], ledger_tables: None) -> None:
    _emit_counted(session_maker, [RESIDENT_CODE])
    assert drain(session_maker, ledger.REGISTRY) == 1
    # A crash after the handler committed but before the row was marked: delivered again.
    with session_maker() as s, s.begin():
        s.execute(update(OutboxEvent).values(delivered_at=None))
        event_row = s.scalars(select(OutboxEvent)).one()
    assert drain(session_maker, ledger.REGISTRY) == 1
    with session_maker() as s:
        again = apply_event(session_maker, ledger.REGISTRY, row_to_event(event_row))
        assert again.outcomes == {ledger.HANDLER: HandlerOutcome.ALREADY}
        assert ledger.count(s) == 1
        assert s.scalar(select(func.count()).select_from(InboxEntry)) == 1


def test_failing_handler_rolls_back_and_is_retried(
    session_maker: sessionmaker[Session], ledger_tables: None
) -> None:
    calls = {"n": 0}

    def flaky(session: Session, event: DomainEvent) -> None:
        calls["n"] += 1
        ledger.apply(session, event)  # the effect is written, then the handler fails
        if calls["n"] <= 2:
            raise RuntimeError(f"transient failure {calls['n']}")

    registry = Registry()
    registry.add(ledger.EVENT_TYPE, ledger.HANDLER, flaky)
    _emit_counted(session_maker, [RESIDENT_CODE])

    stats = deliver_round(session_maker, registry, policy=QUICK)
    assert (stats.delivered, stats.attempted, stats.blocked) == (0, 1, 1)
    with session_maker() as s:
        assert ledger.count(s) == 0  # rolled back with the failed transaction
        assert s.scalar(select(func.count()).select_from(InboxEntry)) == 0
        failure = s.scalars(select(EventFailure)).one()
        assert failure.attempts == 1 and failure.parked_at is None
        assert "transient failure 1" in failure.last_error
        assert pending_count(s) == 1

    assert drain(session_maker, registry, policy=QUICK) == 1
    assert calls["n"] == 3
    with session_maker() as s:
        assert ledger.count(s) == 1
        assert s.scalar(select(func.count()).select_from(EventFailure)) == 0  # cleared by the success
        assert pending_count(s) == 0


def test_repeated_failure_parks_the_event_and_frees_its_key(
    session_maker: sessionmaker[Session], ledger_tables: None
) -> None:
    broken = {"on": True}

    def sometimes_broken(session: Session, event: DomainEvent) -> None:
        if broken["on"] and event.payload["n"] == 1 and event.key == "A":
            raise ValueError("payload rejected by the receiving node")
        ledger.apply(session, event)

    registry = Registry()
    registry.add(ledger.EVENT_TYPE, ledger.HANDLER, sometimes_broken)
    _emit_counted(session_maker, ["A", "B", "A", "B"])

    assert drain(session_maker, registry, policy=QUICK) == 4
    with session_maker() as s:
        [failure] = parked(s)
        assert (failure.handler, failure.attempts) == (ledger.HANDLER, QUICK.max_attempts)
        assert "ValueError: payload rejected by the receiving node" in failure.last_error
        assert failure.event["key"] == "A" and failure.event["payload"] == {"n": 1}
        assert pending_count(s) == 0
        assert (event_stats(s).failing, event_stats(s).parked) == (0, 1)
    # B untouched; A's second event went ahead once the first was parked (documented choice).
    assert [(k, n) for _i, k, n, _e, _o in _ledger_rows(session_maker)] == [("B", 1), ("B", 2), ("A", 2)]

    broken["on"] = False  # the operator fixes the handler and replays
    outcome = replay_parked(session_maker, registry, failure.handler, failure.event_id)
    assert outcome is HandlerOutcome.APPLIED
    with session_maker() as s:
        assert parked(s) == []
        assert ledger.count(s) == 4
    with pytest.raises(EventError, match="^event_id: no parked event"):
        replay_parked(session_maker, registry, failure.handler, failure.event_id)


def test_a_failing_key_waits_while_other_keys_go_on(
    session_maker: sessionmaker[Session], ledger_tables: None
) -> None:
    def fails_on_a(session: Session, event: DomainEvent) -> None:
        if event.key == "A":
            raise RuntimeError("node for A is down")
        ledger.apply(session, event)

    registry = Registry()
    registry.add(ledger.EVENT_TYPE, ledger.HANDLER, fails_on_a)
    _emit_counted(session_maker, ["A", "B", "A", "B", "B"])
    slow = RetryPolicy(max_attempts=5, backoff=timedelta(hours=1))

    assert drain(session_maker, registry, policy=slow) == 3
    with session_maker() as s:
        assert pending_count(s) == 2  # A1 waits for its backoff, A2 waits behind it
        failure = s.scalars(select(EventFailure)).one()
        assert failure.attempts == 1 and failure.parked_at is None
        assert failure.next_attempt_at is not None and failure.next_attempt_at > datetime.now(UTC)
    assert [(k, n) for _i, k, n, _e, _o in _ledger_rows(session_maker)] == [("B", 1), ("B", 2), ("B", 3)]
    # Nothing is tried again before the backoff has passed.
    assert deliver_round(session_maker, registry, policy=slow).attempted == 0
    with session_maker() as s:
        stats = event_stats(s)
    assert (stats.undelivered, stats.unpublished, stats.failing, stats.parked) == (2, 5, 1, 0)


def test_handlers_emitting_events_are_drained_too(session_maker: sessionmaker[Session]) -> None:
    seen: list[str] = []
    registry = Registry()

    @registry.subscribe("register.identity_changed", name="network.replicate")
    def replicate(session: Session, event: DomainEvent) -> None:
        emit(session, "network.identity_changed", event.key, {"from": event.id})

    @registry.subscribe("network.identity_changed", name="jpki.revoke")
    def revoke(session: Session, event: DomainEvent) -> None:
        seen.append(event.payload["from"])

    with session_maker() as s, s.begin():
        first = emit(s, "register.identity_changed", RESIDENT_CODE, {})
    assert drain(session_maker, registry) == 2
    assert seen == [first.id]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    keys=st.lists(st.sampled_from(["K1", "K2", "K3", "K4"]), min_size=2, max_size=40),
    limit=st.integers(1, 7),
    data=st.data(),
)
def test_per_key_order_holds_for_any_interleaving(
    session_maker: sessionmaker[Session],
    ledger_tables: None,
    keys: list[str],
    limit: int,
    data: st.DataObject,
) -> None:
    failing = data.draw(st.sets(st.integers(0, len(keys) - 1), min_size=1, max_size=5), label="failing")
    with session_maker() as s, s.begin():
        for table in (ledger.ledger, ledger.counters):
            s.execute(delete(table))
        for model in (OutboxEvent, InboxEntry, EventFailure):
            s.execute(delete(model))
    _emit_counted(session_maker, keys)
    with session_maker() as s:
        ids = [row.event_id for row in s.scalars(select(OutboxEvent).order_by(OutboxEvent.seq))]
    # Some events fail once (transiently): order must still hold.
    to_fail = {ids[i] for i in failing}

    def once_flaky(session: Session, event: DomainEvent) -> None:
        if event.id in to_fail:
            to_fail.discard(event.id)
            raise RuntimeError("transient")
        ledger.apply(session, event)

    registry = Registry()
    registry.add(ledger.EVENT_TYPE, ledger.HANDLER, once_flaky)
    assert drain(session_maker, registry, limit=limit, policy=QUICK) == len(keys)
    _assert_exactly_once_in_order(session_maker, keys)


def test_two_concurrent_dispatchers_apply_each_event_once_in_order(
    session_maker: sessionmaker[Session], ledger_tables: None
) -> None:
    keys = [f"K{i % 20:02d}" for i in range(600)]
    _emit_counted(session_maker, keys)
    totals: list[RoundStats] = []
    already = {"n": 0}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def dispatcher() -> None:
        mine = RoundStats()
        try:
            start.wait()
            while True:
                stats = deliver_round(session_maker, ledger.REGISTRY, limit=15)
                mine.delivered += stats.delivered
                mine.attempted += stats.attempted
                already["n"] += stats.already
                if stats.delivered == 0 and stats.attempted == 0:
                    break
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        totals.append(mine)

    threads = [threading.Thread(target=dispatcher) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert drain(session_maker, ledger.REGISTRY) == 0  # nothing left behind
    assert sum(t.delivered for t in totals) == 600
    _assert_exactly_once_in_order(session_maker, keys)
    with session_maker() as s:
        assert s.scalar(select(func.count()).select_from(InboxEntry)) == 600
    if is_postgres():
        # SKIP LOCKED on the head of each key: the two never even tried the same event.
        assert already["n"] == 0
        assert sum(t.attempted for t in totals) == 600


def test_unit_of_work_delivers_after_commit_and_not_after_rollback(
    session_maker: sessionmaker[Session], ledger_tables: None
) -> None:
    with pytest.raises(RuntimeError), unit_of_work(session_maker, ledger.REGISTRY) as s:
        emit(s, ledger.EVENT_TYPE, "A", {"n": 1})
        raise RuntimeError("the change fails")
    assert _outbox_count(session_maker) == 0 and _ledger_rows(session_maker) == []

    with unit_of_work(session_maker, ledger.REGISTRY) as s:
        emit(s, ledger.EVENT_TYPE, "A", {"n": 1})
        assert _ledger_rows(session_maker) == []  # nothing runs before the commit
    assert [(k, n) for _i, k, n, _e, _o in _ledger_rows(session_maker)] == [("A", 1)]
