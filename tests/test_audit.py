"""The audit log: appends chain, bad input is refused, and tampering with the table is caught.

Tampering is done the way a DBA would: directly on the table with the append-only triggers
switched off (dropped on SQLite, ``session_replication_role = replica`` on PostgreSQL).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, Table, delete, func, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from kiban.core import audit
from kiban.core.audit import (
    GENESIS_HASH,
    AuditChainError,
    AuditError,
    Problem,
    audited_read,
    compute_hash,
    entry_hash,
    record,
    verify,
    verify_data_dir,
)
from kiban.core.config import Settings
from kiban.core.models.audit import AuditEntry, AuditHead

LOG = cast(Table, AuditEntry.__table__)
HEAD = cast(Table, AuditHead.__table__)
SUBJECT = "38472916503"


def add(factory: sessionmaker[Session], count: int, **overrides: Any) -> list[AuditEntry]:
    """``count`` entries, each in its own transaction, like separate requests."""
    entries = []
    for i in range(count):
        fields: dict[str, Any] = {
            "actor": "clerk-tanaka",
            "role": "clerk",
            "action": "read",
            "purpose": "住民票の写しの交付",
            "subject": SUBJECT,
            "items": ["name", "address"],
            "organisation": "131016",
            "detail": {"request": i},
        }
        fields.update(overrides)
        with factory() as session, session.begin():
            entries.append(record(session, **fields))
    return entries


@contextmanager
def as_dba(engine: Engine) -> Iterator[Connection]:
    """A transaction in which the append-only triggers do not fire (a DBA editing the table)."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SET LOCAL session_replication_role = replica"))
        else:
            conn.execute(text("DROP TRIGGER IF EXISTS audit_log_no_update"))
            conn.execute(text("DROP TRIGGER IF EXISTS audit_log_no_delete"))
        yield conn


def row(engine: Engine, seq: int) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(select(LOG).where(LOG.c.seq == seq)).one()._mapping)


def check(factory: sessionmaker[Session], **kwargs: Any) -> audit.VerifyReport:
    with factory() as session:
        return verify(session, **kwargs)


def data_settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


# --- appending ---------------------------------------------------------------------------------


def test_untampered_chain_verifies_and_links(session_maker: sessionmaker[Session]) -> None:
    entries = add(session_maker, 5)
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0].prev_hash == GENESIS_HASH
    for before, after in zip(entries, entries[1:], strict=False):
        assert after.prev_hash == before.hash
    assert all(entry_hash(e) == e.hash for e in entries)
    report = check(session_maker)
    assert report.ok, report
    assert (report.checked, report.head_seq, report.head_hash) == (5, 5, entries[-1].hash)


def test_canonical_form_is_the_documented_one() -> None:
    # The example in docs/audit.md: an outside tool can recompute it with sha256sum.
    fields = {
        "seq": 1,
        "occurred_at": datetime(2026, 4, 1, 0, 30, tzinfo=UTC) + timedelta(hours=9, microseconds=5),
        "actor": "clerk-tanaka",
        "role": "clerk",
        "organisation": "131016",
        "action": "read",
        "purpose": "住民票の写しの交付",
        "subject": "38472916503",
        "items": ["name", "address"],
        "detail": {"window": 2, "copies": 1},
        "flags": ["dv_restricted"],
        "prev_hash": GENESIS_HASH,
    }
    expected = (
        '{"action":"read","actor":"clerk-tanaka","detail":{"copies":1,"window":2},'
        '"flags":["dv_restricted"],"items":["name","address"],'
        '"occurred_at":"2026-04-01T09:30:00.000005Z","organisation":"131016",'
        '"prev_hash":"' + "0" * 64 + '","purpose":"住民票の写しの交付","role":"clerk",'
        '"seq":1,"subject":"38472916503","v":1}'
    )
    assert audit.canonical_form(fields).decode() == expected
    assert compute_hash(fields) == hashlib.sha256(expected.encode()).hexdigest()
    assert compute_hash(fields) == "dfa9fb9eff2a0e865699307fc7bd570c8a800f424344992523dc5cadccfa1361"
    # A time given in JST hashes as the same instant in UTC.
    jst = fields["occurred_at"].astimezone(__import__("zoneinfo").ZoneInfo("Asia/Tokyo"))
    assert compute_hash({**fields, "occurred_at": jst}) == compute_hash(fields)


def test_rollback_drops_the_entry_and_the_head(session_maker: sessionmaker[Session]) -> None:
    add(session_maker, 2)
    with session_maker() as session:
        session.begin()
        record(session, actor="a", role="clerk", action="read", purpose="p", subject=SUBJECT, items=["name"])
        session.rollback()
    with session_maker() as session:
        assert session.scalar(select(func.count()).select_from(LOG)) == 2
        assert session.scalar(select(HEAD.c.seq)) == 2
    third = add(session_maker, 1)[0]
    assert third.seq == 3
    assert check(session_maker).ok


def test_audited_read_records_a_read(session_maker: sessionmaker[Session]) -> None:
    with session_maker() as session, session.begin():
        entry = audited_read(
            session,
            actor="agency-pension",
            role="agency",
            purpose="年金給付の支給",
            subject=SUBJECT,
            items=["name", "birth_date"],
            organisation="nenkin",
            flags=["dv_restricted", "dv_restricted"],
        )
    assert (entry.action, entry.flags, entry.organisation) == ("read", ["dv_restricted"], "nenkin")
    with session_maker() as session:
        (stored,) = audit.history(session, SUBJECT)
        assert (stored.seq, stored.actor, stored.items) == (1, "agency-pension", ["name", "birth_date"])
        assert audit.history(session, "99999999999") == []


def test_history_returns_only_the_subjects_newest_entries(session_maker: sessionmaker[Session]) -> None:
    add(session_maker, 3)
    add(session_maker, 2, subject="11111111119")
    add(session_maker, 1)
    with session_maker() as session:
        assert [e.seq for e in audit.history(session, SUBJECT)] == [1, 2, 3, 6]
        assert [e.seq for e in audit.history(session, SUBJECT, limit=2)] == [3, 6]


BAD_INPUT = [
    ("actor", "", "must not be empty"),
    ("role", None, "must be a string"),
    ("action", "Read", "lower-case"),
    ("purpose", "x" * 201, "at most 200"),
    ("subject", "123456789018", "12-digit"),
    ("subject", "１２３４５６７８９０１８", "12-digit"),
    ("actor", "clerk\nforged line", "control characters"),
    ("items", "name", "not a single string"),
    ("items[1]", ["name", ""], "must not be empty"),
    ("detail.pin", {"pin": "1234"}, "secret"),
    ("detail.card.password", {"card": {"password": "x"}}, "secret"),
    ("detail.note", {"note": "number 1234 5678 9018"}, "12-digit"),
    ("detail", {"ratio": float("nan")}, "RFC 8785"),
    ("detail", {"a": "x" * 1500, "b": "y" * 1500}, "at most 2048 bytes"),
    ("detail", ["not", "an", "object"], "JSON object"),
    ("flags", ["DV"], "lower-case"),
    ("occurred_at", datetime(2026, 1, 1), "timezone-aware"),
]


@pytest.mark.parametrize(("field", "value", "rule"), BAD_INPUT)
def test_bad_input_is_refused_naming_field_and_rule(
    session_maker: sessionmaker[Session], field: str, value: Any, rule: str
) -> None:
    add(session_maker, 1)
    fields: dict[str, Any] = {
        "actor": "clerk",
        "role": "clerk",
        "action": "read",
        "purpose": "p",
        "subject": SUBJECT,
        "items": ["name"],
    }
    fields[field.split(".")[0].split("[")[0]] = value
    with session_maker() as session, session.begin(), pytest.raises(AuditError) as caught:
        record(session, **fields)
    assert caught.value.field == field
    assert rule in caught.value.rule
    with session_maker() as session:
        assert session.scalar(select(func.count()).select_from(LOG)) == 1
        assert session.scalar(select(HEAD.c.seq)) == 1


def test_record_many_appends_in_order_after_single_records(session_maker: sessionmaker[Session]) -> None:
    add(session_maker, 2)
    batch = [
        {
            "actor": "pension-batch",
            "role": "agency",
            "action": "provide",
            "purpose": "年金",
            "subject": s,
            "items": ["name"],
        }
        for s in ("11111111119", "22222222228", "33333333337")
    ]
    with session_maker() as session, session.begin():
        written = audit.record_many(session, batch)
        assert audit.record_many(session, []) == []
    assert [(e.seq, e.subject) for e in written] == [
        (3, "11111111119"),
        (4, "22222222228"),
        (5, "33333333337"),
    ]
    assert written[1].prev_hash == written[0].hash
    assert len({e.occurred_at for e in written}) == 1
    add(session_maker, 1)
    report = check(session_maker)
    assert (report.ok, report.checked) == (True, 6)


@pytest.mark.parametrize(
    ("entry", "field", "rule"),
    [
        ({"subject": "123456789018"}, "entries[1].subject", "12-digit"),
        ({"colour": "red"}, "entries[1]", "unknown fields ['colour']"),
        ({"actor": None}, "entries[1].actor", "must be a string"),
    ],
)
def test_record_many_refuses_the_whole_batch_for_one_bad_entry(
    session_maker: sessionmaker[Session], entry: dict[str, Any], field: str, rule: str
) -> None:
    good = {
        "actor": "a",
        "role": "agency",
        "action": "provide",
        "purpose": "p",
        "subject": SUBJECT,
        "items": [],
    }
    with pytest.raises(AuditError) as caught, session_maker() as session, session.begin():
        audit.record_many(session, [good, {**good, **entry}, good])
    assert (caught.value.field, rule in caught.value.rule) == (field, True)
    with pytest.raises(AuditError, match="missing fields"), session_maker() as session, session.begin():
        audit.record_many(session, [{"actor": "a"}])
    with session_maker() as session:
        assert session.scalar(select(func.count()).select_from(LOG)) == 0


def test_update_and_delete_are_refused_by_the_database(
    engine: Engine, session_maker: sessionmaker[Session]
) -> None:
    add(session_maker, 2)
    before = row(engine, 1)
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(update(LOG).where(LOG.c.seq == 1).values(actor="someone-else"))
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(delete(LOG).where(LOG.c.seq == 2))
    assert row(engine, 1) == before
    assert check(session_maker).ok


def test_missing_head_with_entries_refuses_to_append(
    engine: Engine, session_maker: sessionmaker[Session]
) -> None:
    add(session_maker, 2)
    with as_dba(engine) as conn:
        conn.execute(delete(HEAD))
    with pytest.raises(AuditChainError, match="audit_head"), session_maker() as session, session.begin():
        record(session, actor="a", role="clerk", action="read", purpose="p", subject="", items=[])
    report = check(session_maker)
    assert (report.ok, report.problem, report.first_bad_seq) == (False, Problem.HEAD_MISMATCH, 2)


def test_concurrent_appends_keep_one_linear_chain(
    engine: Engine, session_maker: sessionmaker[Session]
) -> None:
    threads, per_thread = 8, 50
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(worker: int) -> None:
        try:
            start.wait()
            fields = {
                "actor": f"worker-{worker}",
                "role": "system",
                "action": "read",
                "purpose": "load",
                "subject": SUBJECT,
                "items": ["name"],
            }
            if worker % 2:  # odd workers append in batches of 5, claiming 5 seqs at once
                for _ in range(per_thread // 5):
                    with session_maker() as session, session.begin():
                        audit.record_many(session, [fields] * 5)
            else:
                for _ in range(per_thread):
                    with session_maker() as session, session.begin():
                        record(session, **fields)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert errors == []
    with engine.connect() as conn:
        seqs = conn.scalars(select(LOG.c.seq).order_by(LOG.c.seq)).all()
        actors = conn.scalars(select(LOG.c.actor)).all()
    assert seqs == list(range(1, threads * per_thread + 1))
    assert {a: actors.count(a) for a in set(actors)} == {f"worker-{n}": per_thread for n in range(threads)}
    report = check(session_maker, batch_size=64)
    assert report.ok, report
    assert report.checked == threads * per_thread


def test_verify_streams_in_batches(
    session_maker: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    add(session_maker, 30)
    sizes: list[int] = []
    fetch = audit._fetch

    def counting(session: Session, after: int, limit: int) -> Any:
        rows = fetch(session, after, limit)
        sizes.append(len(rows))
        return rows

    monkeypatch.setattr(audit, "_fetch", counting)
    report = check(session_maker, batch_size=7)
    assert (report.ok, report.checked) == (True, 30)
    assert sizes == [7, 7, 7, 7, 2, 0]


def test_entries_appended_during_verify_are_verified_too(
    session_maker: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    add(session_maker, 3)
    fetch = audit._fetch
    appended: list[int] = []

    def racing(session: Session, after: int, limit: int) -> Any:
        rows = fetch(session, after, limit)
        if not rows and not appended:  # another request commits just as the walk reaches the end
            appended.append(add(session_maker, 1)[0].seq)
        return rows

    monkeypatch.setattr(audit, "_fetch", racing)
    report = check(session_maker)
    assert appended == [4]
    assert (report.ok, report.checked, report.head_seq) == (True, 4, 4)


@pytest.mark.slow
def test_a_long_log_verifies_in_batches_and_one_change_deep_inside_is_found(
    engine: Engine, session_maker: sessionmaker[Session]
) -> None:
    total, bad_seq = 50_000, 43_210
    with session_maker() as session, session.begin():
        for start in range(0, total, 10_000):
            audit.record_many(
                session,
                [
                    {
                        "actor": "pension-batch",
                        "role": "agency",
                        "action": "provide",
                        "purpose": "年金給付",
                        "subject": f"{n:011d}",
                        "items": ["name", "birth_date"],
                    }
                    for n in range(start, start + 10_000)
                ],
            )
    report = check(session_maker, batch_size=5000)
    assert (report.ok, report.checked) == (True, total)
    with as_dba(engine) as conn:
        conn.execute(update(LOG).where(LOG.c.seq == bad_seq).values(subject="00000000000"))
    report = check(session_maker, batch_size=5000)
    assert (report.ok, report.problem, report.first_bad_seq, report.checked) == (
        False,
        Problem.MODIFIED,
        bad_seq,
        bad_seq - 1,
    )


# --- tampering ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("actor", "clerk-suzuki"),
        ("subject", "99999999999"),
        ("items", ["name"]),
        ("detail", {"request": 99}),
        ("purpose", "別の事務"),
        ("organisation", None),
        ("flags", ["dv_restricted"]),
        ("hash", "f" * 64),
    ],
)
def test_a_modified_field_is_detected(
    engine: Engine, session_maker: sessionmaker[Session], column: str, value: Any
) -> None:
    add(session_maker, 5)
    with as_dba(engine) as conn:
        conn.execute(update(LOG).where(LOG.c.seq == 3).values({column: value}))
    report = check(session_maker)
    assert (report.ok, report.problem, report.first_bad_seq, report.checked) == (
        False,
        Problem.MODIFIED,
        3,
        2,
    )
    assert "entry 3" in report.summary()


def test_a_timestamp_moved_by_one_microsecond_is_detected(
    engine: Engine, session_maker: sessionmaker[Session]
) -> None:
    add(session_maker, 4)
    moved = row(engine, 2)["occurred_at"] + timedelta(microseconds=1)
    with as_dba(engine) as conn:
        conn.execute(update(LOG).where(LOG.c.seq == 2).values(occurred_at=moved))
    report = check(session_maker)
    assert (report.problem, report.first_bad_seq) == (Problem.MODIFIED, 2)


def test_unreadable_json_is_reported_as_modified(
    engine: Engine, session_maker: sessionmaker[Session]
) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL's json type refuses malformed JSON itself")
    add(session_maker, 4)
    with as_dba(engine) as conn:
        conn.execute(text("UPDATE audit_log SET detail = '{not json' WHERE seq = 3"))
    report = check(session_maker, batch_size=10)
    assert (report.problem, report.first_bad_seq) == (Problem.MODIFIED, 3)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 5000])
def test_a_deleted_middle_entry_is_detected(
    engine: Engine, session_maker: sessionmaker[Session], batch_size: int
) -> None:
    add(session_maker, 6)
    with as_dba(engine) as conn:
        conn.execute(delete(LOG).where(LOG.c.seq == 3))
    report = check(session_maker, batch_size=batch_size)
    assert (report.ok, report.problem, report.first_bad_seq) == (False, Problem.DELETED, 3)


def test_deleted_last_entries_are_detected_by_the_head(
    engine: Engine, session_maker: sessionmaker[Session]
) -> None:
    add(session_maker, 5)
    with as_dba(engine) as conn:
        conn.execute(delete(LOG).where(LOG.c.seq >= 4))
    report = check(session_maker)
    assert (report.ok, report.problem, report.first_bad_seq) == (False, Problem.TRUNCATED, 4)


def test_swapped_contents_are_detected_as_reordered(
    engine: Engine, session_maker: sessionmaker[Session]
) -> None:
    add(session_maker, 5)
    two, four = row(engine, 2), row(engine, 4)
    with as_dba(engine) as conn:
        conn.execute(delete(LOG).where(LOG.c.seq.in_([2, 4])))
        conn.execute(LOG.insert(), [{**four, "seq": 2}, {**two, "seq": 4}])
    report = check(session_maker)
    assert (report.ok, report.problem, report.first_bad_seq) == (False, Problem.REORDERED, 2)


def test_swapped_seq_numbers_are_detected_as_reordered(
    engine: Engine, session_maker: sessionmaker[Session]
) -> None:
    add(session_maker, 5)
    with as_dba(engine) as conn:
        conn.execute(update(LOG).where(LOG.c.seq == 3).values(seq=1000))
        conn.execute(update(LOG).where(LOG.c.seq == 4).values(seq=3))
        conn.execute(update(LOG).where(LOG.c.seq == 1000).values(seq=4))
    report = check(session_maker)
    assert (report.ok, report.problem, report.first_bad_seq) == (False, Problem.REORDERED, 3)


def test_an_entry_outside_the_chain_is_detected(engine: Engine, session_maker: sessionmaker[Session]) -> None:
    # A forged "who looked at my data" entry at seq 0 would never be walked; the constraint
    # refuses it, and verify still reports it when a DBA bypasses the constraint.
    add(session_maker, 2)
    forged = {**row(engine, 1), "seq": 0, "actor": "nobody", "prev_hash": "f" * 64}
    forged["hash"] = compute_hash(forged)
    with pytest.raises(DBAPIError, match="seq_positive"), engine.begin() as conn:
        conn.execute(LOG.insert().values(forged))
    with engine.connect() as conn, conn.begin():
        if engine.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE audit_log DROP CONSTRAINT ck_audit_log_seq_positive"))
        else:
            conn.execute(text("PRAGMA ignore_check_constraints = ON"))
        conn.execute(LOG.insert().values(forged))
        report = verify(Session(bind=conn))
        assert (report.ok, report.problem, report.first_bad_seq) == (False, Problem.MODIFIED, 0)
        if engine.dialect.name == "sqlite":
            conn.execute(text("PRAGMA ignore_check_constraints = OFF"))
        conn.rollback()  # on PostgreSQL this also brings the constraint back
    assert check(session_maker).ok


def _forge(engine: Engine, seq: int, **changes: Any) -> str:
    """Change entry ``seq`` and give it a correct hash for its new content (but leave the chain)."""
    forged = {**row(engine, seq), **changes}
    forged["hash"] = compute_hash(forged)
    with as_dba(engine) as conn:
        conn.execute(update(LOG).where(LOG.c.seq == seq).values(forged))
    return str(forged["hash"])


def test_a_forged_hash_in_the_middle_names_the_forged_entry(
    engine: Engine, session_maker: sessionmaker[Session]
) -> None:
    add(session_maker, 5)
    _forge(engine, 3, subject="99999999999")
    report = check(session_maker)
    assert (report.ok, report.problem, report.first_bad_seq) == (False, Problem.MODIFIED, 3)
    assert "recomputed" in report.message


def test_a_forged_hash_on_the_last_entry_disagrees_with_the_head(
    engine: Engine, session_maker: sessionmaker[Session]
) -> None:
    add(session_maker, 5)
    _forge(engine, 5, actor="nobody")
    report = check(session_maker)
    assert (report.ok, report.problem, report.first_bad_seq) == (False, Problem.HEAD_MISMATCH, 5)


def test_an_entry_inserted_behind_the_logs_back_is_detected(
    engine: Engine, session_maker: sessionmaker[Session]
) -> None:
    add(session_maker, 3)
    extra = {**row(engine, 3), "seq": 4, "prev_hash": row(engine, 3)["hash"]}
    extra["hash"] = compute_hash(extra)
    with engine.begin() as conn:  # INSERT is allowed; only record() moves the head
        conn.execute(LOG.insert().values(extra))
    report = check(session_maker)
    assert (report.ok, report.problem, report.first_bad_seq) == (False, Problem.HEAD_MISMATCH, 4)


# --- the sealed checkpoint ---------------------------------------------------------------------


def _rewrite_from(engine: Engine, seq: int, last: int, **changes: Any) -> None:
    """Rewrite entries seq..last and recompute the whole chain and head: invisible to the chain."""
    prev = row(engine, seq - 1)["hash"] if seq > 1 else GENESIS_HASH
    with as_dba(engine) as conn:
        for n in range(seq, last + 1):
            current = dict(conn.execute(select(LOG).where(LOG.c.seq == n)).one()._mapping)
            current.update(changes if n == seq else {})
            current["prev_hash"] = prev
            current["hash"] = prev = compute_hash(current)
            conn.execute(update(LOG).where(LOG.c.seq == n).values(current))
        conn.execute(update(HEAD).values(seq=last, hash=prev))


def test_a_recomputed_chain_passes_alone_but_not_the_checkpoint(
    engine: Engine, session_maker: sessionmaker[Session], tmp_path: Path
) -> None:
    settings_ = data_settings(tmp_path)
    add(session_maker, 5)
    with session_maker() as session:
        sealed = verify_data_dir(session, settings_)
    assert (sealed.ok, sealed.checkpoint_seq) == (True, 5)
    _rewrite_from(engine, 2, 5, subject="99999999999")
    assert check(session_maker).ok  # why the checkpoint exists
    with session_maker() as session:
        report = verify_data_dir(session, settings_)
    assert (report.ok, report.problem, report.first_bad_seq) == (False, Problem.HEAD_MISMATCH, 5)


def test_a_cut_tail_with_a_rewritten_head_is_caught_by_the_checkpoint(
    engine: Engine, session_maker: sessionmaker[Session], tmp_path: Path
) -> None:
    settings_ = data_settings(tmp_path)
    add(session_maker, 5)
    with session_maker() as session:
        assert verify_data_dir(session, settings_).ok
    three = row(engine, 3)["hash"]
    with as_dba(engine) as conn:
        conn.execute(delete(LOG).where(LOG.c.seq > 3))
        conn.execute(update(HEAD).values(seq=3, hash=three))
    assert check(session_maker).ok
    with session_maker() as session:
        report = verify_data_dir(session, settings_)
    assert (report.ok, report.problem, report.first_bad_seq) == (False, Problem.TRUNCATED, 4)


def test_the_checkpoint_advances_and_new_entries_verify(
    session_maker: sessionmaker[Session], tmp_path: Path
) -> None:
    settings_ = data_settings(tmp_path)
    with session_maker() as session:
        empty = verify_data_dir(session, settings_)
    assert (empty.ok, empty.checkpoint_seq, empty.head_hash) == (True, 0, GENESIS_HASH)
    add(session_maker, 3)
    with session_maker() as session:
        assert verify_data_dir(session, settings_).checkpoint_seq == 3
        assert verify_data_dir(session, settings_, seal=False).checkpoint_seq == 3
    add(session_maker, 2)
    with session_maker() as session:
        unsealed = verify_data_dir(session, settings_, seal=False)
    assert (unsealed.ok, unsealed.head_seq, unsealed.checkpoint_seq) == (True, 5, 3)
    assert json.loads((audit.checkpoint_path(settings_)).read_text())["seq"] == 3
    key = settings_.keys_dir / audit.SEAL_KEY_FILE
    assert key.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("edit", ["seq", "hash", "mac", "garbage", "no key", "removed"])
def test_a_forged_checkpoint_file_is_reported(
    session_maker: sessionmaker[Session], tmp_path: Path, edit: str
) -> None:
    settings_ = data_settings(tmp_path)
    add(session_maker, 3)
    with session_maker() as session:
        assert verify_data_dir(session, settings_).ok
    path = audit.checkpoint_path(settings_)
    content = json.loads(path.read_text())
    if edit == "seq":
        content["seq"] = 2
    elif edit == "hash":
        content["hash"] = "a" * 64
    elif edit == "mac":
        content["mac"] = "0" * 64
    if edit == "garbage":
        path.write_text("{")
    elif edit == "no key":
        (settings_.keys_dir / audit.SEAL_KEY_FILE).unlink()
    elif edit == "removed":
        path.unlink()
    else:
        path.write_text(json.dumps(content))
    with session_maker() as session:
        report = verify_data_dir(session, settings_)
    assert (report.ok, report.problem, report.first_bad_seq) == (False, Problem.BAD_CHECKPOINT, None)
    assert "checkpoint" in report.summary()


# --- properties --------------------------------------------------------------------------------

_WORD = st.text(alphabet="abcxyz住民票田中-_ ", min_size=1, max_size=12)
_ENTRY = st.fixed_dictionaries(
    {
        "actor": _WORD,
        "role": st.sampled_from(["clerk", "agency", "national_operator", "system"]),
        "action": st.sampled_from(audit.ACTIONS),
        "purpose": _WORD,
        "subject": st.one_of(st.just(""), st.from_regex(r"[0-9]{11}", fullmatch=True)),
        "items": st.lists(_WORD, max_size=4),
        "organisation": st.one_of(st.none(), st.from_regex(r"[0-9]{6}", fullmatch=True)),
        "detail": st.dictionaries(
            st.sampled_from(["n", "reason", "count", "note", "ratio", "ok"]),
            st.one_of(
                st.integers(-(10**9), 10**9),
                _WORD,
                st.booleans(),
                st.none(),
                st.floats(allow_nan=False, allow_infinity=False, width=64),
            ),
            max_size=4,
        ),
        "flags": st.lists(st.sampled_from(["dv_restricted", "bulk", "consent"]), max_size=2),
        "occurred_at": st.datetimes(
            min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)
        ),
    }
)


def _reset(engine: Engine) -> None:
    with as_dba(engine) as conn:
        conn.execute(delete(LOG))
        conn.execute(update(HEAD).values(seq=0, hash=GENESIS_HASH))


def _append_all(factory: sessionmaker[Session], entries: list[dict[str, Any]]) -> None:
    # Half one by one, the rest in one batch: both paths build the same chain.
    half = len(entries) // 2
    with factory() as session, session.begin():
        for fields in entries[:half]:
            record(session, **fields)
        audit.record_many(session, entries[half:])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.lists(_ENTRY, max_size=8))
def test_property_any_appends_verify(
    engine: Engine, session_maker: sessionmaker[Session], entries: list[dict[str, Any]]
) -> None:
    _reset(engine)
    _append_all(session_maker, entries)
    report = check(session_maker, batch_size=3)
    assert report.ok, report
    assert report.checked == len(entries)


def _mutated(column: str, value: Any) -> Any:
    if column == "occurred_at":
        return value + timedelta(microseconds=1)
    if column == "organisation":
        return "999999" if value is None else None
    if column in ("items", "flags"):
        return [*value, "zz"]
    if column == "detail":
        return {**value, "zz": 1}
    if column in ("prev_hash", "hash"):
        return ("1" if value[0] == "0" else "0") + value[1:]
    if column == "seq":
        return value + 1000
    return value + "z"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    entries=st.lists(_ENTRY, min_size=1, max_size=6),
    target=st.integers(min_value=0),
    column=st.sampled_from([c.name for c in LOG.columns]),
)
def test_property_any_single_field_change_is_detected_at_its_entry(
    engine: Engine,
    session_maker: sessionmaker[Session],
    entries: list[dict[str, Any]],
    target: int,
    column: str,
) -> None:
    _reset(engine)
    _append_all(session_maker, entries)
    seq = target % len(entries) + 1
    with as_dba(engine) as conn:
        current = conn.execute(select(LOG.c[column]).where(LOG.c.seq == seq)).scalar()
        conn.execute(update(LOG).where(LOG.c.seq == seq).values({column: _mutated(column, current)}))
    report = check(session_maker, batch_size=2)
    assert not report.ok
    assert report.first_bad_seq == seq, report


# --- the command -------------------------------------------------------------------------------


def _cli(args: list[str]) -> Any:
    from kiban.cli.main import app

    return CliRunner().invoke(app, args)


def test_cli_verify_on_a_data_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KIBAN_DATABASE_URL", raising=False)
    data = tmp_path / "data"
    assert _cli(["db", "upgrade", "--data", str(data)]).exit_code == 0
    settings_ = Settings(data_dir=data)
    from kiban.core.database import make_engine, session_factory

    engine = make_engine(settings_.database_url)
    try:
        add(session_factory(engine), 4)
        ok = _cli(["audit", "verify", "--data", str(data)])
        assert ok.exit_code == 0, ok.output
        assert "intact: 4 entries" in ok.output
        assert audit.checkpoint_path(Settings(data_dir=data)).is_file()
        listed = _cli(["audit", "history", SUBJECT, "--data", str(data)])
        assert listed.exit_code == 0
        assert len(listed.output.strip().splitlines()) == 4
        with as_dba(engine) as conn:
            conn.execute(update(LOG).where(LOG.c.seq == 2).values(purpose="tampered"))
        bad = _cli(["audit", "verify", "--data", str(data)])
        assert bad.exit_code == 1
        assert "entry 2 modified" in bad.output
    finally:
        engine.dispose()


def test_cli_verify_honours_kiban_database_url(
    db_url: str,
    session_maker: sessionmaker[Session],
    engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KIBAN_DATABASE_URL", db_url)
    data = tmp_path / "node"
    add(session_maker, 3)
    first = _cli(["audit", "verify", "--data", str(data), "--batch-size", "2"])
    assert first.exit_code == 0, first.output
    with as_dba(engine) as conn:
        conn.execute(delete(LOG).where(LOG.c.seq == 3))
        conn.execute(update(HEAD).values(seq=2, hash=row(engine, 2)["hash"]))
    cut = _cli(["audit", "verify", "--data", str(data)])
    assert cut.exit_code == 1
    assert "entry 3 truncated" in cut.output


def test_cli_reset_checkpoint_accepts_a_known_cut(
    db_url: str,
    session_maker: sessionmaker[Session],
    engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # After a restore from an older backup the tail is really gone; the operator says so.
    monkeypatch.setenv("KIBAN_DATABASE_URL", db_url)
    data = str(tmp_path / "node")
    add(session_maker, 4)
    assert _cli(["audit", "verify", "--data", data]).exit_code == 0
    with as_dba(engine) as conn:
        conn.execute(delete(LOG).where(LOG.c.seq == 4))
        conn.execute(update(HEAD).values(seq=3, hash=row(engine, 3)["hash"]))
    assert _cli(["audit", "verify", "--data", data, "--no-seal"]).exit_code == 1
    assert _cli(["audit", "verify", "--data", data]).exit_code == 1  # a failed run never reseals
    reset = _cli(["audit", "verify", "--data", data, "--reset-checkpoint"])
    assert reset.exit_code == 0, reset.output
    assert "sealed checkpoint at seq 3" in reset.output
    assert _cli(["audit", "verify", "--data", data]).exit_code == 0


def test_cli_verify_without_a_database_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KIBAN_DATABASE_URL", raising=False)
    result = _cli(["audit", "verify", "--data", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert not (tmp_path / "nowhere").exists()


def test_uuids_with_an_all_digit_last_group_are_accepted_but_numbers_alone_are_not(session: Session) -> None:
    from kiban.core.audit import AuditError as _AuditError
    from kiban.core.audit import record as _record

    common = {"actor": "clerk", "role": "clerk", "action": "read", "purpose": "p", "items": ["x"]}
    uuid_text = "0b9c1a52-3f1e-4c1a-9d2b-123456789012"
    _record(session, subject="", detail={"resident_id": uuid_text}, **common)
    hidden_numbers = (
        "123456789018",
        "1234 5678 9018",
        "1234-5678-9018",
        "id: 123456789018.",
        "１２３４５６７８９０１８",
    )
    for hidden in hidden_numbers:
        with pytest.raises(_AuditError):
            _record(session, subject="", detail={"note": hidden}, **common)
