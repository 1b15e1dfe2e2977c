"""Audit log (監査ログ, SPEC K10, §4): an append-only, hash-chained record of every access to personal data.

Capabilities call :func:`record` (or :func:`audited_read`) inside the transaction that reads or
writes personal data, so the entry commits or rolls back with the work it describes. Each entry
carries the SHA-256 of its own canonical form, which includes the previous entry's hash; so an
entry cannot be modified, removed or moved without breaking the chain. :func:`verify` walks the
chain in batches; :func:`verify_data_dir` adds the sealed checkpoint that catches what a chain
alone cannot (a cut-off tail, a chain recomputed from some point on). docs/audit.md has the
canonical form byte for byte and the threat model.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any, cast

import rfc8785
from sqlalchemy import BigInteger, Table, bindparam, func, insert, select, update
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session

from kiban.core.config import Settings
from kiban.core.database import utcnow
from kiban.core.logging import is_secret_name
from kiban.core.models.audit import AuditEntry, AuditHead

GENESIS_HASH = "0" * 64
# Part of every hashed entry, so that the canonical form can change later without ambiguity.
FORMAT_VERSION = 1
DETAIL_MAX_BYTES = 2048
DEFAULT_BATCH_SIZE = 5000

CHECKPOINT_FILE = "audit-checkpoint.json"
SEAL_KEY_FILE = "audit-seal.key"

# Common actions; others are allowed when they match _ACTION.
ACTIONS: tuple[str, ...] = ("read", "create", "update", "delete", "provide", "refuse", "issue", "print")

_ACTION = re.compile(r"[a-z][a-z0-9_]{0,31}")
_FLAG = re.compile(r"[a-z][a-z0-9_]{0,63}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HEX64 = re.compile(r"[0-9a-f]{64}")
# A 個人番号 written on its own (also 4-4-4); not the digits inside a UUID or another token,
# which would refuse about one UUID in 281 whose last group happens to be all digits.
_NUMBER_ALONE = re.compile(r"(?<![0-9A-Za-z\-])\d{4}[ \-]?\d{4}[ \-]?\d{4}(?![0-9A-Za-z\-])")

_LOG = cast(Table, AuditEntry.__table__)
_HEAD = cast(Table, AuditHead.__table__)
# Built once: statement construction costs more than executing them on SQLite.
_BUMP = (
    update(_HEAD)
    .where(_HEAD.c.id == 1)
    .values(seq=_HEAD.c.seq + bindparam("count", type_=BigInteger()))
    .returning(_HEAD.c.seq, _HEAD.c.hash)
)
_SET_HEAD_HASH = update(_HEAD).where(_HEAD.c.id == 1).values(hash=bindparam("new_hash"))
_HASHED_FIELDS = (
    "seq",
    "occurred_at",
    "actor",
    "role",
    "organisation",
    "action",
    "purpose",
    "subject",
    "items",
    "detail",
    "flags",
    "prev_hash",
)


class AuditError(ValueError):
    """An audit entry was refused: ``field`` broke ``rule``. Nothing was written."""

    def __init__(self, field: str, rule: str) -> None:
        self.field = field
        self.rule = rule
        super().__init__(f"audit entry field {field!r}: {rule}")


class AuditChainError(RuntimeError):
    """The chain cannot be appended to safely (its head row is gone while entries exist)."""


class CheckpointError(RuntimeError):
    """The sealed checkpoint in the data directory is unreadable, unsigned or forged."""


class Problem(StrEnum):
    """What :func:`verify` found wrong, in the words an auditor would use."""

    MODIFIED = "modified"  # an entry's content no longer matches its hash
    DELETED = "deleted"  # a gap in seq
    REORDERED = "reordered"  # an entry sits where neither its content nor its link belong
    TRUNCATED = "truncated"  # entries are missing from the end
    HEAD_MISMATCH = "head_mismatch"  # the chain disagrees with its head or the sealed checkpoint
    BAD_CHECKPOINT = "bad_checkpoint"  # the checkpoint file itself is forged or unreadable


@dataclass(frozen=True)
class Checkpoint:
    """A sealed (HMAC-signed) record that the chain once reached ``seq`` with ``hash``."""

    seq: int
    hash: str
    sealed_at: datetime
    mac: str


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of :func:`verify`. ``first_bad_seq`` names the earliest entry that cannot be trusted."""

    ok: bool
    checked: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None = None
    problem: Problem | None = None
    message: str = ""
    checkpoint_seq: int | None = None

    def summary(self) -> str:
        if self.ok:
            text = (
                f"audit log intact: {self.checked} entries verified, "
                f"head seq {self.head_seq} {self.head_hash}"
            )
            if self.checkpoint_seq is not None:
                text += f"; sealed checkpoint at seq {self.checkpoint_seq}"
            return text
        where = f"entry {self.first_bad_seq}" if self.first_bad_seq is not None else "checkpoint"
        problem = self.problem.value if self.problem else "problem"
        return (
            f"audit log TAMPERED: {where} {problem}: {self.message} "
            f"({self.checked} entries verified before it)"
        )


# --- canonical form -----------------------------------------------------------------------------


def format_time(moment: datetime) -> str:
    """The canonical text of a timestamp: UTC, microseconds, ``Z`` (``2026-11-25T07:43:19.123456Z``)."""
    if moment.tzinfo is None:
        raise AuditError("occurred_at", "must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_form(fields: Mapping[str, Any]) -> bytes:
    """RFC 8785 (JCS) bytes of the hashed fields of an entry plus ``"v": 1``; see docs/audit.md."""
    try:
        return _canonical_text(fields, format_time(fields["occurred_at"])).encode("utf-8")
    except UnicodeEncodeError:
        pass  # a lone surrogate: let the reference implementation refuse it in its own words
    document: dict[str, Any] = {name: fields[name] for name in _HASHED_FIELDS}
    document["occurred_at"] = format_time(fields["occurred_at"])
    document["v"] = FORMAT_VERSION
    return rfc8785.dumps(document)


def compute_hash(fields: Mapping[str, Any]) -> str:
    """SHA-256 (lower-case hex) of :func:`canonical_form`."""
    return hashlib.sha256(canonical_form(fields)).hexdigest()


# The JCS text of the values the audit log holds, in one pass and with the members of an entry
# written in their (fixed) canonical order. It is byte-identical to ``rfc8785.dumps``
# (tests/test_audit_fast.py proves it with hypothesis); anything that is not a plain str, int,
# bool, None, list or dict (floats, subclasses, out-of-range integers) goes to ``rfc8785`` itself.
# ``json``'s C string encoder escapes exactly what RFC 8785 escapes: '"', '\\' and U+0000–U+001F,
# the latter as \b \t \n \f \r or lower-case \u00xx.
_encode_str = cast(Callable[[str], str], encode_basestring)
_INT_LIMIT = 2**53 - 1


def _jcs(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return _encode_str(value)
    if kind is list:
        return "[" + ",".join([_jcs(item) for item in value]) + "]"
    if kind is dict:
        if not value:
            return "{}"
        # RFC 8785 orders members by UTF-16 code units: for ASCII keys, the plain order.
        if all(type(key) is str and key.isascii() for key in value):
            return "{" + ",".join([_encode_str(k) + ":" + _jcs(value[k]) for k in sorted(value)]) + "}"
    elif value is None:
        return "null"
    elif kind is bool:
        return "true" if value else "false"
    elif kind is int and -_INT_LIMIT <= value <= _INT_LIMIT:
        return str(value)
    return rfc8785.dumps(value).decode("utf-8")


def _canonical_text(fields: Mapping[str, Any], occurred_at: str) -> str:
    # Members in RFC 8785 order (all ASCII names): action, actor, detail, flags, items,
    # occurred_at, organisation, prev_hash, purpose, role, seq, subject, v.
    return "".join(
        [
            '{"action":',
            _jcs(fields["action"]),
            ',"actor":',
            _jcs(fields["actor"]),
            ',"detail":',
            _jcs(fields["detail"]),
            ',"flags":',
            _jcs(fields["flags"]),
            ',"items":',
            _jcs(fields["items"]),
            ',"occurred_at":',
            _jcs(occurred_at),
            ',"organisation":',
            _jcs(fields["organisation"]),
            ',"prev_hash":',
            _jcs(fields["prev_hash"]),
            ',"purpose":',
            _jcs(fields["purpose"]),
            ',"role":',
            _jcs(fields["role"]),
            ',"seq":',
            _jcs(fields["seq"]),
            ',"subject":',
            _jcs(fields["subject"]),
            ',"v":1}',
        ]
    )


def entry_hash(entry: AuditEntry) -> str:
    """The hash ``entry`` should carry, recomputed from its columns."""
    return compute_hash({name: getattr(entry, name) for name in _HASHED_FIELDS})


# --- appending ----------------------------------------------------------------------------------


def record(
    session: Session,
    *,
    actor: str,
    role: str,
    action: str,
    purpose: str,
    subject: str,
    items: Sequence[str],
    organisation: str | None = None,
    detail: Mapping[str, Any] | None = None,
    flags: Iterable[str] = (),
    occurred_at: datetime | None = None,
) -> AuditEntry:
    """Append one entry to the audit log in ``session``'s transaction and return it.

    ``actor`` is who acted (a user name or a system's id), ``role`` the role they acted in,
    ``organisation`` their municipality code or agency id, ``action`` what they did (see
    :data:`ACTIONS`), ``purpose`` why (e.g. a 事務 code), ``subject`` whose data (a 住民票コード;
    "" when no one's), ``items`` which data items, ``detail`` a small JSON object of context
    (never secrets, never personal data itself), ``flags`` markers such as ``dv_restricted``.

    The entry is written but not committed: a rollback of the caller's transaction drops it and
    the chain's head with it. Appends are serialised by the head row's lock, held until the
    caller's transaction ends; keep audited transactions short. Bad input raises
    :class:`AuditError` and writes nothing.
    """
    fields = _validated(
        actor=actor,
        role=role,
        action=action,
        purpose=purpose,
        subject=subject,
        items=items,
        organisation=organisation,
        detail=detail,
        flags=flags,
        occurred_at=occurred_at if occurred_at is not None else utcnow(),
    )
    return _append(session, [fields])[0]


_REQUIRED = frozenset({"actor", "role", "action", "purpose", "subject", "items"})
_OPTIONAL = frozenset({"organisation", "detail", "flags", "occurred_at"})


def record_many(session: Session, entries: Iterable[Mapping[str, Any]]) -> list[AuditEntry]:
    """Append several entries at once, in order (bulk provisions, data loads, batch jobs).

    Each mapping takes :func:`record`'s keyword arguments. All are validated before anything is
    written (an error names ``entries[i].field``); then one head update claims all their seqs and
    one multi-row INSERT (COPY on PostgreSQL) writes them, several times faster than a
    :func:`record` per entry.
    """
    validated = _validated_many(entries)
    _write(session, validated)
    return [AuditEntry(**fields) for fields in validated]


def record_batch(session: Session, entries: Iterable[Mapping[str, Any]]) -> range:
    """:func:`record_many` for bulk paths that need no entries back: returns the seqs appended.

    Same validation, chain and transaction semantics; it skips building an ORM object per entry,
    which costs about as much as hashing it. Entries that share everything but ``subject`` and
    ``items`` (a bulk job's usually do) are validated once, and the constant parts of their
    canonical form are written once.
    """
    batch = BatchAppend(entries)
    batch.claim(session)
    batch.chain()
    return batch.write(session)


class BatchAppend:
    """:func:`record_batch` in its steps, for a bulk path that overlaps the hashing with other work.

    ``BatchAppend(entries)`` validates (an :class:`AuditError` names ``entries[i].field``);
    ``claim(session)`` takes the head row's lock and the seqs, as :func:`record` does first;
    ``chain()`` hashes, in Python only, so it may run while the session's connection works on
    another statement; ``write(session)`` writes the entries and the head, returning the seqs.
    The steps must run in this order, in one transaction.
    """

    def __init__(self, entries: Iterable[Mapping[str, Any]]) -> None:
        self.entries = _validated_batch(entries)
        self.head: tuple[int, str] | None = None
        self.rows: list[_ChainedRow] = []

    def claim(self, session: Session) -> None:
        if self.entries:
            self.head = _claim_seqs(session, len(self.entries))

    def chain(self) -> None:
        if self.entries:
            assert self.head is not None, "claim() first"
            self.rows = _chain_batch(self.entries, *self.head)

    def write(self, session: Session) -> range:
        if not self.entries:
            return range(0)
        assert len(self.rows) == len(self.entries), "chain() first"
        _write_chained(session, self.rows)
        return range(self.rows[0][1], self.rows[-1][1] + 1)


# A bulk entry: its shared fields (one dict per group of alike entries), subject, items.
_BatchEntry = tuple[dict[str, Any], str, list[str]]


def _group_key(arguments: Mapping[str, Any]) -> Any:
    """What entries that validate alike share (but subject and items); None when not plainly hashable."""
    detail = arguments["detail"]
    flags = arguments["flags"]
    if not (
        type(arguments["actor"]) is str
        and type(arguments["role"]) is str
        and type(arguments["action"]) is str
        and type(arguments["purpose"]) is str
        and (arguments["organisation"] is None or type(arguments["organisation"]) is str)
        and type(arguments["occurred_at"]) is datetime
        and (type(flags) is str or (type(flags) in (list, tuple) and all(type(f) is str for f in flags)))
    ):
        return None
    if detail is not None:
        # The same test as _detail_cached: a small dict of plain values, told apart by repr.
        if (
            type(detail) is not dict
            or len(detail) > 8
            or not all(
                type(k) is str and (type(v) in (str, int, bool) or v is None) for k, v in detail.items()
            )
        ):
            return None
        detail = repr(detail)
    return (
        arguments["actor"],
        arguments["role"],
        arguments["action"],
        arguments["purpose"],
        arguments["organisation"],
        arguments["occurred_at"],
        detail,
        flags if type(flags) is str else tuple(flags),
    )


def _validated_batch(entries: Iterable[Mapping[str, Any]]) -> list[_BatchEntry]:
    now = utcnow()
    texts: dict[Any, Any] = {}
    groups: dict[Any, dict[str, Any]] = {}
    out: list[_BatchEntry] = []
    for i, entry in enumerate(entries):
        arguments = _arguments(i, entry, now)
        try:
            key = _group_key(arguments)
            shared = groups.get(key) if key is not None else None
            if shared is None:
                fields = _validated(**arguments, texts=texts)
                shared = {k: v for k, v in fields.items() if k not in ("subject", "items")}
                if key is not None:
                    groups[key] = shared
                out.append((shared, fields["subject"], fields["items"]))
            else:
                # The shared fields passed already; what is left is checked as _validated
                # checks it, in the same order (items, then subject).
                items = _validated_items(arguments["items"], texts)
                out.append((shared, _cached_text(texts, "subject", arguments["subject"], 64, True), items))
        except AuditError as exc:
            raise AuditError(f"entries[{i}].{exc.field}", exc.rule) from exc
    return out


# An entry chained: shared fields, seq, subject, items, items as JCS, prev_hash, hash.
_ChainedRow = tuple[dict[str, Any], int, str, list[str], str, str, str]


def _chain_batch(entries: list[_BatchEntry], last_seq: int, prev_hash: str) -> list[_ChainedRow]:
    """:func:`_write`'s chaining for :func:`_validated_batch`'s entries: the same hashes."""
    first = last_seq - len(entries) + 1
    encode = _encode_str
    sha256 = hashlib.sha256
    # Per group: the canonical text around items, prev_hash, seq and subject (members in
    # RFC 8785 order, as _canonical_text writes them).
    parts: dict[int, tuple[str, str, str]] = {}
    items_text: dict[tuple[str, ...], str] = {}
    rows: list[_ChainedRow] = []
    seq = first - 1
    for shared, subject, items in entries:
        seq += 1
        part = parts.get(id(shared))
        if part is None:
            part = parts[id(shared)] = (
                '{"action":'
                + _jcs(shared["action"])
                + ',"actor":'
                + _jcs(shared["actor"])
                + ',"detail":'
                + _jcs(shared["detail"])
                + ',"flags":'
                + _jcs(shared["flags"])
                + ',"items":',
                ',"occurred_at":'
                + _jcs(format_time(shared["occurred_at"]))
                + ',"organisation":'
                + _jcs(shared["organisation"])
                + ',"prev_hash":',
                ',"purpose":' + _jcs(shared["purpose"]) + ',"role":' + _jcs(shared["role"]) + ',"seq":',
            )
        key = tuple(items)
        listed = items_text.get(key)
        if listed is None:
            listed = items_text[key] = _jcs(items)
        text = "".join(
            (
                part[0],
                listed,
                part[1],
                encode(prev_hash),
                part[2],
                _jcs(seq),
                ',"subject":',
                encode(subject),
                ',"v":1}',
            )
        )
        try:
            canonical = text.encode("utf-8")
        except UnicodeEncodeError:  # refused by validation already; the reference has the last word
            canonical = canonical_form(
                shared | {"seq": seq, "subject": subject, "items": items, "prev_hash": prev_hash}
            )
        digest = sha256(canonical).hexdigest()
        rows.append((shared, seq, subject, items, listed, prev_hash, digest))
        prev_hash = digest
    return rows


def _write_chained(session: Session, rows: list[_ChainedRow]) -> None:
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        session.execute(
            insert(_LOG),
            [
                shared | {"seq": seq, "subject": subject, "items": items, "prev_hash": prev, "hash": digest}
                for shared, seq, subject, items, _, prev, digest in rows
            ],
        )
    else:
        driver = connection.connection.driver_connection
        assert driver is not None
        statement = f"COPY {_LOG.name} ({', '.join(_COPY_COLUMNS)}) FROM STDIN"
        # detail as json.dumps writes it (see _insert_entries), once per group.
        constant: dict[int, tuple[Any, ...]] = {}
        with driver.cursor() as cursor, cursor.copy(statement) as copy:
            write = copy.write_row
            for shared, seq, subject, _, listed, prev, digest in rows:
                c = constant.get(id(shared))
                if c is None:
                    c = constant[id(shared)] = (
                        shared["occurred_at"],
                        shared["actor"],
                        shared["role"],
                        shared["organisation"],
                        shared["action"],
                        shared["purpose"],
                        json.dumps(shared["detail"]),
                        _jcs(shared["flags"]),
                    )
                write((seq, c[0], c[1], c[2], c[3], c[4], c[5], subject, listed, c[6], c[7], prev, digest))
    session.execute(_SET_HEAD_HASH, {"new_hash": rows[-1][6]})


def _arguments(i: int, entry: Any, now: datetime) -> dict[str, Any]:
    """record()'s keyword arguments of ``entries[i]`` with the defaults filled in."""
    if not isinstance(entry, Mapping):
        raise AuditError(f"entries[{i}]", "must be a mapping of record()'s keyword arguments")
    unknown = set(entry) - _REQUIRED - _OPTIONAL
    missing = _REQUIRED - set(entry)
    if unknown or missing:
        problem = f"unknown fields {sorted(unknown)}" if unknown else f"missing fields {sorted(missing)}"
        raise AuditError(f"entries[{i}]", problem)
    arguments = {"organisation": None, "detail": None, "flags": (), **entry}
    if arguments.get("occurred_at") is None:
        arguments["occurred_at"] = now
    return arguments


def _validated_many(entries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    now = utcnow()
    validated = []
    # Bulk entries repeat actor, role, purpose…: check each distinct text once per call.
    texts: dict[Any, Any] = {}
    for i, entry in enumerate(entries):
        arguments = _arguments(i, entry, now)
        try:
            validated.append(_validated(**arguments, texts=texts))
        except AuditError as exc:
            raise AuditError(f"entries[{i}].{exc.field}", exc.rule) from exc
    return validated


def _append(session: Session, validated: list[dict[str, Any]]) -> list[AuditEntry]:
    _write(session, validated)
    return [AuditEntry(**fields) for fields in validated]


def _write(session: Session, validated: list[dict[str, Any]]) -> range:
    """Chain ``validated`` (adds seq, prev_hash, hash to each) and write it; the seqs taken."""
    if not validated:
        return range(0)
    last_seq, prev_hash = _claim_seqs(session, len(validated))
    first = last_seq - len(validated) + 1
    seq = first - 1
    times: dict[datetime, str] = {}
    for fields in validated:
        seq += 1
        fields["seq"] = seq
        fields["prev_hash"] = prev_hash
        moment = fields["occurred_at"]
        text = times.get(moment)
        if text is None:
            text = times[moment] = format_time(moment)
        try:
            canonical = _canonical_text(fields, text).encode("utf-8")
        except UnicodeEncodeError:  # refused by validation already; the reference has the last word
            canonical = canonical_form(fields)
        fields["hash"] = prev_hash = hashlib.sha256(canonical).hexdigest()
    _insert_entries(session, validated)
    session.execute(_SET_HEAD_HASH, {"new_hash": prev_hash})
    return range(first, last_seq + 1)


_COPY_COLUMNS = ("seq", *_HASHED_FIELDS[1:-1], "prev_hash", "hash")
_ITEMS_AT = _COPY_COLUMNS.index("items")
_FLAGS_AT = _COPY_COLUMNS.index("flags")
_DETAIL_AT = _COPY_COLUMNS.index("detail")


def _insert_entries(session: Session, validated: list[dict[str, Any]]) -> None:
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        # Core, not the ORM unit of work: an ORM flush per entry costs more than the hashing.
        session.execute(insert(_LOG), validated)
        return
    # COPY: one stream instead of a multi-row INSERT's bind parameters (13 per entry).
    driver = connection.connection.driver_connection
    assert driver is not None
    columns = _COPY_COLUMNS
    statement = f"COPY {_LOG.name} ({', '.join(columns)}) FROM STDIN"
    dumps = json.dumps
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        for fields in validated:
            row = [fields[name] for name in columns]
            # items and flags are lists of strings; detail goes through json.dumps as SQLAlchemy
            # would write it, which keeps 1.0 a float (JCS would write 1 and it would read back
            # as an int, outside the safe range for 2**53).
            row[_ITEMS_AT] = _jcs(row[_ITEMS_AT])
            row[_FLAGS_AT] = _jcs(row[_FLAGS_AT])
            row[_DETAIL_AT] = dumps(row[_DETAIL_AT])
            copy.write_row(row)


def audited_read(
    session: Session,
    *,
    actor: str,
    role: str,
    purpose: str,
    subject: str,
    items: Sequence[str],
    organisation: str | None = None,
    detail: Mapping[str, Any] | None = None,
    flags: Iterable[str] = (),
) -> AuditEntry:
    """Record that ``actor`` reads ``items`` of ``subject`` for ``purpose`` (action ``read``).

    Call it in the same transaction as the read itself, before the data leaves the function:
    ``audited_read(session, actor=user, role="clerk", purpose="住民票の写しの交付",
    subject=code, items=["name", "address"])``.
    """
    return record(
        session,
        actor=actor,
        role=role,
        action="read",
        purpose=purpose,
        subject=subject,
        items=items,
        organisation=organisation,
        detail=detail,
        flags=flags,
    )


def history(session: Session, subject: str, *, limit: int = 1000) -> list[AuditEntry]:
    """The newest ``limit`` entries about ``subject``, oldest first (who looked at my data)."""
    newest = session.scalars(
        select(AuditEntry).where(AuditEntry.subject == subject).order_by(AuditEntry.seq.desc()).limit(limit)
    ).all()
    return list(reversed(newest))


def _claim_seqs(session: Session, count: int) -> tuple[int, str]:
    """Take the head row's lock by moving its seq on by ``count``; return the new seq and the old hash.

    Updating first (rather than reading first) is what keeps the chain linear: on PostgreSQL the
    UPDATE waits for the row lock and then sees the committed head; on SQLite it takes the write
    lock before anything is read.
    """
    row = session.execute(_BUMP, {"count": count}).first()
    if row is None:
        _recreate_head(session)
        row = session.execute(_BUMP, {"count": count}).one()
    return int(row.seq), str(row.hash)


def _recreate_head(session: Session) -> None:
    # The head row is missing: fine for an empty log (e.g. after TRUNCATE), not otherwise.
    values = {"id": 1, "seq": 0, "hash": GENESIS_HASH}
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        # Concurrent recreators wait on the conflict, then find the row made by the first.
        statement: Any = pg_insert(_HEAD).values(values).on_conflict_do_nothing()
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        statement = sqlite_insert(_HEAD).values(values).on_conflict_do_nothing()
    else:
        statement = insert(_HEAD).values(values)
    # RETURNING rather than rowcount, which some drivers leave at -1 for INSERT … ON CONFLICT.
    created = session.execute(statement.returning(_HEAD.c.id)).first() is not None
    if created and session.execute(select(func.max(_LOG.c.seq))).scalar() is not None:
        raise AuditChainError(
            "audit_head row is missing while audit_log has entries; run `kiban audit verify`"
        )


# --- validation ---------------------------------------------------------------------------------


def _text(field: str, value: object, *, max_len: int, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise AuditError(field, f"must be a string, not {type(value).__name__}")
    if not value and not allow_empty:
        raise AuditError(field, "must not be empty")
    if len(value) > max_len:
        raise AuditError(field, f"must be at most {max_len} characters (got {len(value)})")
    if _CONTROL.search(value):
        raise AuditError(field, "must not contain control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise AuditError(field, "must be valid Unicode (no lone surrogates)") from exc
    if _NUMBER_ALONE.search(unicodedata.normalize("NFKC", value)):
        raise AuditError(
            field, "must not contain a 12-digit number (a 個人番号 never goes into the audit log)"
        )
    return value


def _cached_text(
    texts: dict[Any, Any], field: str, value: object, max_len: int, allow_empty: bool = False
) -> str:
    """:func:`_text`, remembered per call for the texts bulk entries repeat."""
    if type(value) is not str:
        return _text(field, value, max_len=max_len, allow_empty=allow_empty)
    key = (field, max_len, allow_empty, value)
    checked = texts.get(key)
    if checked is None:
        checked = texts[key] = _text(field, value, max_len=max_len, allow_empty=allow_empty)
    return cast(str, checked)


def _validated_items(items: Sequence[str], texts: dict[Any, Any]) -> list[str]:
    if isinstance(items, str | bytes) or not isinstance(items, Sequence):
        raise AuditError("items", "must be a list of data item names, not a single string")
    return [_cached_text(texts, f"items[{i}]", item, 100) for i, item in enumerate(items)]


def _validated(
    *,
    actor: str,
    role: str,
    action: str,
    purpose: str,
    subject: str,
    items: Sequence[str],
    organisation: str | None,
    detail: Mapping[str, Any] | None,
    flags: Iterable[str],
    occurred_at: datetime,
    texts: dict[Any, Any] | None = None,
) -> dict[str, Any]:
    if texts is None:
        texts = {}
    cache = texts

    def text(field: str, value: object, max_len: int, allow_empty: bool = False) -> str:
        return _cached_text(cache, field, value, max_len, allow_empty)

    if not isinstance(action, str) or not _ACTION.fullmatch(action):
        raise AuditError("action", "must be lower-case letters, digits and '_', starting with a letter, ≤ 32")
    item_list = _validated_items(items, texts)
    flag_set = set()
    for flag in flags if not isinstance(flags, str) else [flags]:
        if not isinstance(flag, str) or not _FLAG.fullmatch(flag):
            raise AuditError(
                "flags", f"{flag!r} must be lower-case letters, digits and '_' (e.g. dv_restricted)"
            )
        flag_set.add(flag)
    if not isinstance(occurred_at, datetime) or occurred_at.tzinfo is None:
        raise AuditError("occurred_at", "must be a timezone-aware datetime")
    return {
        "occurred_at": occurred_at.astimezone(UTC),
        "actor": text("actor", actor, 200),
        "role": text("role", role, 64),
        "organisation": None if organisation is None else text("organisation", organisation, 64),
        "action": action,
        "purpose": text("purpose", purpose, 200),
        "subject": text("subject", subject, 64, allow_empty=True),
        "items": item_list,
        "detail": _detail_cached(detail, texts),
        "flags": sorted(flag_set),
    }


def _detail_cached(detail: Mapping[str, Any] | None, cache: dict[Any, Any]) -> dict[str, Any]:
    # Bulk entries often share one small detail: check it once per call. The key is the repr of
    # a plain dict of plain values (repr tells 1 from 1.0 and True); others are checked each time.
    if (
        type(detail) is not dict
        or len(detail) > 8
        or not all(type(k) is str and (type(v) in (str, int, bool) or v is None) for k, v in detail.items())
    ):
        return _validated_detail(detail)
    key = ("detail", repr(detail))
    checked = cache.get(key)
    if checked is None:
        checked = cache[key] = _validated_detail(detail)
    # A copy per entry, as _validated_detail makes: callers may mutate what they get back.
    return dict(checked)


def _validated_detail(detail: Mapping[str, Any] | None) -> dict[str, Any]:
    if detail is None:
        return {}
    if not isinstance(detail, Mapping):
        raise AuditError("detail", f"must be a JSON object (a mapping), not {type(detail).__name__}")
    plain = _plain_json("detail", detail)
    try:
        size = len(_jcs(plain).encode("utf-8"))
    except (rfc8785.CanonicalizationError, UnicodeEncodeError) as exc:
        raise AuditError("detail", f"must be canonical JSON (RFC 8785): {exc}") from exc
    if size > DETAIL_MAX_BYTES:
        raise AuditError("detail", f"must be at most {DETAIL_MAX_BYTES} bytes as JSON (got {size})")
    assert isinstance(plain, dict)
    return plain


def _plain_json(path: str, value: Any) -> Any:
    """A copy of ``value`` as plain JSON types, refusing secrets and 個人番号-like values."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            if not isinstance(key, str):
                raise AuditError(path, f"keys must be strings, not {type(key).__name__}")
            if is_secret_name(key):
                raise AuditError(f"{path}.{key}", "looks like a secret; secrets never go into the audit log")
            out[key] = _plain_json(f"{path}.{key}", inner)
        return out
    if isinstance(value, list | tuple):
        return [_plain_json(f"{path}[{i}]", inner) for i, inner in enumerate(value)]
    if isinstance(value, str):
        return _text(path, value, max_len=DETAIL_MAX_BYTES, allow_empty=True)
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        _text(path, str(value), max_len=DETAIL_MAX_BYTES)
        return value
    raise AuditError(
        path, f"must be JSON (string, number, boolean, null, list, object), not {type(value).__name__}"
    )


# --- verification -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Unreadable:
    seq: int
    error: str


def verify(
    session: Session,
    *,
    checkpoint: Checkpoint | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> VerifyReport:
    """Walk the whole chain in ``batch_size`` batches and report the first entry that fails.

    Checks, for each entry in seq order: no gap in seq, its hash matches its content, its
    prev_hash matches the previous entry's hash. Then that the last entry is the head recorded in
    ``audit_head`` and, given an (already authenticated) ``checkpoint``, that the chain still
    reaches the checkpoint's seq with the checkpoint's hash. Entries appended while it runs are
    verified too. Memory stays at one batch however long the log is.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    last_seq, last_hash, checked = 0, GENESIS_HASH, 0
    hash_at_checkpoint = GENESIS_HASH if checkpoint is not None and checkpoint.seq == 0 else None

    def bad(seq: int | None, problem: Problem, message: str) -> VerifyReport:
        return VerifyReport(False, checked, last_seq, last_hash, seq, problem, message)

    # Rows below seq 1 would never be walked, yet would show up in history(): catch them first.
    lowest = session.execute(select(func.min(_LOG.c.seq))).scalar()
    if lowest is not None and lowest < 1:
        return bad(int(lowest), Problem.MODIFIED, f"entry has seq {lowest}, outside the chain (starts at 1)")
    while True:
        rows = _fetch(session, last_seq, batch_size)
        if not rows:
            max_seq, head = _tail_and_head(session)
            if max_seq is not None and max_seq > last_seq:
                continue  # appended while we were reading
            break
        for row in rows:
            expected = last_seq + 1
            if isinstance(row, _Unreadable):
                return bad(row.seq, Problem.MODIFIED, f"entry {row.seq} cannot be read back: {row.error}")
            seq = int(row["seq"])
            if seq > expected:
                missing = (
                    f"entry {expected} is" if seq == expected + 1 else f"entries {expected}–{seq - 1} are"
                )
                return bad(expected, Problem.DELETED, f"{missing} missing (the next entry is {seq})")
            if seq < expected:
                return bad(seq, Problem.MODIFIED, f"entry has seq {seq}, outside the chain (starts at 1)")
            try:
                self_ok = compute_hash(row) == row["hash"]
            except (
                AuditError,
                rfc8785.CanonicalizationError,
                AttributeError,
                KeyError,
                TypeError,
                ValueError,
            ):
                self_ok = False
            link_ok = row["prev_hash"] == last_hash
            if not self_ok and link_ok:
                return bad(seq, Problem.MODIFIED, f"entry {seq}'s content does not match its hash")
            if not self_ok:
                return bad(
                    seq,
                    Problem.REORDERED,
                    f"entry {seq} does not belong here: neither its content nor its link to entry "
                    f"{seq - 1} match this position",
                )
            if not link_ok:
                if seq == 1:
                    return bad(1, Problem.MODIFIED, "entry 1 does not start from the genesis hash")
                return bad(
                    seq - 1,
                    Problem.MODIFIED,
                    f"entry {seq - 1}'s hash was recomputed after a change: entry {seq} still links "
                    "to the original",
                )
            last_seq, last_hash = seq, str(row["hash"])
            checked += 1
            if checkpoint is not None and seq == checkpoint.seq:
                hash_at_checkpoint = last_hash

    if head is None:
        if last_seq != 0:
            return bad(last_seq, Problem.HEAD_MISMATCH, "the audit_head row is missing")
    elif head[0] > last_seq:
        return bad(
            last_seq + 1,
            Problem.TRUNCATED,
            f"entries after {last_seq} are missing from the end (the head says {head[0]})",
        )
    elif head[0] < last_seq:
        return bad(
            head[0] + 1,
            Problem.HEAD_MISMATCH,
            f"entries after {head[0]} were added behind the log's back (the head says {head[0]})",
        )
    elif head[1] != last_hash:
        return bad(last_seq, Problem.HEAD_MISMATCH, f"entry {last_seq}'s hash differs from the head's")
    if checkpoint is not None:
        if checkpoint.seq > last_seq:
            return bad(
                last_seq + 1,
                Problem.TRUNCATED,
                f"entries after {last_seq} are missing: the sealed checkpoint of "
                f"{format_time(checkpoint.sealed_at)} saw seq {checkpoint.seq}",
            )
        if hash_at_checkpoint != checkpoint.hash:
            return bad(
                checkpoint.seq,
                Problem.HEAD_MISMATCH,
                f"the chain up to entry {checkpoint.seq} was rewritten: its hash differs from the "
                f"sealed checkpoint of {format_time(checkpoint.sealed_at)}",
            )
    return VerifyReport(True, checked, last_seq, last_hash)


def _fetch(session: Session, after: int, limit: int) -> list[Mapping[str, Any] | _Unreadable]:
    """Up to ``limit`` entries after seq ``after``; a row whose columns cannot be decoded is reported."""
    query = select(_LOG).where(_LOG.c.seq > after).order_by(_LOG.c.seq).limit(limit)
    try:
        return [dict(row._mapping) for row in session.execute(query)]
    except (StatementError, ValueError, TypeError):
        pass
    # Some row holds a value the column type cannot decode (e.g. broken JSON): find which.
    seqs = session.scalars(select(_LOG.c.seq).where(_LOG.c.seq > after).order_by(_LOG.c.seq).limit(limit))
    rows: list[Mapping[str, Any] | _Unreadable] = []
    for seq in list(seqs):
        try:
            rows.append(dict(session.execute(select(_LOG).where(_LOG.c.seq == seq)).one()._mapping))
        except (StatementError, ValueError, TypeError) as exc:
            rows.append(_Unreadable(int(seq), type(exc).__name__))
    return rows


def _tail_and_head(session: Session) -> tuple[int | None, tuple[int, str] | None]:
    # One statement, so that both values come from the same snapshot.
    tail = select(func.max(_LOG.c.seq)).scalar_subquery()
    row = session.execute(
        select(tail, _HEAD.c.seq, _HEAD.c.hash).select_from(_HEAD).where(_HEAD.c.id == 1)
    ).first()
    if row is None:
        return session.execute(select(func.max(_LOG.c.seq))).scalar(), None
    return row[0], (int(row[1]), str(row[2]))


# --- sealed checkpoint --------------------------------------------------------------------------


def _mac(key: bytes, seq: int, digest: str, sealed_at: str) -> str:
    message = f"kiban-audit-checkpoint\n{FORMAT_VERSION}\n{seq}\n{digest}\n{sealed_at}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def seal_key(settings: Settings, *, create: bool = False) -> bytes | None:
    """The checkpoint's HMAC key from ``keys/audit-seal.key``; made (0600) when ``create``."""
    path = settings.keys_dir / SEAL_KEY_FILE
    if not path.exists():
        if not create:
            return None
        settings.ensure_dirs()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
    try:
        return bytes.fromhex(path.read_text().strip())
    except ValueError as exc:
        raise CheckpointError(f"{path} does not hold a hex key") from exc


def read_checkpoint(settings: Settings) -> Checkpoint | None:
    """The sealed checkpoint of ``settings.data_dir``, or None when none was written yet.

    Raises :class:`CheckpointError` when the file is malformed, its key is missing, or its MAC
    does not match (someone edited it).
    """
    path = checkpoint_path(settings)
    if not path.exists():
        if (settings.keys_dir / SEAL_KEY_FILE).exists():
            # Both are written together on the first seal: a key without its checkpoint means
            # someone removed the checkpoint, e.g. to hide a cut tail.
            raise CheckpointError(f"{path} is missing although the seal key exists")
        return None
    try:
        raw = json.loads(path.read_text())
        seq, digest, sealed_at, mac = (
            int(raw["seq"]),
            str(raw["hash"]),
            str(raw["sealed_at"]),
            str(raw["mac"]),
        )
        moment = datetime.fromisoformat(sealed_at.replace("Z", "+00:00"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint: {exc}") from exc
    key = seal_key(settings)
    if key is None:
        raise CheckpointError(f"{path} exists but its key {settings.keys_dir / SEAL_KEY_FILE} is missing")
    if (
        seq < 0
        or not _HEX64.fullmatch(digest)
        or not hmac.compare_digest(mac, _mac(key, seq, digest, sealed_at))
    ):
        raise CheckpointError(
            f"{path} has a bad seal: it was not written by Kiban with this data directory's key"
        )
    return Checkpoint(seq, digest, moment, mac)


def write_checkpoint(settings: Settings, seq: int, digest: str) -> Checkpoint:
    """Seal (seq, hash) into the data directory's checkpoint file, atomically."""
    key = seal_key(settings, create=True)
    assert key is not None
    moment = utcnow()
    sealed_at = format_time(moment)
    mac = _mac(key, seq, digest, sealed_at)
    path = checkpoint_path(settings)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(
        json.dumps({"seq": seq, "hash": digest, "sealed_at": sealed_at, "mac": mac}, indent=2) + "\n"
    )
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)
    return Checkpoint(seq, digest, moment, mac)


def verify_data_dir(
    session: Session,
    settings: Settings,
    *,
    seal: bool = True,
    reset: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> VerifyReport:
    """:func:`verify` against the data directory's sealed checkpoint; on success, seal the new head.

    This is what ``kiban audit verify`` runs. A forged, unreadable or removed checkpoint is itself
    a failure (``bad_checkpoint``), after the chain has been checked without it. ``reset`` checks
    the chain without the checkpoint and replaces it: the operator's deliberate step after a
    restore from backup, when the tail beyond the backup is known to be lost.
    """
    try:
        checkpoint = None if reset else read_checkpoint(settings)
    except CheckpointError as exc:
        report = verify(session, batch_size=batch_size)
        if not report.ok:
            return report
        return replace(report, ok=False, problem=Problem.BAD_CHECKPOINT, message=str(exc))
    report = verify(session, checkpoint=checkpoint, batch_size=batch_size)
    if report.ok and (seal or reset):
        written = write_checkpoint(settings, report.head_seq, report.head_hash)
        return replace(report, checkpoint_seq=written.seq)
    if report.ok and checkpoint is not None:
        return replace(report, checkpoint_seq=checkpoint.seq)
    return report


def checkpoint_path(settings: Settings) -> Path:
    """Beside the seal key in ``keys/`` (mode 0700), so only those who hold the key can remove it."""
    return settings.keys_dir / CHECKPOINT_FILE
