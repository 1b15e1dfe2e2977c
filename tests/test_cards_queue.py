"""Backlog (SPEC K4): queues show their depth and, after a consumer outage, drain in order without loss
or duplicates (stop the consumer, enqueue 10,000 messages, restart — with a crash in the middle)."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from kiban.cards import service
from kiban.cards.models import QueueMessage, Transition
from kiban.cards.queue import QueueError, drain_queue

N = 10_000


def apply_message(session: Session, message: QueueMessage) -> None:
    # The effect is a row whose request_id is the message id (unique): a duplicate would fail.
    session.add(
        Transition(
            card_id=message.key,
            from_state=None,
            to_state="shipped",
            at=message.enqueued_at,
            actor="test-consumer",
            request_id=message.message_id,
        )
    )


@pytest.mark.slow
def test_outage_then_drain_in_order_without_loss_or_duplicates(session_maker: sessionmaker[Session]) -> None:
    # the consumer is down: 10,000 messages pile up
    with session_maker.begin() as s:
        for i in range(N):
            service.enqueue(s, service.MUNICIPALITY_QUEUE, "arrive", f"{i:012d}", {"n": i})
    with session_maker() as s:
        assert service.queue_depths(s) == {"manufacturer": 0, "municipality": N}
    # it comes back, drains part, and crashes on one message
    assert (
        drain_queue(session_maker, service.MUNICIPALITY_QUEUE, {"arrive": apply_message}, max_messages=3_000)
        == 3_000
    )
    crashed = {"done": False}

    def flaky(session: Session, message: QueueMessage) -> None:
        if message.payload["n"] == 5_555 and not crashed["done"]:
            crashed["done"] = True
            raise RuntimeError("consumer crashed")
        apply_message(session, message)

    with pytest.raises(QueueError, match="consumer crashed"):
        drain_queue(session_maker, service.MUNICIPALITY_QUEUE, {"arrive": flaky}, chunk=500)
    with session_maker() as s:
        depth = service.queue_depths(s)["municipality"]
        assert depth == N - 5_500  # the chunk with the bad message was rolled back whole
    # restart: the rest drains
    assert drain_queue(session_maker, service.MUNICIPALITY_QUEUE, {"arrive": flaky}, chunk=500) == depth
    with session_maker() as s:
        assert service.queue_depths(s)["municipality"] == 0
        keys = list(s.scalars(select(Transition.card_id).order_by(Transition.id)))
        assert keys == [f"{i:012d}" for i in range(N)]  # every message once, in order
    # nothing left: a further run does nothing
    assert drain_queue(session_maker, service.MUNICIPALITY_QUEUE, {"arrive": apply_message}) == 0


def test_unknown_kind_stops_the_queue(session_maker: sessionmaker[Session]) -> None:
    with session_maker.begin() as s:
        service.enqueue(s, service.MANUFACTURER_QUEUE, "mystery", "X", {})
    with pytest.raises(QueueError, match="no handler"):
        drain_queue(session_maker, service.MANUFACTURER_QUEUE, {})
    with session_maker() as s:
        assert service.queue_depths(s)["manufacturer"] == 1
