"""Distributed mode, continued (issue 4): the initial load that travels, the national relay's extra
messages (registration conflicts to both municipalities, 異動等情報 to the CA) and the backlog gauges
in ``kiban serve``.

Two databases (the municipal one: ``session_maker``; the national one: ``national``) and a stream of
this test's own on the NATS at 127.0.0.1:4222 (fails under ``CI`` when unreachable, skips otherwise).
The nodes' loops run in this process (``run_consumer``/``run_relay`` with ``once``/``idle_exit``);
the two-process crash test is tests/test_network_distributed.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from kiban.cli.network import app as cli
from kiban.core.config import Settings
from kiban.core.events import DomainEvent, Registry, emit
from kiban.core.identifiers import IndividualNumberCipher, ResidentCodeGenerator
from kiban.core.models.events import OutboxEvent
from kiban.core.nats_bus import publish_pending, run_consumer, run_relay
from kiban.network.distributed import (
    CA_DURABLE,
    NATIONAL_TYPES,
    BacklogCollector,
    fetch_backlog,
    initial_load_events,
    municipal_durable,
    municipal_registry,
    national_registry,
    national_subjects,
    publish_initial_load,
    run_ca,
)
from kiban.network.models import NationalIdentity, PrefecturalIdentity, QuarantinedMessage
from kiban.network.service import apply_identity_change, apply_initial_load
from kiban.numbering import service as numbering
from kiban.register.loader import load_population
from kiban.register.models import Resident
from kiban.register.population import generate_population
from kiban.web.app import WebOptions, create_app
from test_network_distributed import (  # noqa: F401 - fixtures
    NATS_URL,
    _change,
    _FakeJetStream,
    national,
    national_template,
    national_url,
    net,
)

A = "131016"  # 千代田区
B = "212016"  # 岐阜市
MUNICIPAL_CIPHER = IndividualNumberCipher(bytes(range(32)))
NATIONAL_CIPHER = IndividualNumberCipher(bytes(range(32, 64)))
RESIDENTS = 40


@pytest.fixture
def town(engine: Engine, session_maker: sessionmaker[Session]) -> list[str]:
    """40 residents of 千代田区 loaded in bulk (no events); every other one already has a 個人番号."""
    households = list(generate_population([A], RESIDENTS, seed=31, as_of=date(2025, 4, 1)))
    with session_maker.begin() as s:
        codes = numbering.issue_resident_codes(s, RESIDENTS, ResidentCodeGenerator(random.Random(31)))
    load_population(engine, households, iter(codes))
    with session_maker.begin() as s:
        for code, number in numbering.assign_individual_numbers_bulk(s, codes[::2], MUNICIPAL_CIPHER).items():
            s.execute(update(Resident).where(Resident.resident_code == code).values(individual_number=number))
    return sorted(codes)


def _consume_up(national_db: sessionmaker[Session], stream: str, prefix: str) -> int:
    return asyncio.run(
        run_consumer(
            national_db,
            national_registry(NATIONAL_CIPHER),
            NATS_URL,
            stream,
            "national",
            subject_prefix=f"{prefix}.up",
            idle_exit=1.0,
        )
    )


def _relay_national(national_db: sessionmaker[Session], stream: str, prefix: str, rows: int) -> int:
    """The national relay until ``rows`` outbox rows are finished.

    (On PostgreSQL one relay per database holds an advisory lock; another test's relay on the same
    server makes a round return 0, so this retries for a while.)
    """
    total = 0
    for _ in range(100):
        total += asyncio.run(
            run_relay(
                national_db,
                NATS_URL,
                stream=stream,
                subject_prefix=prefix,
                types=NATIONAL_TYPES,
                subject=national_subjects(prefix),
                once=True,
            )
        )
        if total >= rows:
            break
        time.sleep(0.1)
    return total


def _subjects(stream: str, prefix: str) -> dict[str, int]:
    async def run() -> dict[str, int]:
        nc = await nats.connect(NATS_URL)
        info = await nc.jetstream().stream_info(stream, subjects_filter=f"{prefix}.>")
        await nc.close()
        return {k.removeprefix(prefix + "."): v for k, v in (info.state.subjects or {}).items()}

    return asyncio.run(run())


def test_the_initial_load_travels_in_chunks_once_and_resumes(
    town: list[str],
    session_maker: sessionmaker[Session],
    national: sessionmaker[Session],  # noqa: F811 - fixture
    net: tuple[str, str],  # noqa: F811 - fixture
) -> None:
    stream, prefix = net

    async def send(**kwargs: Any) -> list[Any]:
        load = publish_initial_load(
            session_maker, NATS_URL, [A], stream=stream, prefix=prefix, chunk=15, **kwargs
        )
        return [p async for p in load]

    first = asyncio.run(send())
    assert [(p.persons, p.duplicate) for p in first] == [(15, False), (15, False), (10, False)]
    assert first[-1].last_resident_code == town[-1]
    # Sent again, or resumed after the first chunk: the same chunks, dropped by JetStream.
    assert all(p.duplicate for p in asyncio.run(send()))
    resumed = asyncio.run(send(after=first[0].last_resident_code))
    assert [(p.persons, p.duplicate) for p in resumed] == [(15, True), (10, True)]
    assert _subjects(stream, prefix) == {f"up.{A}.network.initial_load": 3}

    # A load carrying more than 本人確認情報 (本籍) and a person of another municipality.
    with session_maker() as s:
        [chunk, *_] = initial_load_events(s, A, chunk=2)
    good, other = chunk.payload["persons"]
    hostile = DomainEvent(
        id=str(uuid.uuid4()),
        type="network.initial_load",
        key=A,
        schema_version=1,
        occurred_at=datetime.now(UTC),
        payload={
            "municipality_code": A,
            "persons": [{**good, "honseki": "架空県本籍市1番地"}, {**other, "municipality_code": B}],
        },
        source="test",
    )

    async def publish_raw() -> None:
        nc = await nats.connect(NATS_URL)
        await nc.jetstream().publish(
            f"{prefix}.up.{A}.network.initial_load", hostile.to_json(), stream=stream
        )
        await nc.close()

    asyncio.run(publish_raw())
    assert _consume_up(national, stream, prefix) == 4

    with session_maker() as s, national() as n:
        register = {
            r.resident_code: r for r in s.scalars(select(Resident).where(Resident.status == "active"))
        }
        copies = {c.resident_code: c for c in n.scalars(select(NationalIdentity))}
        assert set(copies) == set(register) == set(town)  # everyone once; the hostile chunk added nobody
        for code, c in copies.items():
            r = register[code]
            assert (c.version_no, c.is_current, c.reason, c.reason_ja, c.status) == (
                1,
                True,
                "initial_load",
                "初期登録",
                "active",
            )
            assert (c.family_name, c.given_name_kana, c.birth_date, c.sex) == (
                r.family_name,
                r.given_name_kana,
                r.birth_date,
                r.sex,
            )
            assert c.address.startswith(f"{r.prefecture}{r.municipality}{r.town}{r.banchi}")
            if r.individual_number is not None:
                assert c.individual_number == r.individual_number  # the number travelled as it was
        assert n.scalar(select(func.count()).select_from(PrefecturalIdentity)) == RESIDENTS
        # The unnumbered half got a 個人番号 from the national node, notified to the municipality once.
        notices = n.scalars(select(OutboxEvent).where(OutboxEvent.type == "numbering.number_assigned")).all()
        unnumbered = {c for c, r in register.items() if r.individual_number is None}
        assert {e.key for e in notices} == unnumbered and len(notices) == len(unnumbered) == RESIDENTS // 2
        assert all(copies[e.key].individual_number == e.payload["individual_number"] for e in notices)
        rules = sorted(q.rule for q in n.scalars(select(QuarantinedMessage)))
        assert rules == ["key_match", "not_identity_information"]
        kept = n.scalars(
            select(QuarantinedMessage).where(QuarantinedMessage.rule == "not_identity_information")
        )
        document = json.dumps(kept.one().document, ensure_ascii=False)
        assert "架空県本籍市" not in document and '"honseki": "<withheld>"' in document
        # Replayed straight to the handler: everybody is present, nothing changes.
        before = n.scalar(select(func.count()).select_from(NationalIdentity))
    with national.begin() as n:
        assert apply_initial_load(n, chunk).applied == 0
        with session_maker() as m:
            first_chunk = next(initial_load_events(m, A, chunk=15))
        again = apply_initial_load(n, first_chunk)
        assert (again.applied, again.present, again.quarantined) == (0, 15, 0)
        assert n.scalar(select(func.count()).select_from(NationalIdentity)) == before


def test_a_change_that_came_first_is_not_overwritten_by_the_load(
    town: list[str],
    session_maker: sessionmaker[Session],
    national: sessionmaker[Session],  # noqa: F811 - fixture
) -> None:
    code = town[0]
    with session_maker() as s:
        [chunk, *_] = initial_load_events(s, A, chunk=5)
    changed = _change(code, datetime.now(UTC), municipality_code=A, family_name="改名")
    with national.begin() as n:
        assert apply_identity_change(n, changed) == "applied"
        result = apply_initial_load(n, chunk)
        assert (result.applied, result.present) == (4, 1)
    with national() as n:
        [row] = n.scalars(select(NationalIdentity).where(NationalIdentity.resident_code == code)).all()
        assert row.family_name == "改名" and row.reason == "birth"


@pytest.mark.parametrize(
    ("payload", "rule"),
    [
        ({"municipality_code": A, "persons": "x"}, "required"),
        ({"municipality_code": A, "persons": [], "honseki": "x"}, "required"),
        ({"municipality_code": A, "persons": [{}] * 2001}, "length"),
    ],
)
def test_a_malformed_load_is_quarantined_whole(
    national: sessionmaker[Session],  # noqa: F811 - fixture
    payload: dict[str, Any],
    rule: str,
) -> None:
    event = DomainEvent(str(uuid.uuid4()), "network.initial_load", A, 1, datetime.now(UTC), payload, "test")
    with national.begin() as n:
        assert apply_initial_load(n, event).quarantined == 1
    with national() as n:
        [q] = n.scalars(select(QuarantinedMessage)).all()
        assert q.rule == rule and n.scalar(select(func.count()).select_from(NationalIdentity)) == 0


def test_the_initial_load_command_reports_chunks_and_refuses_bad_input(
    town: list[str],
    db_url: str,
    net: tuple[str, str],  # noqa: F811 - fixture
) -> None:
    stream, prefix = net
    runner = CliRunner()
    args = ["initial-load", "--db", db_url, "--nats", NATS_URL, "--stream", stream, "--prefix", prefix]
    result = runner.invoke(cli, [*args, "--municipality", A, "--chunk", "25"])
    assert result.exit_code == 0, result.output
    assert "sent 40 persons in 2 messages" in result.output and f"last={town[24]}" in result.output
    bad = runner.invoke(cli, [*args, "--municipality", "13101"])
    assert bad.exit_code == 2 and "municipality_code" in bad.output
    bad = runner.invoke(cli, [*args, "--municipality", A, "--chunk", "0"])
    assert bad.exit_code == 2 and "range" in bad.output


# --- the national relay: conflicts to both municipalities, 異動等情報 to the CA ------------------------


def test_national_subjects_send_a_conflict_to_both_and_a_change_to_the_ca(
    national: sessionmaker[Session],  # noqa: F811 - fixture
) -> None:
    code = ResidentCodeGenerator(random.Random(41)).generate()
    with national.begin() as n:
        assert apply_identity_change(
            n, _change(code, datetime(2026, 11, 1, tzinfo=UTC), municipality_code=A)
        ) == ("applied")
        assert apply_identity_change(n, _change(code, datetime(2026, 11, 2, tzinfo=UTC))) == "quarantined"
        rows = n.scalars(select(OutboxEvent).order_by(OutboxEvent.seq)).all()
    assert [r.type for r in rows] == ["network.identity_changed", "network.registration_conflict"]
    js = _FakeJetStream()
    relay = publish_pending(national, js, types=NATIONAL_TYPES, subject=national_subjects("kn"))
    assert asyncio.run(relay) == 2
    changed, conflict = rows
    assert js.sent == [
        (f"kn.ca.{A}.network.identity_changed", changed.event_id),
        (
            f"kn.down.{A}.network.registration_conflict",
            f"{conflict.event_id}@kn.down.{A}.network.registration_conflict",
        ),
        (
            f"kn.down.{B}.network.registration_conflict",
            f"{conflict.event_id}@kn.down.{B}.network.registration_conflict",
        ),
    ]
    odd = DomainEvent(
        str(uuid.uuid4()),
        "network.registration_conflict",
        code,
        1,
        datetime.now(UTC),
        {"notify": ["*", A]},
        "x",
    )
    assert national_subjects("kn")(odd) == [
        f"kn.down.{A}.network.registration_conflict",
        "kn.down.unknown.network.registration_conflict",
    ]


def test_the_relayed_conflict_reaches_both_municipal_nodes_and_the_change_the_ca(
    session_maker: sessionmaker[Session],
    national: sessionmaker[Session],  # noqa: F811 - fixture
    net: tuple[str, str],  # noqa: F811 - fixture
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream, prefix = net
    code = ResidentCodeGenerator(random.Random(42)).generate()
    with national.begin() as n:
        apply_identity_change(n, _change(code, datetime(2026, 11, 1, tzinfo=UTC), municipality_code=A))
        apply_identity_change(n, _change(code, datetime(2026, 11, 2, tzinfo=UTC)))
        emit(n, "numbering.letter_printed", code, {"municipality_code": A})  # stays on the national node
    assert (
        _relay_national(national, stream, prefix, 3) == 3
    )  # two sent (one to two subjects), one passed over
    assert _subjects(stream, prefix) == {
        f"ca.{A}.network.identity_changed": 1,
        f"down.{A}.network.registration_conflict": 1,
        f"down.{B}.network.registration_conflict": 1,
    }
    [waiting] = asyncio.run(fetch_backlog(NATS_URL, stream=stream, prefix=prefix, direction="ca"))
    assert (waiting.municipality_code, waiting.direction, waiting.pending) == (A, "ca", 1)

    # Each municipal node hears of the conflict on its own durable.
    caplog.set_level(logging.WARNING, logger="kiban.network.distributed")
    for m in (A, B):
        acked = asyncio.run(
            run_consumer(
                session_maker,
                municipal_registry(),
                NATS_URL,
                stream,
                municipal_durable(m),
                subject_prefix=f"{prefix}.down.{m}",
                idle_exit=0.5,
            )
        )
        assert acked == 1
    assert (
        sum("registration conflict" in r.getMessage() and code in r.getMessage() for r in caplog.records) >= 1
    )

    # The CA's durable applies the 異動等情報 with its handlers.
    seen: list[DomainEvent] = []
    registry = Registry()
    registry.add("network.identity_changed", "test.ca", lambda _s, e: seen.append(e))
    ca = run_ca(session_maker, NATS_URL, registry=registry, stream=stream, prefix=prefix, idle_exit=0.5)
    assert asyncio.run(ca) == 1
    assert [(e.type, e.key, e.payload["municipality_code"]) for e in seen] == [
        ("network.identity_changed", code, A)
    ]
    [after] = asyncio.run(fetch_backlog(NATS_URL, stream=stream, prefix=prefix, direction="ca"))
    assert after.pending == 0 and CA_DURABLE == "ca"


# --- kiban serve in distributed mode ----------------------------------------------------------------


def test_serve_in_distributed_mode_shows_the_backlog_gauges(
    db_url: str,
    tmp_path: Path,
    net: tuple[str, str],  # noqa: F811 - fixture
) -> None:
    def app_for(transport: str) -> Any:
        settings = Settings(
            data_dir=tmp_path / transport,
            database_url_override=db_url,
            event_transport=transport,
            nats_url=NATS_URL,
        )
        return create_app(settings, options=WebOptions(deliver_events=False), capabilities=[])

    app = app_for("nats")
    assert isinstance(app.state.network_backlog, BacklogCollector)
    with TestClient(app) as client:  # the lifespan starts (and stops) the refresh loop
        text = client.get("/metrics").text
    assert "kiban_network_backlog_messages" in text and "kiban_network_unpublished_events" in text
    embedded = app_for("embedded")
    assert embedded.state.network_backlog is None
    with TestClient(embedded) as client:
        assert "kiban_network_backlog_messages" not in client.get("/metrics").text


def test_serve_starts_and_stops_promptly_when_nats_is_away(db_url: str, tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url_override=db_url,
        event_transport="nats",
        nats_url="nats://127.0.0.1:1",  # nothing listens there
    )
    app = create_app(settings, options=WebOptions(deliver_events=False), capabilities=[])
    started = time.monotonic()
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == 200  # the last snapshot (empty), never a wait
    assert time.monotonic() - started < 15


def test_the_refresh_loop_reads_each_direction(
    national: sessionmaker[Session],  # noqa: F811 - fixture
    net: tuple[str, str],  # noqa: F811 - fixture
) -> None:
    stream, prefix = net
    code = ResidentCodeGenerator(random.Random(43)).generate()
    with national.begin() as n:
        apply_identity_change(n, _change(code, datetime(2026, 11, 1, tzinfo=UTC), municipality_code=A))
        apply_identity_change(n, _change(code, datetime(2026, 11, 2, tzinfo=UTC)))
    _relay_national(national, stream, prefix, 2)
    collector = BacklogCollector()

    async def one_round() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(
            collector.refresh(
                NATS_URL, stop, every=0.1, directions=("up", "down", "ca"), stream=stream, prefix=prefix
            )
        )
        await asyncio.sleep(0.5)
        stop.set()
        await task

    asyncio.run(one_round())
    found = {(b.municipality_code, b.direction): b.pending for b in collector.snapshot}
    assert found == {(A, "down"): 1, (B, "down"): 1, (A, "ca"): 1}
    assert all(b.oldest_age is not None and b.oldest_age < timedelta(minutes=5) for b in collector.snapshot)


# --- a birth in distributed mode, over the stream ----------------------------------------------------


def test_a_birth_over_the_stream_gets_its_number_from_the_national_node(
    town: list[str],
    session_maker: sessionmaker[Session],
    national: sessionmaker[Session],  # noqa: F811 - fixture
    net: tuple[str, str],  # noqa: F811 - fixture
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from kiban.network.distributed import UP_TYPES, up_subject
    from kiban.register import service
    from kiban.register.schemas import Actor, Birth, PersonData

    stream, prefix = net
    monkeypatch.setenv("KIBAN_EVENT_TRANSPORT", "nats")
    monkeypatch.setenv("KIBAN_DATA_DIR", str(tmp_path / "municipal"))  # no number key here
    with session_maker() as s:
        mother = s.scalars(select(Resident).where(Resident.sex == 2).order_by(Resident.resident_code)).first()
        assert mother is not None
    person = PersonData(
        family_name="山田", given_name="花子", family_name_kana="ヤマダ", given_name_kana="ハナコ", sex=2
    )
    birth = Birth(
        notified_on=date(2026, 11, 24),
        effective_on=date(2026, 11, 22),
        person=person,
        household_of=mother.resident_code,
    )
    with session_maker.begin() as s:
        result = service.birth(
            s,
            Actor(username="clerk-a", municipality_code=A),
            birth,
            today=date(2026, 11, 25),
            generator=ResidentCodeGenerator(random.Random(44)),
        )
    code = result.records[0].resident_code

    async def municipal_relay() -> int:
        return await run_relay(
            session_maker,
            NATS_URL,
            stream=stream,
            subject_prefix=prefix,
            types=UP_TYPES,
            subject=up_subject(prefix),
            once=True,
        )

    sent = 0
    for _ in range(100):  # (another test's relay may hold PostgreSQL's relay lock for a moment)
        sent += asyncio.run(municipal_relay())
        if sent:
            break
        time.sleep(0.1)
    assert _subjects(stream, prefix) == {f"up.{A}.register.identity_changed": 1}
    assert _consume_up(national, stream, prefix) == 1
    # The national node numbered the new person and sends the notice down (and the 異動等情報 to the CA).
    assert _relay_national(national, stream, prefix, 2) >= 2
    acked = asyncio.run(
        run_consumer(
            session_maker,
            municipal_registry(),
            NATS_URL,
            stream,
            municipal_durable(A),
            subject_prefix=f"{prefix}.down.{A}",
            idle_exit=0.5,
        )
    )
    assert acked == 1
    with session_maker() as s, national() as n:
        child = s.scalars(select(Resident).where(Resident.resident_code == code)).one()
        copy = n.scalars(
            select(NationalIdentity).where(
                NationalIdentity.resident_code == code, NationalIdentity.is_current
            )
        ).one()
        assert child.individual_number is not None and child.individual_number == copy.individual_number
        # The municipal node made no number: its only notice is the one that came down.
        assert not s.scalars(select(OutboxEvent).where(OutboxEvent.type == "numbering.number_assigned")).all()
    assert not (tmp_path / "municipal" / "keys" / "numbering.key").exists()


def test_backlog_with_nats_unreachable_is_a_clear_refusal() -> None:
    from typer.testing import CliRunner

    from kiban.cli.network import app as network_app

    result = CliRunner().invoke(network_app, ["backlog", "--nats", "nats://127.0.0.1:1"])
    assert result.exit_code == 1 and "nats_reachable" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
