"""Backlog (SPEC K4): queues show their depth and, after a consumer outage, drain in order without loss
or duplicates (stop the consumer, enqueue 10,000 messages, restart — with a crash in the middle)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cards_support import CLERK, OPERATOR, A, adults, form, registry, world  # noqa: I001 - tests/ is on the path
from kiban.cards import manufacturer, service, storage
from kiban.cards.models import QueueMessage, Transition
from kiban.cards.queue import QueueError, drain_queue
from kiban.cards.service import Application

N = 10_000
__all__ = ["registry", "world"]  # fixtures used by name


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


def test_consumers_run_as_their_own_processes(
    world: list[str],
    session_maker: sessionmaker[Session],
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The manufacturer and the receiving desk as `python -m kiban.cards.manufacturer` entry points."""
    monkeypatch.setenv("KIBAN_DATABASE_URL", db_url)
    with session_maker.begin() as s:
        code = adults(s)[0].resident_code
        card = service.apply(s, CLERK, Application(form(s, code)))
        service.check(s, OPERATOR, card.card_id)
        service.order_production(s, OPERATOR)
        card_id = card.card_id
    assert manufacturer.main(["--data", str(tmp_path), "--once", "--algorithm", "p256"]) == 0
    assert (storage.shipped_dir(tmp_path) / A / f"{card_id}.kcard").is_file()
    with session_maker() as s:
        assert service.get_card(s, card_id).state == "produced"
        assert service.queue_depths(s) == {"manufacturer": 0, "municipality": 1}
    assert manufacturer.main(["--data", str(tmp_path), "--role", "municipality", "--once"]) == 0
    with session_maker() as s:
        assert service.get_card(s, card_id).state == "shipped"
