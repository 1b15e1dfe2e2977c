"""``emit_many``: emit()'s validation, one bulk write, outbox order = the given order."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from kiban.core.events import (
    DomainEvent,
    EventError,
    Registry,
    check_events,
    drain,
    emit,
    emit_batch,
    emit_checked,
    emit_many,
    random_event_ids,
    row_to_event,
)
from kiban.core.models.events import OutboxEvent

TYPE = "register.identity_changed"


def _rows(factory: sessionmaker[Session]) -> list[OutboxEvent]:
    with factory() as s:
        return list(s.scalars(select(OutboxEvent).order_by(OutboxEvent.seq)))


def test_emit_many_writes_what_emit_writes_in_the_given_order(session_maker: sessionmaker[Session]) -> None:
    when = datetime(2026, 11, 25, 18, 0, tzinfo=timezone(timedelta(hours=9)))
    event_id = str(uuid.uuid4())
    with session_maker.begin() as s:
        emit(s, TYPE, "k0", {"n": 0})
        returned = emit_many(
            s,
            [
                {"type": TYPE, "key": "k1", "payload": {"n": 1, "名": "渡\U000e0100辺", "x": 1.5}},
                {"type": TYPE, "key": "k2", "payload": {"n": 2}, "event_id": event_id, "source": "node-b"},
                {"type": TYPE, "key": "k1", "payload": {"n": 3}, "occurred_at": when, "schema_version": 2},
            ],
        )
        emit(s, TYPE, "k0", {"n": 4})
        assert emit_many(s, []) == []
    rows = _rows(session_maker)
    assert [(r.key, r.payload["n"]) for r in rows] == [("k0", 0), ("k1", 1), ("k2", 2), ("k1", 3), ("k0", 4)]
    assert [row_to_event(r) for r in rows[1:4]] == returned
    assert rows[1].payload == {"n": 1, "名": "渡\U000e0100辺", "x": 1.5}
    assert rows[2].event_id == event_id and rows[2].source == "node-b"
    assert rows[3].occurred_at == when.astimezone(UTC) and rows[3].schema_version == 2
    assert rows[1].source == rows[0].source  # the node's default source, as emit() stamps it


def test_emit_many_keeps_a_private_copy_of_the_payload(session: Session) -> None:
    payload: dict[str, Any] = {"codes": ["a"]}
    [event] = emit_many(session, [{"type": TYPE, "key": "k", "payload": payload}])
    payload["codes"].append("b")
    assert event.payload == {"codes": ["a"]}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"type": "Register.x"}, "events[2].type"),
        ({"key": " k"}, "events[2].key"),
        ({"payload": ["x"]}, "events[2].payload"),
        ({"payload": {"nested": {"x": [1, math.nan]}}}, "events[2].payload.nested.x[1]"),
        ({"payload": {"when": datetime(2026, 1, 1, tzinfo=UTC)}}, "events[2].payload.when"),
        ({"schema_version": 0}, "events[2].schema_version"),
        ({"event_id": "not-a-uuid"}, "events[2].id"),
        ({"occurred_at": datetime(2026, 1, 1)}, "events[2].occurred_at"),
        ({"colour": "red"}, "events[2]"),
        ({"event_id": "00000000-0000-4000-8000-000000000001"}, "events[2].id"),  # twice in the batch
    ],
)
@pytest.mark.parametrize("bulk", [emit_many, emit_batch])
def test_emit_many_refuses_the_whole_batch_for_one_bad_event(
    session_maker: sessionmaker[Session], change: dict[str, Any], field: str, bulk: Any
) -> None:
    good: dict[str, Any] = {"type": TYPE, "key": "k", "payload": {"a": 1}}
    first = {**good, "event_id": "00000000-0000-4000-8000-000000000001"}
    with session_maker() as s, s.begin():
        with pytest.raises(EventError) as info:
            bulk(s, [first, good, {**good, **change}, good])
        assert info.value.field == field
    assert _rows(session_maker) == []


def test_emit_many_refuses_a_missing_field(session: Session) -> None:
    with pytest.raises(EventError) as info:
        emit_many(session, [{"type": TYPE, "key": "k"}])
    assert (info.value.field, info.value.rule) == ("events[0]", "missing fields ['payload']")


def test_emit_many_refuses_an_event_id_already_in_the_outbox(session_maker: sessionmaker[Session]) -> None:
    event_id = str(uuid.uuid4())
    with session_maker.begin() as s:
        emit(s, TYPE, "k", {}, event_id=event_id)
    with pytest.raises(Exception, match="(?i)unique|duplicate"), session_maker.begin() as s:
        emit_many(
            s,
            [
                {"type": TYPE, "key": "k", "payload": {}},
                {"type": TYPE, "key": "k", "payload": {}, "event_id": event_id},
            ],
        )
    assert len(_rows(session_maker)) == 1


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=30))
def test_bulk_events_are_delivered_per_key_in_order(
    session_maker: sessionmaker[Session], keys: list[str]
) -> None:
    with session_maker.begin() as s:
        s.execute(delete(OutboxEvent))
        emit_many(s, [{"type": TYPE, "key": k, "payload": {"i": i}} for i, k in enumerate(keys)])
    seen: list[tuple[str, int]] = []

    def handler(session: Session, event: DomainEvent) -> None:
        seen.append((event.key, event.payload["i"]))

    registry = Registry()
    registry.add(TYPE, "test.bulk", handler)
    assert drain(session_maker, registry) == len(keys)
    for key in set(keys):
        assert [i for k, i in seen if k == key] == [i for i, k in enumerate(keys) if k == key]
    with session_maker() as s:
        assert s.scalar(select(func.count()).where(OutboxEvent.delivered_at.is_(None))) == 0


def test_emit_batch_writes_what_emit_many_writes(session_maker: sessionmaker[Session]) -> None:
    when = datetime(2026, 11, 25, 18, 0, tzinfo=timezone(timedelta(hours=9)))
    events: list[dict[str, Any]] = [
        {"type": TYPE, "key": "k1", "payload": {"n": 1, "名": "渡\U000e0100辺", "x": 1.5, "l": [None, True]}},
        {"type": TYPE, "key": "k2", "payload": {"n": 2}, "source": "node-b", "schema_version": 2},
        {"type": "other.thing", "key": "k1", "payload": {"n": 3, "d": {"e": []}}, "occurred_at": when},
    ]
    written = []
    for bulk in (emit_many, emit_batch):
        with session_maker.begin() as s:
            s.execute(delete(OutboxEvent))
            result = bulk(s, events)
            if bulk is emit_batch:
                assert result == 3
            assert bulk(s, []) in ([], 0)
        written.append(
            [
                (r.type, r.key, r.schema_version, r.payload, r.source, r.occurred_at == when)
                for r in _rows(session_maker)
            ]
        )
    assert written[0] == written[1]
    assert [row[-1] for row in written[1]] == [False, False, True]
    ids = [r.event_id for r in _rows(session_maker)]
    assert all(uuid.UUID(i).version == 4 for i in ids) and len(set(ids)) == 3


def test_emit_batch_writes_the_payload_as_it_was(
    session_maker: sessionmaker[Session],
) -> None:
    payload: dict[str, Any] = {"codes": ["a"]}
    with session_maker.begin() as s:
        emit_batch(s, [{"type": TYPE, "key": "k", "payload": payload}])
        payload["codes"].append("b")
    assert [r.payload for r in _rows(session_maker)] == [{"codes": ["a"]}]


def test_random_event_ids_are_canonical_random_uuids() -> None:
    ids = random_event_ids(2000)
    assert len(set(ids)) == 2000 and random_event_ids(0) == []
    for value in ids:
        parsed = uuid.UUID(value)
        assert str(parsed) == value
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    # Every hex digit shows up in every free position (nothing is stuck).
    free = [i for i in range(36) if i not in (8, 13, 14, 18, 19, 23)]
    assert all(len({value[i] for value in ids}) == 16 for i in free)
    assert {value[19] for value in ids} == set("89ab")


def test_check_events_checks_everything_before_anything_is_written(
    session_maker: sessionmaker[Session],
) -> None:
    with pytest.raises(EventError) as info:
        check_events([{"type": TYPE, "key": "k", "payload": {}}, {"type": TYPE, "key": "", "payload": {}}])
    assert info.value.field == "events[1].key"
    payload: dict[str, Any] = {"n": 1}
    checked = check_events([{"type": TYPE, "key": "k", "payload": payload}])
    payload["n"] = 2  # serialised when checked
    assert len(checked) == 1
    with session_maker.begin() as s:
        assert emit_checked(s, checked) == 1
    assert [(r.key, r.payload) for r in _rows(session_maker)] == [("k", {"n": 1})]
