"""``audit.record_batch`` as the bulk register path uses it: alike entries validated and framed once.

Entries that share everything but subject and items form a group; the group's checks and the
constant parts of its canonical form are made once. The chain must come out byte for byte as
:func:`audit.record_many` makes it, and a bad field in any entry of a group is still named.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from kiban.core import audit
from kiban.core.audit import AuditError
from kiban.core.models.audit import AuditEntry

WHEN = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)
SHARED: list[dict[str, Any]] = [
    {"actor": "clerk-a", "role": "clerk", "action": "update", "purpose": "住民票の異動（転居）"},
    {"actor": "clerk-a", "role": "clerk", "action": "update", "purpose": "住民票の異動（氏名変更）"},
    {"actor": "clerk-b", "role": "clerk", "action": "read", "purpose": "p", "organisation": None},
    {"actor": "clerk-a", "role": "clerk", "action": "update", "purpose": "p", "flags": ["dv_restricted"]},
]
DETAILS = [None, {"kind": "relocation"}, {"kind": "relocation", "n": 1}, {"kind": "name_change", "x": True}]
# Given (a default would be "now", a different moment on each side); the same moment twice.
TIMES = [WHEN, WHEN.astimezone(timezone(timedelta(hours=9))), WHEN + timedelta(microseconds=1)]


def entries() -> st.SearchStrategy[list[dict[str, Any]]]:
    one = st.builds(
        lambda shared, detail, when, subject, items, org: {
            **shared,
            "subject": subject,
            "items": items,
            **({"detail": detail} if detail is not None else {}),
            "occurred_at": when,
            **({"organisation": org} if "organisation" not in shared else {}),
        },
        st.sampled_from(SHARED),
        st.sampled_from(DETAILS),
        st.sampled_from(TIMES),
        st.sampled_from(["", "11111111119", "22222222228", "渡\U000e0100辺"]),
        st.lists(st.sampled_from(["town", "banchi", "family_name", "氏名"]), max_size=3),
        st.sampled_from(["131016", "131041"]),
    )
    return st.lists(one, min_size=1, max_size=25)


def _chain(session: Session, after: int) -> list[tuple[Any, ...]]:
    return [
        (e.seq, e.subject, e.items, e.detail, e.flags, e.organisation, e.prev_hash, e.hash)
        for e in session.scalars(select(AuditEntry).where(AuditEntry.seq > after).order_by(AuditEntry.seq))
    ]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=entries())
def test_record_batch_chains_exactly_as_record_many(
    session_maker: sessionmaker[Session], batch: list[dict[str, Any]]
) -> None:
    with session_maker.begin() as s:
        audit.record(s, actor="x", role="clerk", action="read", purpose="p", subject="", items=[])
    chains = []
    for bulk in (audit.record_many, audit.record_batch):
        with session_maker() as s:
            head = s.scalars(select(AuditEntry.seq).order_by(AuditEntry.seq.desc()).limit(1)).one()
            bulk(s, batch)
            s.flush()
            chains.append(_chain(s, head))
            report = audit.verify(s)
            assert report.ok, report.summary()
            s.rollback()
    # Same head, same entries: the same seqs and the same hashes, byte for byte.
    assert chains[0] == chains[1]
    assert len(chains[1]) == len(batch)


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"items": ["town", 7]}, "entries[3].items[1]"),
        ({"items": "town"}, "entries[3].items"),
        ({"subject": "1234 5678 9012"}, "entries[3].subject"),
        ({"subject": None}, "entries[3].subject"),
        ({"detail": {"kind": "relocation", "password": "x"}}, "entries[3].detail.password"),
    ],
)
def test_a_bad_entry_late_in_a_group_is_named_and_nothing_is_written(
    session_maker: sessionmaker[Session], bad: dict[str, Any], field: str
) -> None:
    good = {**SHARED[0], "subject": "11111111119", "items": ["town"], "detail": {"kind": "relocation"}}
    with session_maker() as s:
        before = s.scalars(select(AuditEntry.seq)).all()
    with pytest.raises(AuditError) as caught, session_maker.begin() as s:
        audit.record_batch(s, [good, good, good, {**good, **bad}, good])
    assert caught.value.field == field
    with session_maker() as s:
        assert s.scalars(select(AuditEntry.seq)).all() == before


def test_batch_append_validates_first_and_chains_in_its_steps(session_maker: sessionmaker[Session]) -> None:
    good = {**SHARED[0], "subject": "11111111119", "items": ["town"], "occurred_at": WHEN}
    with pytest.raises(AuditError) as caught:
        audit.BatchAppend([good, {**good, "subject": "123456789012"}])  # no session needed to refuse
    assert caught.value.field == "entries[1].subject"
    batch = audit.BatchAppend([good, {**good, "subject": "22222222228"}])
    with pytest.raises(AssertionError):
        batch.chain()  # claim() first
    chains = []
    with session_maker() as s:
        head = s.scalars(select(AuditEntry.seq).order_by(AuditEntry.seq.desc()).limit(1)).first() or 0
        audit.record_many(s, [good, {**good, "subject": "22222222228"}])
        s.flush()
        chains.append(_chain(s, head))
        s.rollback()
    with session_maker() as s:
        batch.claim(s)
        batch.chain()
        assert batch.write(s) == range(head + 1, head + 3)
        chains.append(_chain(s, head))
        assert audit.verify(s).ok
        s.rollback()
    assert chains[0] == chains[1]
    assert audit.BatchAppend([]).write(None) == range(0)  # type: ignore[arg-type,unused-ignore]
