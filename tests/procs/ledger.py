"""A test-only effect for event handlers: a ledger of applied events and a per-key counter.

Used in-process by tests/test_events.py and, through ``--registry ledger:REGISTRY``, by the consumer
subprocess of tests/test_nats_bus.py. The tables belong to the tests, not to Kiban's schema: tests
create them with :func:`create` and drop them with :func:`drop` (they never outlive a test).
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Engine, Integer, MetaData, String, Table, func, insert, select, update
from sqlalchemy.orm import Session

from kiban.core.events import DomainEvent, Registry

EVENT_TYPE = "test.counted"
HANDLER = "test.ledger"

metadata = MetaData()

ledger = Table(
    "test_event_ledger",
    metadata,
    # Autoincrement id = the order effects were applied in.
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(128), nullable=False),
    Column("n", Integer, nullable=False),
    Column("event_id", String(64), nullable=False),
    # Whether this event came right after the previous one of its key.
    Column("in_order", Boolean, nullable=False),
)

counters = Table(
    "test_event_ledger_counter",
    metadata,
    Column("key", String(128), primary_key=True),
    Column("last_n", Integer, nullable=False),
)


def create(engine: Engine) -> None:
    metadata.create_all(engine)


def drop(engine: Engine) -> None:
    metadata.drop_all(engine)


def apply(session: Session, event: DomainEvent) -> None:
    """The effect: append (key, n) and advance the key's counter."""
    n = int(event.payload["n"])
    last = session.execute(select(counters.c.last_n).where(counters.c.key == event.key)).scalar()
    if last is None:
        session.execute(insert(counters).values(key=event.key, last_n=n))
    else:
        session.execute(update(counters).where(counters.c.key == event.key).values(last_n=n))
    expected = (last or 0) + 1
    session.execute(insert(ledger).values(key=event.key, n=n, event_id=event.id, in_order=(n == expected)))


def make_registry() -> Registry:
    registry = Registry()
    registry.add(EVENT_TYPE, HANDLER, apply)
    return registry


REGISTRY = make_registry()


def count(session: Session) -> int:
    return session.execute(select(func.count()).select_from(ledger)).scalar_one()


def rows(session: Session) -> list[tuple[int, str, int, str, bool]]:
    result = session.execute(
        select(ledger.c.id, ledger.c.key, ledger.c.n, ledger.c.event_id, ledger.c.in_order).order_by(
            ledger.c.id
        )
    )
    return [tuple(r) for r in result]  # type: ignore[misc]
