"""The audit log's fast path: its serialiser is byte-identical to RFC 8785, and ``record_batch`` chains.

``kiban.core.audit`` hashes each entry with a one-pass JCS serialiser instead of ``rfc8785.dumps``;
these tests hold it to the reference for every JSON value (and many that are not), so the
hashes in docs/audit.md stay recomputable by any JCS library.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
import rfc8785
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Table, func, select
from sqlalchemy.orm import Session, sessionmaker

from kiban.core import audit
from kiban.core.audit import AuditError, verify
from kiban.core.models.audit import AuditEntry, AuditHead

LOG = cast(Table, AuditEntry.__table__)
HEAD = cast(Table, AuditHead.__table__)

# Every character class that matters to JCS: controls, quotes, backslash, DEL, BMP, astral
# planes, variation selectors and lone surrogates (which must be refused, not written).
_TEXT = st.text(
    st.one_of(
        st.characters(codec=None),
        st.sampled_from(['"', "\\", "\x00", "\x1f", "\x7f", "\b", "\f", "\n", "\r", "\t", "\u2028"]),
        st.sampled_from(["\ud800", "\udfff", "\U0001f600", "\U000e0100", "ｶ", "ﾞ", "é"]),
    ),
    max_size=12,
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1),
    st.integers(),  # also outside the safe range, which JCS refuses
    st.floats(allow_nan=True, allow_infinity=True),
    _TEXT,
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(
            st.one_of(_TEXT, st.sampled_from(["a", "b", "B", "ä", "\U0001f600", "\uff61"])), inner, max_size=4
        ),
        st.dictionaries(st.integers(), inner, min_size=1, max_size=2),  # keys must be strings
    ),
    max_leaves=12,
)


def _outcome(produce: Any) -> bytes | str:
    """The bytes, or the kind of refusal (both refuse the same inputs, maybe in other words)."""
    try:
        return cast(bytes, produce())
    except (rfc8785.CanonicalizationError, UnicodeEncodeError):
        return "refused"


@settings(max_examples=1500, deadline=None)
@given(_VALUES)
def test_fast_serialiser_is_byte_identical_to_rfc8785(value: Any) -> None:
    assert _outcome(lambda: audit._jcs(value).encode("utf-8")) == _outcome(lambda: rfc8785.dumps(value))


_ENTRY = st.fixed_dictionaries(
    {
        "seq": st.integers(min_value=1, max_value=2**53 - 1),
        "occurred_at": st.datetimes(timezones=st.just(UTC)),
        "actor": _TEXT,
        "role": _TEXT,
        "organisation": st.none() | _TEXT,
        "action": _TEXT,
        "purpose": _TEXT,
        "subject": _TEXT,
        "items": st.lists(_TEXT, max_size=3),
        "detail": st.dictionaries(_TEXT, _VALUES, max_size=3),
        "flags": st.lists(_TEXT, max_size=2),
        "prev_hash": st.just(audit.GENESIS_HASH) | st.text("0123456789abcdef", min_size=64, max_size=64),
    }
)


def _reference_form(fields: dict[str, Any]) -> bytes:
    """docs/audit.md's definition, spelled out with the reference library."""
    document = {k: v for k, v in fields.items() if k != "hash"}
    document["occurred_at"] = fields["occurred_at"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    document["v"] = 1
    return rfc8785.dumps(document)


@settings(max_examples=500, deadline=None)
@given(_ENTRY)
def test_canonical_form_of_any_entry_is_the_reference_one(fields: dict[str, Any]) -> None:
    assert _outcome(lambda: audit.canonical_form(fields)) == _outcome(lambda: _reference_form(fields))


def test_the_documented_example_still_hashes_the_same() -> None:
    fields = {
        "seq": 1,
        "occurred_at": datetime(2026, 4, 1, 9, 30, 0, 5, tzinfo=UTC),
        "actor": "clerk-tanaka",
        "role": "clerk",
        "organisation": "131016",
        "action": "read",
        "purpose": "住民票の写しの交付",
        "subject": "38472916503",
        "items": ["name", "address"],
        "detail": {"window": 2, "copies": 1},
        "flags": ["dv_restricted"],
        "prev_hash": audit.GENESIS_HASH,
    }
    assert audit.compute_hash(fields) == "dfa9fb9eff2a0e865699307fc7bd570c8a800f424344992523dc5cadccfa1361"


def _entry(subject: str, **overrides: Any) -> dict[str, Any]:
    return {
        "actor": "bulk-clerk",
        "role": "clerk",
        "action": "update",
        "purpose": "住民票の異動（転居）",
        "subject": subject,
        "items": ["town", "banchi"],
        "organisation": "131041",
        "detail": {"kind": "relocation"},
        **overrides,
    }


def _head(session: Session) -> tuple[int, str] | None:
    row = session.execute(select(HEAD.c.seq, HEAD.c.hash)).first()
    return None if row is None else (int(row[0]), str(row[1]))


def test_record_batch_chains_after_record_and_verifies(session_maker: sessionmaker[Session]) -> None:
    with session_maker.begin() as session:
        first = audit.record(session, **_entry("11111111119"))
    subjects = [f"{i:011d}" for i in range(40)]
    with session_maker.begin() as session:
        seqs = audit.record_batch(
            session, [_entry(s, detail={"kind": "relocation", "n": i}) for i, s in enumerate(subjects)]
        )
        assert audit.record_batch(session, []) == range(0)
    assert seqs == range(2, 42)
    with session_maker() as session:
        rows = session.execute(select(LOG).order_by(LOG.c.seq)).mappings().all()
        assert [r["subject"] for r in rows] == ["11111111119", *subjects]
        assert rows[1]["prev_hash"] == first.hash
        assert [r["detail"]["n"] for r in rows[1:]] == list(range(40))
        # Each stored hash is the reference library's hash of the stored row.
        for row in rows:
            assert row["hash"] == hashlib.sha256(_reference_form(dict(row))).hexdigest()
        assert _head(session) == (41, rows[-1]["hash"])
        report = verify(session)
        assert (report.ok, report.checked) == (True, 41)


def test_record_many_returns_the_entries_it_stored(session_maker: sessionmaker[Session]) -> None:
    moment = datetime(2026, 11, 25, 1, 2, 3, 456789, tzinfo=UTC)
    entries = [_entry(f"{i:011d}", occurred_at=moment, flags=["bulk", "bulk"]) for i in range(3)]
    with session_maker.begin() as session:
        written = audit.record_many(session, entries)
    hashes = [e.hash for e in written]
    with session_maker() as session:
        rows = session.execute(select(LOG).order_by(LOG.c.seq)).mappings().all()
    assert [r["hash"] for r in rows] == hashes
    assert [r["flags"] for r in rows] == [["bulk"]] * 3


@pytest.mark.parametrize(
    ("overrides", "field", "rule"),
    [
        ({"subject": "1234 5678 9018"}, "entries[2].subject", "12-digit"),
        ({"purpose": "a\nb"}, "entries[2].purpose", "control characters"),
        ({"detail": {"pin": "1"}}, "entries[2].detail.pin", "secret"),
        ({"detail": {"x": float("nan")}}, "entries[2].detail", "RFC 8785"),
        ({"items": "name"}, "entries[2].items", "single string"),
    ],
)
def test_record_batch_refuses_the_whole_batch_and_writes_nothing(
    session_maker: sessionmaker[Session], overrides: dict[str, Any], field: str, rule: str
) -> None:
    with session_maker.begin() as session:
        audit.record(session, **_entry("11111111119"))
    with session_maker() as session:
        before = _head(session)
    # The same good texts come first, so the per-call cache of checked texts is warm.
    batch = [_entry("22222222228"), _entry("22222222228"), {**_entry("22222222228"), **overrides}]
    with session_maker() as session, session.begin(), pytest.raises(AuditError) as caught:
        audit.record_batch(session, batch)
    assert caught.value.field == field
    assert rule in caught.value.rule
    with session_maker() as session:
        assert _head(session) == before
        assert session.scalar(select(func.count()).select_from(LOG)) == 1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(
            st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=8),
            st.dictionaries(
                st.text("abcxyzé", min_size=1, max_size=3),
                st.integers(-1000, 1000)
                | st.text(max_size=5).filter(lambda t: not any(c < " " or c == "\x7f" for c in t)),
                max_size=2,
            ),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_stored_batches_verify_with_the_reference(
    session_maker: sessionmaker[Session], batch: list[tuple[str, dict[str, Any]]]
) -> None:
    entries = [
        _entry(
            "",
            purpose=purpose,
            detail=detail,
            occurred_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(microseconds=i),
        )
        for i, (purpose, detail) in enumerate(batch)
    ]
    try:
        with session_maker.begin() as session:
            audit.record_batch(session, entries)
    except AuditError:
        return  # refused texts (e.g. a secret-looking key) are covered above
    with session_maker() as session:
        rows = session.execute(select(LOG).order_by(LOG.c.seq.desc()).limit(len(entries))).mappings().all()
        for row in rows:
            assert row["hash"] == hashlib.sha256(_reference_form(dict(row))).hexdigest()
        assert verify(session).ok
