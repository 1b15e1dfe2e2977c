"""Queues to the manufacturer and to municipalities (SPEC K4 "Backlog").

Messages live in ``cards_queue`` (written in the producer's transaction, like the event outbox),
and a consumer takes them strictly in ``seq`` order. Each chunk of messages is applied and marked
``consumed_at`` in one transaction, so a consumer that stops (crash, outage, deploy) at any point
leaves every message either fully applied or untouched: after a restart it drains the backlog in
order, without loss and without duplicates. One consumer per queue (a second would interleave);
a message whose handler raises stops its queue there (order over progress: the next production
step of a card must not overtake the previous one) and the error is raised to the operator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from kiban.cards.models import QueueMessage
from kiban.core.database import utcnow

Handler = Callable[[Session, QueueMessage], None]


class QueueError(RuntimeError):
    """A message could not be applied; its queue stops there until the cause is fixed."""


def drain_queue(
    factory: sessionmaker[Session],
    queue: str,
    handlers: Mapping[str, Handler],
    *,
    chunk: int = 200,
    max_messages: int | None = None,
    now: Callable[[], datetime] = utcnow,
) -> int:
    """Apply pending messages of ``queue`` in order; returns how many were consumed."""
    done = 0
    while max_messages is None or done < max_messages:
        size = chunk if max_messages is None else min(chunk, max_messages - done)
        with factory.begin() as session:
            messages = list(
                session.scalars(
                    select(QueueMessage)
                    .where(QueueMessage.queue == queue, QueueMessage.consumed_at.is_(None))
                    .order_by(QueueMessage.seq)
                    .limit(size)
                    .with_for_update()
                )
            )
            if not messages:
                break
            for message in messages:
                handler = handlers.get(message.kind)
                if handler is None:
                    raise QueueError(f"{queue} message {message.seq}: no handler for kind {message.kind!r}")
                try:
                    handler(session, message)
                except Exception as exc:
                    raise QueueError(
                        f"{queue} message {message.seq} ({message.kind} {message.key}): {exc}"
                    ) from exc
                message.consumed_at = now()
            done += len(messages)
    return done
