"""Tables of the domain-event seam: the transactional outbox, the handlers' inbox, and failures.

- ``event_outbox`` (送信箱): one row per emitted event, written in the transaction that made the change.
- ``event_inbox`` (受信箱): one row per (handler, event id) that took effect; its primary key is what
  turns at-least-once delivery into exactly-once effects.
- ``event_failure``: handlers that raised, with the error; a row with ``parked_at`` is quarantined
  (隔離) and waits for an operator, it is never dropped.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from kiban.core.database import Base, UTCDateTime

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets 64 bits (billions of events a year).
SEQ_TYPE = BigInteger().with_variant(Integer(), "sqlite")


class OutboxEvent(Base):
    """An emitted domain event waiting for (or done with) delivery.  # 送信箱の行"""

    __tablename__ = "event_outbox"

    seq: Mapped[int] = mapped_column(SEQ_TYPE, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    type: Mapped[str] = mapped_column(String(100))
    key: Mapped[str] = mapped_column(String(128))
    schema_version: Mapped[int] = mapped_column(Integer)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(String(100))
    # Embedded mode: every local handler has taken it (or parked it).
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Distributed mode: JetStream acknowledged it (PubAck).
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (
        Index("ix_event_outbox_key_seq", "key", "seq"),
        Index("ix_event_outbox_delivered_at_seq", "delivered_at", "seq"),
        Index("ix_event_outbox_published_at_seq", "published_at", "seq"),
    )


class InboxEntry(Base):
    """A handler has applied an event: written in the same transaction as the handler's effect."""

    __tablename__ = "event_inbox"

    handler: Mapped[str] = mapped_column(String(100), primary_key=True)
    # 64, not 36: a malformed message from NATS is recorded under a synthetic id (see nats_bus).
    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    handled_at: Mapped[datetime] = mapped_column(UTCDateTime())


class EventFailure(Base):
    """A handler failed on an event; parked (隔離) after too many attempts, with the event kept for replay."""

    __tablename__ = "event_failure"

    handler: Mapped[str] = mapped_column(String(100), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    attempts: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str] = mapped_column(Text)
    # The whole event as a document, so a parked event can be replayed where the outbox is not local.
    event: Mapped[dict[str, Any]] = mapped_column(JSON)
    first_failed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_failed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    parked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (Index("ix_event_failure_parked_at", "parked_at"),)
