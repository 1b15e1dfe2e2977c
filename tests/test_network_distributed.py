"""Distributed mode (issue 4 item 1): municipal and national nodes as processes linked by NATS JetStream.

The municipal node (its own database: the register) relays the 本人確認情報 events; the national
node (its own database: the copies, the DV measures, the 個人番号) applies them and sends the numbers
it assigns back down. A few thousand register changes stream through; the national process is
SIGKILLed mid-stream and restarted; both copies then hold exactly the municipal register's changes
(each once, in order per 住民票コード). Malformed and out-of-order messages published straight to the
subject end in quarantine with a reason.

Needs NATS on 127.0.0.1:4222 (``KIBAN_TEST_NATS_URL``): fails under ``CI``, skips otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nats
import pytest
from sqlalchemy import func, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from kiban.cli.network import app as cli
from kiban.core.database import import_all_models, make_engine, session_factory, upgrade
from kiban.core.events import DomainEvent, emit, row_to_event
from kiban.core.identifiers import IndividualNumberCipher, ResidentCodeGenerator
from kiban.core.models.events import EventFailure, InboxEntry, OutboxEvent
from kiban.core.nats_bus import consumer_handler_name, publish_pending
from kiban.network.distributed import (
    UP_TYPES,
    NationalNumbering,
    check_prefix,
    down_subject,
    fetch_backlog,
    unpublished_by_municipality,
    up_subject,
)
from kiban.network.models import (
    NationalIdentity,
    PrefecturalIdentity,
    QuarantinedMessage,
    RestrictionCopy,
    RestrictionSet,
)
from kiban.network.service import apply_identity_change
from kiban.numbering import service as numbering
from kiban.numbering.models import IndividualNumber
from kiban.register import service
from kiban.register.loader import load_population
from kiban.register.models import MoveOutCertificate, Resident, Restriction
from kiban.register.population import generate_population
from kiban.register.schemas import (
    Actor,
    Address,
    HouseholdChoice,
    LiftRestriction,
    MoveIn,
    MoveInPerson,
    MoveOut,
    NameChange,
    Relocation,
    SetRestriction,
    Target,
)

NATS_URL = os.environ.get("KIBAN_TEST_NATS_URL", "nats://127.0.0.1:4222")
SRC = Path(__file__).parent.parent / "src"
PG_URL = os.environ.get("KIBAN_TEST_DATABASE_URL", "")
A = "131016"  # 千代田区 (東京都)
B = "212016"  # 岐阜市 (岐阜県)
TODAY = date(2026, 11, 25)
MUNICIPAL_CIPHER = IndividualNumberCipher(bytes(range(32)))  # numbers the register already had
FAMILY_NAMES = [("佐藤", "サトウ"), ("鈴木", "スズキ"), ("髙橋", "タカハシ"), ("伊藤", "イトウ")]
TOWNS = {A: ["丸の内", "神田神保町", "麹町"], B: ["長良", "加納", "柳津町"]}


# --- infrastructure ---------------------------------------------------------------------------------


async def _reachable(url: str) -> bool:
    async def quiet(_exc: Exception) -> None:
        pass

    try:
        nc = await asyncio.wait_for(
            nats.connect(url, connect_timeout=1, allow_reconnect=False, error_cb=quiet), timeout=2
        )
    except Exception:
        return False
    await nc.close()
    return True


@pytest.fixture
def net() -> Iterator[tuple[str, str]]:
    """A stream and subject prefix of this test's own (deleted afterwards)."""
    if not asyncio.run(_reachable(NATS_URL)):
        message = f"NATS JetStream is not reachable at {NATS_URL}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    tag = uuid.uuid4().hex[:10]
    yield f"KIBAN_NET_TEST_{tag}", f"kn{tag}"

    async def delete() -> None:
        nc = await nats.connect(NATS_URL)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await nc.jetstream().delete_stream(f"KIBAN_NET_TEST_{tag}")
        await nc.close()

    asyncio.run(delete())


@pytest.fixture(scope="session")
def national_template(migrated_template: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The national node's database: a second migrated SQLite file or PostgreSQL schema.

    (Beside the municipal one, ``migrated_template``: which also keeps these tests in the PG run.)
    """
    if PG_URL.startswith("postgresql"):
        schema = f"kn_{uuid.uuid4().hex[:12]}"
        admin = make_engine(PG_URL)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        parsed = make_url(PG_URL)
        url = parsed.set(query={**parsed.query, "options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
        upgrade(url)
        yield url
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    else:
        path = tmp_path_factory.mktemp("national") / "national.sqlite"
        url = f"sqlite:///{path}"
        upgrade(url)
        yield url


@pytest.fixture
def national_url(national_template: str, tmp_path: Path) -> str:
    if national_template.startswith("postgresql"):
        engine = make_engine(national_template)
        present = set(inspect(engine).get_table_names())
        names = ", ".join(f'"{t.name}"' for t in import_all_models().sorted_tables if t.name in present)
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        engine.dispose()
        return national_template
    target = tmp_path / "national.sqlite"
    shutil.copyfile(make_url(national_template).database or "", target)
    return f"sqlite:///{target}"


@pytest.fixture
def national(national_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(national_url)
    yield session_factory(engine)
    engine.dispose()


class Node:
    """``python -m kiban.cli.network <role> …`` as a subprocess, its log kept for failure messages."""

    def __init__(self, tmp_path: Path, label: str, args: list[str]) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
        env["KIBAN_DATA_DIR"] = str(tmp_path / "data")
        self.label = label
        self.log_path = tmp_path / f"{label}.log"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kiban.cli.network", *args], env=env, stdout=self._log, stderr=self._log
        )

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=20)
        self._log.close()
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def _wait_for(
    condition: Callable[[], bool], timeout: float, what: str, nodes: list[Node], poll: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        for node in nodes:
            if node.proc.poll() is not None and node.proc.returncode not in (0, -signal.SIGKILL):
                raise AssertionError(f"{node.label} exited {node.proc.returncode}:\n{node.log()}")
        time.sleep(poll)
    logs = "\n".join(f"--- {n.label}\n{n.log()}" for n in nodes)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")


def _count(factory: sessionmaker[Session], model: Any, *where: Any) -> int:
    with factory() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def _gauge(direction: str, municipality: str) -> str:
    return f'kiban_network_backlog_messages{{direction="{direction}",municipality="{municipality}"}} 0.0'


def _drained(port: int, direction: str) -> bool:
    text = _scrape(port)
    return all(_gauge(direction, m) in text for m in (A, B))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the municipal register -------------------------------------------------------------------------


def _world(engine: Any, factory: sessionmaker[Session], residents: int) -> tuple[list[str], set[str]]:
    """Residents of 千代田区 and 岐阜市; every 12th has no 個人番号 yet (the national role will give it)."""
    households = list(generate_population([A, B], residents, seed=21, as_of=date(2025, 4, 1)))
    with factory.begin() as s:
        codes = numbering.issue_resident_codes(s, residents, ResidentCodeGenerator(random.Random(21)))
        unnumbered = set(codes[::12])
        numbers = numbering.assign_individual_numbers_bulk(
            s, [c for c in codes if c not in unnumbered], MUNICIPAL_CIPHER
        )
    load_population(engine, households, iter(codes), numbers.get)
    return codes, unnumbered


def _households(factory: sessionmaker[Session]) -> dict[str, dict[Any, list[str]]]:
    out: dict[str, dict[Any, list[str]]] = {A: {}, B: {}}
    with factory() as s:
        for municipality, hid, code in s.execute(
            select(Resident.municipality_code, Resident.household_id, Resident.resident_code).where(
                Resident.status == "active"
            )
        ):
            out[municipality].setdefault(hid, []).append(code)
    return out


def _changes(
    households: dict[Any, list[str]], municipality: str, n: int, rng: random.Random, first: list[str]
) -> list[NameChange | Relocation]:
    """``n`` register changes (氏名変更, whole-household 転居), starting with name changes of ``first``."""
    keys = list(households)
    commands: list[NameChange | Relocation] = []
    for i in range(n):
        day = TODAY - timedelta(days=rng.randrange(1, 300))
        dates: dict[str, Any] = {
            "notified_on": day,
            "effective_on": day - timedelta(days=rng.randrange(0, 14)),
        }
        if i < len(first) or i % 2 == 0:
            family, kana = rng.choice(FAMILY_NAMES)
            code = first[i] if i < len(first) else rng.choice(households[rng.choice(keys)])
            commands.append(
                NameChange(
                    **dates,
                    target=Target(resident_code=code),
                    family_name=family,
                    family_name_kana=kana,
                    keep_old_family_name=rng.random() < 0.5,
                    reason="婚姻",
                )
            )
        else:
            members = households[rng.choice(keys)]
            commands.append(
                Relocation(
                    **dates,
                    targets=[Target(resident_code=code) for code in members],
                    address=Address(
                        town=rng.choice(TOWNS[municipality]),
                        banchi=f"{rng.randrange(1, 30)}-{rng.randrange(1, 20)}",
                    ),
                )
            )
    return commands


def _apply_round(
    factory: sessionmaker[Session],
    households: dict[str, dict[Any, list[str]]],
    per_municipality: int,
    rng: random.Random,
    first: dict[str, list[str]],
) -> None:
    for municipality in (A, B):
        commands = _changes(
            households[municipality], municipality, per_municipality, rng, first[municipality]
        )
        with factory.begin() as s:
            service.apply_batch(
                s,
                Actor(username=f"clerk-{municipality}", municipality_code=municipality),
                commands,
                today=TODAY,
            )


def _restrict(factory: sessionmaker[Session], code: str, municipality: str, *, lift: bool = False) -> None:
    clerk = Actor(username=f"clerk-{municipality}", municipality_code=municipality)
    with factory.begin() as s:
        if lift:
            service.lift_restriction(
                s, clerk, LiftRestriction(resident_code=code, reason="終了", lifted_on=TODAY), today=TODAY
            )
        else:
            service.set_restriction(
                s,
                clerk,
                SetRestriction(
                    resident_code=code, reason="DV", starts_on=TODAY, ends_on=TODAY + timedelta(365)
                ),
                today=TODAY,
            )


def _move_out(factory: sessionmaker[Session], code: str) -> None:
    """転出 from 千代田区 to 岐阜市: the 転出証明書情報 goes through the national node."""
    with factory.begin() as s:
        service.move_out(
            s,
            Actor(username=f"clerk-{A}", municipality_code=A),
            MoveOut(
                notified_on=TODAY - timedelta(days=3),
                effective_on=TODAY - timedelta(days=1),
                targets=[Target(resident_code=code)],
                destination_municipality_code=B,
                destination_address="岐阜県岐阜市大宮町1番地",
            ),
            today=TODAY,
        )


def _move_in(factory: sessionmaker[Session], code: str) -> None:
    with factory.begin() as s:
        person = s.scalars(select(Resident).where(Resident.resident_code == code)).one()
        service.move_in(
            s,
            Actor(username=f"clerk-{B}", municipality_code=B),
            MoveIn(
                notified_on=TODAY,
                effective_on=TODAY - timedelta(days=1),
                persons=[
                    MoveInPerson(
                        resident_code=code,
                        family_name=person.family_name,
                        given_name=person.given_name,
                        birth_date=person.birth_date,
                        sex=1 if person.sex == 1 else 2,
                    )
                ],
                address=Address(town="大宮町", banchi="1番地"),
                household=HouseholdChoice(),
            ),
            today=TODAY,
        )


def _certificates(factory: sessionmaker[Session], code: str) -> set[tuple[str, str, str]]:
    with factory() as s:
        rows = s.scalars(select(MoveOutCertificate).where(MoveOutCertificate.resident_code == code))
        return {(r.role, r.holder_municipality_code, r.status) for r in rows}


# --- the test ---------------------------------------------------------------------------------------


@pytest.mark.nats
@pytest.mark.slow
def test_copies_converge_exactly_after_the_national_process_is_killed_mid_stream(
    engine: Any,
    session_maker: sessionmaker[Session],
    db_url: str,
    national: sessionmaker[Session],
    national_url: str,
    net: tuple[str, str],
    tmp_path: Path,
) -> None:
    stream, prefix = net
    municipal = session_maker
    codes, unnumbered = _world(engine, municipal, 240)
    households = _households(municipal)
    rng = random.Random(4)
    where = {code: m for m, hs in households.items() for members in hs.values() for code in members}
    first = {m: [c for c in sorted(unnumbered) if where[c] == m] for m in (A, B)}
    in_a, in_b = ([c for c in codes if where.get(c) == m] for m in (A, B))
    dv = [in_a[1], in_b[1], in_a[2]]  # DV等支援措置 in both municipalities
    # One person moves from 千代田区 to 岐阜市 (a household of one, left out of the bulk changes).
    mover_household = next(
        h
        for h, members in households[A].items()
        if len(members) == 1 and members[0] not in {*dv, *unnumbered}
    )
    [mover] = households[A].pop(mover_household)
    common = ["--nats", NATS_URL, "--stream", stream, "--prefix", prefix]
    port = _free_port()
    national_args = [
        "national", "--db", national_url, *common, "--numbering-key", str(tmp_path / "numbering.key"),
        "--batch", "50", "--metrics-port", str(port),
    ]  # fmt: skip
    municipal_port = _free_port()
    municipal_args = [
        "municipal", "--db", db_url, *common, "--municipality", A, "--municipality", B,
        "--metrics-port", str(municipal_port),
    ]  # fmt: skip
    nodes: list[Node] = []

    def start(label: str, args: list[str]) -> Node:
        node = Node(tmp_path, label, args)
        nodes.append(node)
        return node

    def applied() -> int:
        return _count(national, NationalIdentity)

    try:
        municipal_node = start("municipal", municipal_args)
        national_node = start("national-1", national_args)
        # Round 1 and 2: 2 × 2 × 400 register changes (more events: a 転居 moves a whole household).
        _apply_round(municipal, households, 400, rng, first)
        _restrict(municipal, dv[0], where[dv[0]])
        _move_out(municipal, mover)
        _wait_for(
            lambda: ("received", B, "pending") in _certificates(municipal, mover),
            # The national relay also publishes each change's 異動等情報 (to the CA's subjects), one
            # PubAck at a time, before the forwarded 転出 that follows them: generous on a busy machine.
            120,
            "the 転出証明書情報 to reach 岐阜市 through the national node",
            nodes,
        )
        _move_in(municipal, mover)
        _apply_round(municipal, households, 400, rng, {A: [], B: []})
        _restrict(municipal, dv[1], where[dv[1]])
        total = _count(municipal, OutboxEvent, OutboxEvent.type == "register.identity_changed")
        assert total > 2000

        # The national process dies mid-stream: some changes applied, not all.
        _wait_for(lambda: applied() >= total // 3, 120, "a third of the changes at the national node", nodes)
        national_node.kill()
        at_kill = applied()
        assert at_kill < total, "the national node finished before it could be killed"

        # Meanwhile the municipality goes on; the backlog shows per municipality, with its age.
        _apply_round(municipal, households, 300, rng, {A: [], B: []})
        _restrict(municipal, dv[0], where[dv[0]], lift=True)
        _restrict(municipal, dv[2], where[dv[2]])
        total = _count(municipal, OutboxEvent, OutboxEvent.type == "register.identity_changed")
        _wait_for(
            lambda: (
                _count(
                    municipal, OutboxEvent, OutboxEvent.type.in_(UP_TYPES), OutboxEvent.published_at.is_(None)
                )
                == 0
            ),
            60,
            "the municipal relay to publish everything",
            nodes,
        )
        waiting = asyncio.run(fetch_backlog(NATS_URL, stream=stream, prefix=prefix))
        assert {b.municipality_code for b in waiting} == {A, B}
        assert all(b.pending > 0 and b.oldest_age is not None for b in waiting), waiting
        assert sum(b.pending for b in waiting) >= total - at_kill

        national_node = start("national-2", national_args)
        _wait_for(lambda: applied() >= total, 240, f"all {total} changes at the national node", nodes)
        _wait_for(
            lambda: all(
                b.pending == 0 for b in asyncio.run(fetch_backlog(NATS_URL, stream=stream, prefix=prefix))
            ),
            30,
            "the up backlog to drain",
            nodes,
        )
        # Every number the national node assigned has reached the register.
        _wait_for(
            lambda: (
                _count(
                    municipal,
                    Resident,
                    Resident.resident_code.in_(unnumbered),
                    Resident.individual_number.is_(None),
                )
                == 0
            ),
            120,
            "the 個人番号 to reach the municipality",
            nodes,
        )
        # The 転入通知 went back to 千代田区 the same way: its 転出 is completed.
        _wait_for(
            lambda: ("issued", A, "completed") in _certificates(municipal, mover),
            120,
            "the 転入通知 to complete the 転出 at 千代田区",
            nodes,
        )
        # The gauges are snapshots renewed every few seconds.
        _wait_for(lambda: _drained(port, "up"), 30, "the up backlog gauges at 0", nodes, poll=0.5)
        _wait_for(
            lambda: _drained(municipal_port, "down"), 30, "the down backlog gauges at 0", nodes, poll=0.5
        )
        metrics, municipal_metrics = _scrape(port), _scrape(municipal_port)
        time.sleep(0.5)  # room for a duplicate to show up, if there were one
        assert national_node.stop() == 0, national_node.log()
        assert municipal_node.stop() == 0, municipal_node.log()
    except BaseException:
        for node in nodes:
            if node.proc.poll() is None:
                node.kill()
        raise

    # --- the copies hold exactly the register's changes, once each, in order per 住民票コード -------------
    with municipal() as s:
        events = [
            row_to_event(r)
            for r in s.scalars(
                select(OutboxEvent)
                .where(OutboxEvent.type == "register.identity_changed")
                .order_by(OutboxEvent.seq)
            )
        ]
        register = {r.resident_code: r for r in s.scalars(select(Resident))}
        measures = {(r.resident_code, r.municipality_code): r for r in s.scalars(select(Restriction))}
    expected: dict[str, list[str]] = {}
    by_id: dict[str, DomainEvent] = {}
    for event in events:
        expected.setdefault(event.key, []).append(event.id)
        by_id[event.id] = event
    assert len(events) == total
    print(f"{total} register changes, {len(unnumbered)} numbered by the national node, killed at {at_kill}")
    with national() as s:
        versions = s.scalars(
            select(NationalIdentity).order_by(NationalIdentity.resident_code, NationalIdentity.version_no)
        ).all()
        prefectural = s.scalars(
            select(PrefecturalIdentity).order_by(
                PrefecturalIdentity.resident_code, PrefecturalIdentity.version_no
            )
        ).all()
        quarantined = s.scalars(select(QuarantinedMessage)).all()
        numbers = {n.resident_code: n.number for n in s.scalars(select(IndividualNumber))}
        number_events = s.scalars(
            select(OutboxEvent).where(OutboxEvent.type == "numbering.number_assigned")
        ).all()
        sets = {(r.resident_code, r.municipality_code): r for r in s.scalars(select(RestrictionSet))}
        copies = {(r.resident_code, r.municipality_code): r for r in s.scalars(select(RestrictionCopy))}
        inbox = s.scalar(
            select(func.count()).select_from(InboxEntry).where(InboxEntry.handler == "network.replicate")
        )
        parked = s.scalars(select(EventFailure)).all()
    assert quarantined == [] and parked == []
    got: dict[str, list[str]] = {}
    for v in versions:
        got.setdefault(v.resident_code, []).append(v.event_id)
    assert got == expected  # nothing lost, nothing doubled, each person's changes in the register's order
    # Each prefecture's copy: the versions sent by its municipalities, in order (the mover is in both).
    expected_prefectural: dict[tuple[str, str], list[str]] = {}
    for event in events:
        prefecture = event.payload["municipality_code"][:2]
        expected_prefectural.setdefault((prefecture, event.key), []).append(event.id)
    got_prefectural: dict[tuple[str, str], list[str]] = {}
    for p in prefectural:
        got_prefectural.setdefault((p.prefecture_code, p.resident_code), []).append(p.event_id)
    assert got_prefectural == expected_prefectural
    assert [(v.municipality_code, v.status, v.reason_ja) for v in versions if v.resident_code == mover][
        -2:
    ] == [
        (A, "removed", "転出"),
        (B, "active", "転入"),
    ]
    assert inbox == total
    for v in versions:
        payload = by_id[v.event_id].payload
        assert (v.family_name, v.family_name_kana, v.address, v.reason, v.effective_on.isoformat()) == (
            payload["family_name"],
            payload["family_name_kana"],
            payload["address_text"],
            payload["reason"],
            payload["effective_on"],
        )
        assert v.is_current == (v.event_id == expected[v.resident_code][-1])
    # The copies' current versions are the register as it stands.
    for v in versions:
        if v.is_current:
            r = register[v.resident_code]
            assert (v.family_name, v.given_name, v.individual_number) == (
                r.family_name,
                r.given_name,
                r.individual_number,
            )

    # 個人番号: assigned once by the national role for each unnumbered person, written by the register.
    changed_unnumbered = unnumbered & set(expected)
    assert changed_unnumbered == unnumbered  # each had a name change first
    assert sorted(e.key for e in number_events) == sorted(unnumbered)
    assert set(numbers) == unnumbered
    assert {c: register[c].individual_number for c in unnumbered} == {c: numbers[c] for c in unnumbered}
    with municipal() as s:
        received = s.scalar(
            select(func.count())
            .select_from(InboxEntry)
            .where(InboxEntry.handler == "register.apply_individual_number")
        )
    assert received == len(unnumbered)  # each notice applied once by the register

    # DV等支援措置: the network's copy is the municipality's current set, reason left behind.
    assert set(sets) == {(c, where[c]) for c in (dv[0], dv[1], dv[2])}
    assert {k: (c.starts_on, c.ends_on, c.lifted_on) for k, c in copies.items()} == {
        k: (m.starts_on, m.ends_on, m.lifted_on) for k, m in measures.items()
    }

    # Only 本人確認情報 went up, only numbers came down, each to its own municipality; the
    # 異動等情報 went to the CA's subjects.
    async def subjects() -> dict[str, int]:
        nc = await nats.connect(NATS_URL)
        info = await nc.jetstream().stream_info(stream, subjects_filter=f"{prefix}.>")
        await nc.close()
        return dict(info.state.subjects or {})

    kinds = {s.removeprefix(prefix + ".") for s in asyncio.run(subjects())}
    assert kinds == {
        f"{direction}.{m}.{t}"
        for m in (A, B)
        for direction, t in [
            ("up", "register.identity_changed"),
            ("up", "register.restriction_changed"),
            ("down", "numbering.number_assigned"),
            ("ca", "network.identity_changed"),  # 異動等情報, for the CA's durable
        ]
    } | {
        f"up.{A}.register.moved_out",
        f"down.{B}.network.move_out_forwarded",
        f"up.{B}.register.moved_in",
        f"down.{A}.network.move_in_forwarded",
    }
    # Lag and backlog are on the national node's /metrics, per municipality.
    for m in (A, B):
        assert _gauge("up", m) in metrics
        assert f'kiban_network_replication_lag_seconds{{municipality="{m}"' in metrics
        # …and the municipal node's: nothing left in its outbox, nothing waiting to come down.
        assert f'kiban_network_unpublished_events{{municipality="{m}"}} 0.0' in municipal_metrics
        assert (
            f'kiban_network_backlog_messages{{direction="down",municipality="{m}"}} 0.0' in municipal_metrics
        )


@pytest.mark.nats
def test_malformed_and_out_of_order_messages_are_quarantined_with_a_reason(
    national: sessionmaker[Session], national_url: str, net: tuple[str, str], tmp_path: Path
) -> None:
    stream, prefix = net
    code = ResidentCodeGenerator(random.Random(9)).generate()
    base = {
        "resident_code": code,
        "municipality_code": A,
        "family_name": "山田",
        "given_name": "花子",
        "family_name_kana": "ヤマダ",
        "given_name_kana": "ハナコ",
        "birth_date": "1990-04-01",
        "sex": 2,
        "address_text": "東京都千代田区丸の内一丁目1番1号",
        "status": "active",
        "reason": "relocation",
        "reason_ja": "転居",
        "effective_on": "2026-11-01",
    }
    from kiban.core.database import utcnow

    now = utcnow()

    def event(payload: dict[str, Any], at_offset: float = 0.0) -> DomainEvent:
        return DomainEvent(
            id=str(uuid.uuid4()),
            type="register.identity_changed",
            key=code,
            schema_version=1,
            occurred_at=now + timedelta(seconds=at_offset),
            payload=payload,
            source="somewhere",
        )

    good = event(base)
    older = event({**base, "family_name": "田中"}, at_offset=-3600)  # after the good one, but older
    bad_sex = event({**base, "sex": 3}, at_offset=1)
    honseki = event({**base, "honseki": "東京都千代田区千代田1番"}, at_offset=2)
    subject = f"{prefix}.up.{A}.register.identity_changed"

    async def publish() -> None:
        nc = await nats.connect(NATS_URL)
        js = nc.jetstream()
        from kiban.core.nats_bus import ensure_stream

        await ensure_stream(js, stream, prefix)
        await js.publish(subject, b"{not json", headers={"Nats-Msg-Id": "garbage-1"})
        for e in (good, older, bad_sex, honseki):
            await js.publish(subject, e.to_json(), headers={"Nats-Msg-Id": e.id})
        await nc.close()

    asyncio.run(publish())
    node = Node(
        tmp_path,
        "national",
        ["national", "--db", national_url, "--nats", NATS_URL, "--stream", stream, "--prefix", prefix,
         "--numbering-key", str(tmp_path / "numbering.key")],
    )  # fmt: skip
    try:
        _wait_for(
            lambda: _count(national, QuarantinedMessage) >= 3 and _count(national, EventFailure) >= 1,
            60,
            "three quarantined messages and one parked",
            [node],
        )
        assert node.stop() == 0, node.log()
    except BaseException:
        if node.proc.poll() is None:
            node.kill()
        raise
    with national() as s:
        rules = {(q.event_id, q.field, q.rule) for q in s.scalars(select(QuarantinedMessage))}
        [version] = s.scalars(select(NationalIdentity)).all()
        [garbage] = s.scalars(select(EventFailure)).all()
        [honseki_row] = s.scalars(select(QuarantinedMessage).where(QuarantinedMessage.event_id == honseki.id))
    assert rules == {
        (older.id, "occurred_at", "out_of_order"),
        (bad_sex.id, "payload.sex", "sex_code"),
        (honseki.id, "payload.honseki", "not_identity_information"),
    }
    # Only the good message was applied (and numbered by the national role).
    assert (version.event_id, version.family_name) == (good.id, "山田")
    assert version.individual_number is not None
    assert garbage.handler == consumer_handler_name("national") and garbage.parked_at is not None
    assert garbage.event_id == "garbage-1" and "json" in garbage.last_error.lower()
    assert "東京都千代田区千代田" not in json.dumps(honseki_row.document, ensure_ascii=False)
    # The operator's view from the command line: nothing waits, one version applied, three quarantined.
    runner = CliRunner()
    shown = runner.invoke(cli, ["backlog", "--nats", NATS_URL, "--stream", stream, "--prefix", prefix])
    assert shown.exit_code == 0, shown.output
    assert shown.output.splitlines()[1:] == [f"{A}\tup\t0\t-"]
    shown = runner.invoke(cli, ["status", "--db", national_url])
    assert shown.exit_code == 0, shown.output
    [row] = shown.output.splitlines()[1:]
    assert row.startswith(f"{A}\t1\t") and row.endswith("\t3")
    assert runner.invoke(cli, ["backlog", "--nats", NATS_URL, "--direction", "sideways"]).exit_code == 2


# --- the parts, in process (no NATS) -----------------------------------------------------------------


def _change(code: str, at: datetime, **extra: Any) -> DomainEvent:
    payload = {
        "resident_code": code,
        "municipality_code": B,
        "family_name": "山田",
        "given_name": "太郎",
        "family_name_kana": "ヤマダ",
        "given_name_kana": "タロウ",
        "birth_date": "2026-11-01",
        "sex": 1,
        "address_text": "岐阜県岐阜市長良1番地",
        "status": "active",
        "reason": "birth",
        "reason_ja": "出生",
        "effective_on": "2026-11-01",
        **extra,
    }
    return DomainEvent(
        id=str(uuid.uuid4()),
        type="register.identity_changed",
        key=code,
        schema_version=1,
        occurred_at=at,
        payload=payload,
        source="municipal",
    )


def test_the_national_role_numbers_a_new_code_once_and_the_number_follows_a_code_change(
    session_maker: sessionmaker[Session],
) -> None:
    numberer = NationalNumbering(IndividualNumberCipher(bytes(range(1, 33))))
    codes = ResidentCodeGenerator(random.Random(31))
    born, renewed, carrier, gone = (codes.generate() for _ in range(4))
    t = datetime(2026, 11, 25, 1, 0, tzinfo=UTC)

    def apply(event: DomainEvent) -> str:
        with session_maker.begin() as s:
            return apply_identity_change(s, event, numberer=numberer)

    def notices() -> list[tuple[str, str, str]]:
        with session_maker() as s:
            rows = s.scalars(select(OutboxEvent).where(OutboxEvent.type == "numbering.number_assigned"))
            return [(r.key, r.payload["individual_number"], r.payload["municipality_code"]) for r in rows]

    def current(code: str) -> str | None:
        with session_maker() as s:
            return s.scalar(
                select(NationalIdentity.individual_number).where(
                    NationalIdentity.resident_code == code, NationalIdentity.is_current
                )
            )

    # 出生: no number in the message; the national role assigns one, in the same version, and tells B.
    assert apply(_change(born, t)) == "applied"
    number = current(born)
    assert number is not None and notices() == [(born, number, B)]
    with session_maker() as s:
        assert numbering.active_number(s, born) == number
    # The municipality has not written it yet: the next change comes without it; nothing new is made.
    assert apply(_change(born, t + timedelta(minutes=1), reason="relocation", reason_ja="転居")) == "applied"
    assert current(born) == number and len(notices()) == 1
    # 住民票コード変更: the new code is linked to the old one, the number follows the person.
    moved = _change(renewed, t + timedelta(minutes=2), previous_resident_code=born, reason="code_change")
    assert apply(moved) == "applied"
    assert current(renewed) == number and len(notices()) == 1
    # A message that carries its number, or closes a record, makes no number.
    carried = _change(carrier, t, individual_number=number_for_test())
    assert apply(carried) == "applied" and current(carrier) == number_for_test()
    closed = _change(gone, t, status="removed", reason="death", reason_ja="死亡")
    assert apply(closed) == "applied" and current(gone) is None
    with session_maker() as s:
        assert s.scalar(select(func.count()).select_from(IndividualNumber)) == 1
    assert len(notices()) == 1


def number_for_test() -> str:
    return MUNICIPAL_CIPHER.number_for(ResidentCodeGenerator(random.Random(99)).generate())


def test_subjects_name_the_municipality_and_only_identity_events_count_as_unpublished(
    session_maker: sessionmaker[Session],
) -> None:
    code = ResidentCodeGenerator(random.Random(5)).generate()
    event = _change(code, datetime(2026, 11, 25, tzinfo=UTC))
    assert up_subject("kn")(event) == f"kn.up.{B}.register.identity_changed"
    odd = DomainEvent(**{**event.__dict__, "payload": {**event.payload, "municipality_code": "1.>"}})
    assert up_subject("kn")(odd) == "kn.up.unknown.register.identity_changed"  # no wildcard injection
    with pytest.raises(ValueError, match="subject_token"):
        check_prefix("kiban.net")
    with session_maker.begin() as s:
        emit(s, "register.identity_changed", code, event.payload)
        emit(s, "register.restriction_changed", code, {"resident_code": code, "municipality_code": A})
        emit(s, "register.moved_out", code, {"from_municipality_code": B, "to_municipality_code": A})
        emit(s, "numbering.number_assigned", code, {"municipality_code": B})  # stays in the municipality
        emit(s, "cards.state_changed", code, {"municipality_code": A})  # so does this
    with session_maker() as s:
        assert unpublished_by_municipality(s) == {A: 1, B: 2}
    moved = DomainEvent(**{**event.__dict__, "type": "network.move_out_forwarded", "payload": {
        "from_municipality_code": B, "to_municipality_code": A}})  # fmt: skip
    assert down_subject("kn")(moved) == f"kn.down.{A}.network.move_out_forwarded"  # to the destination


class _FakeJetStream:
    """Records what a relay publishes (subject, event id); every publish is acknowledged."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def publish(self, subject: str, payload: bytes, **kwargs: Any) -> Any:
        self.sent.append((subject, kwargs["headers"]["Nats-Msg-Id"]))
        return SimpleNamespace(duplicate=False)


def test_the_municipal_relay_publishes_only_identity_events_and_passes_over_the_rest(
    session_maker: sessionmaker[Session],
) -> None:
    code = ResidentCodeGenerator(random.Random(6)).generate()
    event = _change(code, datetime(2026, 11, 25, tzinfo=UTC))
    with session_maker.begin() as s:
        kept = emit(s, "numbering.number_assigned", code, {"municipality_code": B})
        first = emit(s, "register.identity_changed", code, event.payload)
        emit(s, "cards.state_changed", code, {"municipality_code": B})
        second = emit(
            s, "register.restriction_changed", code, {"resident_code": code, "municipality_code": B}
        )
    js = _FakeJetStream()
    relay = publish_pending(session_maker, js, types=UP_TYPES, subject=up_subject("kn"), limit=3)
    assert asyncio.run(relay) == 3  # two passed over within the first three rows, one published
    assert js.sent == [(f"kn.up.{B}.register.identity_changed", first.id)]
    relay = publish_pending(session_maker, js, types=UP_TYPES, subject=up_subject("kn"))
    assert asyncio.run(relay) == 1
    assert js.sent[1:] == [(f"kn.up.{B}.register.restriction_changed", second.id)]
    with session_maker() as s:
        assert s.scalar(select(func.count()).where(OutboxEvent.published_at.is_(None))) == 0
        # Passed over is not delivered: the node's own handlers still get the local event.
        row = s.scalars(select(OutboxEvent).where(OutboxEvent.event_id == kept.id)).one()
        assert row.delivered_at is None
