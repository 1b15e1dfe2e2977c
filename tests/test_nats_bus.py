"""Distributed events over a real NATS JetStream: relay and consumer survive SIGKILL, nothing lost or doubled.

Needs the NATS server on 127.0.0.1:4222 (``KIBAN_TEST_NATS_URL`` overrides). Unreachable NATS fails
the tests when ``CI`` is set and skips them otherwise. Every test makes its own stream and subject
prefix and deletes them afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from kiban.core.database import utcnow
from kiban.core.events import DomainEvent, emit, parked
from kiban.core.models.events import EventFailure, InboxEntry, OutboxEvent
from kiban.core.nats_bus import (
    consumer_handler_name,
    ensure_stream,
    publish_pending,
    run_consumer,
    subject_for,
)
from procs import ledger

pytestmark = pytest.mark.nats

NATS_URL = os.environ.get("KIBAN_TEST_NATS_URL", "nats://127.0.0.1:4222")
PROCS = Path(__file__).parent / "procs"
SRC = Path(__file__).parent.parent / "src"
RELAY_BATCH = 100


@dataclass(frozen=True)
class Stream:
    name: str
    prefix: str


async def _reachable(url: str) -> bool:
    async def quiet(_exc: Exception) -> None:
        pass

    try:
        # nats-py keeps retrying a refused first connect: bound it from outside.
        nc = await asyncio.wait_for(
            nats.connect(url, connect_timeout=1, allow_reconnect=False, error_cb=quiet), timeout=2
        )
    except Exception:
        return False
    await nc.close()
    return True


def require_nats(url: str) -> None:
    """Skip when NATS is unreachable; under CI, fail instead (a missing service is a broken build)."""
    if not asyncio.run(_reachable(url)):
        message = f"NATS JetStream is not reachable at {url}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def stream() -> Iterator[Stream]:
    require_nats(NATS_URL)
    tag = uuid.uuid4().hex[:10]
    made = Stream(name=f"KIBAN_TEST_{tag}", prefix=f"kt{tag}")

    async def create() -> None:
        nc = await nats.connect(NATS_URL)
        await ensure_stream(nc.jetstream(), made.name, made.prefix)
        await nc.close()

    async def delete() -> None:
        nc = await nats.connect(NATS_URL)
        await nc.jetstream().delete_stream(made.name)
        await nc.close()

    asyncio.run(create())
    yield made
    asyncio.run(delete())


@pytest.fixture
def ledger_tables(engine: Engine) -> Iterator[None]:
    ledger.create(engine)
    yield
    ledger.drop(engine)


def _emit_counted(factory: sessionmaker[Session], keys: list[str]) -> dict[str, int]:
    per_key: dict[str, int] = {}
    with factory() as s, s.begin():
        for key in keys:
            per_key[key] = per_key.get(key, 0) + 1
            emit(s, ledger.EVENT_TYPE, key, {"n": per_key[key]})
    return per_key


def _scalar(factory: sessionmaker[Session], statement: object) -> int:
    with factory() as s:
        return int(s.scalar(statement) or 0)  # type: ignore[call-overload]


def _published(factory: sessionmaker[Session]) -> int:
    return _scalar(factory, select(func.count()).where(OutboxEvent.published_at.is_not(None)))


def _applied(factory: sessionmaker[Session]) -> int:
    with factory() as s:
        return ledger.count(s)


def _wait_for(condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _assert_exactly_once_in_order(factory: sessionmaker[Session], per_key: dict[str, int]) -> None:
    with factory() as s:
        rows = ledger.rows(s)
    got: dict[str, list[int]] = {}
    for _id, key, n, _eid, _ok in rows:
        got.setdefault(key, []).append(n)
    assert got == {key: list(range(1, count + 1)) for key, count in per_key.items()}
    assert len({eid for *_r, eid, _ok in rows}) == len(rows)
    assert all(ok for *_rest, ok in rows)


async def _stream_messages(name: str) -> int:
    nc = await nats.connect(NATS_URL)
    info = await nc.jetstream().stream_info(name)
    await nc.close()
    return info.state.messages


class StreamWatch:
    """Reads a stream's message count from the test's thread (a private event loop)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop = asyncio.new_event_loop()

    def __enter__(self) -> StreamWatch:
        self.nc = self.loop.run_until_complete(nats.connect(NATS_URL))
        self.js = self.nc.jetstream()
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.run_until_complete(self.nc.close())
        self.loop.close()

    def messages(self) -> int:
        info = self.loop.run_until_complete(self.js.stream_info(self.name))
        return info.state.messages


class Proc:
    """A ``python -m kiban.core.nats_bus`` subprocess with its log kept for failure messages."""

    def __init__(self, tmp_path: Path, label: str, args: list[str]) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(PROCS), str(SRC), env.get("PYTHONPATH", "")])
        self.log_path = tmp_path / f"{label}.log"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kiban.core.nats_bus", *args], env=env, stdout=self._log, stderr=self._log
        )

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=15)
        self._log.close()
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


def test_two_processes_survive_sigkill_with_nothing_lost_or_doubled(
    db_url: str, session_maker: sessionmaker[Session], ledger_tables: None, stream: Stream, tmp_path: Path
) -> None:
    rng = random.Random(20261125)
    keys = [f"{rng.randrange(10**10, 10**11)}" for _ in range(50)]  # 住民票コード-shaped keys
    order = [key for key in keys for _ in range(40)]
    rng.shuffle(order)
    total = len(order)  # 2,000
    per_key = _emit_counted(session_maker, order)
    common = [
        "--db",
        db_url,
        "--nats-url",
        NATS_URL,
        "--stream",
        stream.name,
        "--subject-prefix",
        stream.prefix,
    ]
    relay_args = ["relay", *common, "--batch", str(RELAY_BATCH), "--pause", "0.05", "--no-create-stream"]
    consume_args = [
        "consume",
        *common,
        "--registry",
        "ledger:REGISTRY",
        "--durable",
        "ledger",
        "--batch",
        "50",
    ]
    procs: list[Proc] = []

    def start(label: str, args: list[str]) -> Proc:
        proc = Proc(tmp_path, label, args)
        procs.append(proc)
        return proc

    try:
        consumer = start("consumer-1", consume_args)
        relay = start("relay-1", relay_args)

        # The relay dies mid-batch: events are in the stream that its outbox rows do not say so.
        with StreamWatch(stream.name) as watch:
            _wait_for(
                lambda: (n := watch.messages()) >= 300 and 20 <= n % RELAY_BATCH <= 80,
                30,
                "the relay to be in the middle of a batch",
                poll=0.002,
            )
            relay.kill()
            in_stream, marked = watch.messages(), _published(session_maker)
        assert marked < in_stream < total, (marked, in_stream)
        relay = start("relay-2", relay_args)

        # The consumer dies mid-stream: some events applied, not all.
        _wait_for(lambda: _applied(session_maker) >= 800, 30, "the consumer to apply 800 events")
        consumer.kill()
        applied_at_kill = _applied(session_maker)
        assert applied_at_kill < total, "the consumer finished before it could be killed"
        consumer = start("consumer-2", consume_args)

        _wait_for(lambda: _applied(session_maker) >= total, 40, f"all {total} events to be applied")
        _wait_for(lambda: _published(session_maker) == total, 10, "the relay to mark every row")
        time.sleep(0.5)  # room for a duplicate to show up, if there were one
        assert relay.stop() == 0, relay.log()
        assert consumer.stop() == 0, consumer.log()
        if os.environ.get("KIBAN_SHOW_PROC_LOGS"):
            for proc in procs:
                print(proc.log_path.name, proc.log(), sep="\n")
    except BaseException:
        for proc in procs:
            if proc.proc.poll() is None:
                proc.kill()
        raise

    assert _applied(session_maker) == total
    _assert_exactly_once_in_order(session_maker, per_key)
    assert _scalar(session_maker, select(func.count()).select_from(InboxEntry)) == total
    with session_maker() as s:
        assert parked(s) == []
    # Nats-Msg-Id dropped whatever the killed relay sent again: one message per event in the stream.
    assert asyncio.run(_stream_messages(stream.name)) == total


def test_relay_republishing_after_a_crash_stores_each_event_once(
    session_maker: sessionmaker[Session], stream: Stream
) -> None:
    with session_maker() as s, s.begin():
        events = [emit(s, "register.identity_changed", f"1000000000{i}", {"i": i}) for i in range(10)]

    async def scenario() -> int:
        nc = await nats.connect(NATS_URL)
        js = nc.jetstream()
        # A relay published the first four and died before marking them.
        for event in events[:4]:
            await js.publish(
                subject_for(stream.prefix, event.type), event.to_json(), headers={"Nats-Msg-Id": event.id}
            )
        sent = await publish_pending(session_maker, js, stream=stream.name, subject_prefix=stream.prefix)
        again = await publish_pending(session_maker, js, stream=stream.name, subject_prefix=stream.prefix)
        info = await js.stream_info(stream.name)
        await nc.close()
        assert again == 0
        return sent * 1000 + info.state.messages

    assert asyncio.run(scenario()) == 10 * 1000 + 10
    assert _published(session_maker) == 10


def _consume_until(
    session_maker: sessionmaker[Session], stream: Stream, durable: str, done: Callable[[], bool]
) -> int:
    async def scenario() -> int:
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_consumer(
                session_maker,
                ledger.REGISTRY,
                NATS_URL,
                stream.name,
                durable,
                subject_prefix=stream.prefix,
                batch=20,
                fetch_timeout=0.2,
                stop=stop,
            )
        )
        deadline = time.monotonic() + 20
        while not done() and time.monotonic() < deadline and not task.done():
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # let anything extra arrive
        stop.set()
        return await task

    return asyncio.run(scenario())


def test_the_same_event_published_twice_is_applied_once(
    session_maker: sessionmaker[Session], ledger_tables: None, stream: Stream
) -> None:
    per_key = _emit_counted(session_maker, ["K1", "K2", "K1"])
    with session_maker() as s:
        first = s.scalars(select(OutboxEvent).order_by(OutboxEvent.seq)).first()
        assert first is not None
        replayed = DomainEvent(
            id=first.event_id,
            type=first.type,
            key=first.key,
            schema_version=first.schema_version,
            occurred_at=first.occurred_at,
            payload=first.payload,
            source=first.source,
        )

    async def publish() -> None:
        nc = await nats.connect(NATS_URL)
        js = nc.jetstream()
        assert await publish_pending(session_maker, js, stream=stream.name, subject_prefix=stream.prefix) == 3
        subject = subject_for(stream.prefix, replayed.type)
        # Within the duplicate window JetStream drops it; a replay after the window gets stored…
        ack = await js.publish(subject, replayed.to_json(), headers={"Nats-Msg-Id": replayed.id})
        assert ack.duplicate
        await js.publish(subject, replayed.to_json(), headers={"Nats-Msg-Id": f"replay-{replayed.id}"})
        await nc.close()

    asyncio.run(publish())
    assert asyncio.run(_stream_messages(stream.name)) == 4
    # …and the inbox makes it a no-op.
    acked = _consume_until(session_maker, stream, "replay", lambda: _applied(session_maker) >= 3)
    assert acked == 4
    assert _applied(session_maker) == 3
    _assert_exactly_once_in_order(session_maker, per_key)


def test_malformed_messages_are_quarantined_and_the_stream_goes_on(
    session_maker: sessionmaker[Session], ledger_tables: None, stream: Stream
) -> None:
    good = DomainEvent(
        id=str(uuid.uuid4()),
        type=ledger.EVENT_TYPE,
        key="K1",
        schema_version=1,
        occurred_at=utcnow(),
        payload={"n": 1},
        source="node-a",
    )
    bad_type = {**good.to_document(), "id": str(uuid.uuid4()), "type": "Not A Type"}

    async def publish() -> None:
        nc = await nats.connect(NATS_URL)
        js = nc.jetstream()
        subject = subject_for(stream.prefix, ledger.EVENT_TYPE)
        await js.publish(subject, b"\xff not json", headers={"Nats-Msg-Id": "garbage-1"})
        await js.publish(subject, b"")
        await js.publish(subject, json.dumps(bad_type).encode())
        await js.publish(subject, good.to_json(), headers={"Nats-Msg-Id": good.id})
        await nc.close()

    asyncio.run(publish())
    acked = _consume_until(session_maker, stream, "quarantine", lambda: _applied(session_maker) >= 1)
    assert acked == 4
    assert _applied(session_maker) == 1
    with session_maker() as s:
        quarantined = s.scalars(select(EventFailure).order_by(EventFailure.first_failed_at)).all()
    assert [q.handler for q in quarantined] == [consumer_handler_name("quarantine")] * 3
    assert all(q.parked_at is not None for q in quarantined)
    errors = sorted(q.last_error.split(":")[0] for q in quarantined)
    assert errors == ["event", "event", "type"]
    assert quarantined[0].event_id == "garbage-1"


def test_unreachable_nats_fails_under_ci_and_skips_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    nowhere = "nats://127.0.0.1:9"  # discard port: nothing listens
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="not reachable"):
        require_nats(nowhere)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="not reachable"):
        require_nats(nowhere)
