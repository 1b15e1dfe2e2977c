"""Lean single provision (本人確認情報の照会) for the API: concurrent queries share one transaction.

``POST /api/provision`` answers one query, but under load many agencies' queries arrive at once.
Each provision must be logged (``network_provisions``) and audited (``kiban.core.audit``, a hash
chain whose head row every appending transaction locks until it commits) *in the transaction
that reads the answer*: no answer without its record. One transaction per query therefore
serialises all queries on the audit head's lock and pays one WAL flush each.

:class:`ProvisionBatcher` is group commit for that: a request parses its query (bad input fails
at once, nothing logged, as before) and hands it to the process's batcher thread; the thread
takes every query waiting (up to ``max_batch``) and answers them together with
:func:`provide_many` — per batch one permit check per (agency, use), one SELECT per kind of key,
one restriction query, one multi-row log INSERT and one ``audit.record_many`` — and commits; only
then are the waiting requests given their answers. At low load a batch is one query (no added
wait: the thread never sleeps to fill a batch); under load the batch grows to what arrived
during the previous commit. Each answer is exactly what :func:`kiban.network.service.provide`
gives (same purpose control, DV policy, log rows and audit entries); if a batch fails, its
queries are retried one by one, each in its own transaction, so one bad query cannot take the
others' answers down, and a query that still fails gets the error (no answer, no record).

The look-ups filter on ``is_current`` as a plain boolean: that is the predicate of the partial
indexes (``WHERE is_current``), which PostgreSQL's planner does not match with ``is_current IS
true`` (a sequential scan of the whole national copy; see docs/network-bench.md).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from kiban.core.database import transaction, utcnow
from kiban.network import service
from kiban.network.models import NationalIdentity, current_version
from kiban.network.schemas import Answer, ProvisionQuery

__all__ = ["Request", "ProvisionBatcher", "provide_many", "parse"]

log = logging.getLogger(__name__)

MAX_BATCH = 128


@dataclass(frozen=True)
class Request:
    """One parsed query of one agency for one use."""

    agency_code: str
    use_code: str
    query: ProvisionQuery


def parse(query: ProvisionQuery | Mapping[str, Any]) -> ProvisionQuery:
    """The query checked as :func:`service.provide` checks it (raises ``NetworkError``)."""
    return service._parse_query(query, None)


def _find_many(session: Session, column: Any, values: list[str]) -> dict[str, list[NationalIdentity]]:
    n = NationalIdentity
    found: dict[str, list[NationalIdentity]] = {}
    for start in range(0, len(values), 1000):
        rows = session.scalars(
            select(n)
            .where(current_version(n), column.in_(values[start : start + 1000]))
            .order_by(n.resident_code)
        )
        for row in rows:
            found.setdefault(getattr(row, column.key), []).append(row)
    return found


def _find_basic4(session: Session, query: ProvisionQuery) -> list[NationalIdentity]:
    n = NationalIdentity
    assert query.address_prefix is not None
    return list(
        session.scalars(
            select(n)
            .where(
                current_version(n),
                n.kana_key == query.name_kana,
                n.birth_date == query.birth_date,
                n.sex == query.sex,
                n.address.startswith(query.address_prefix, autoescape=True),
            )
            .order_by(n.resident_code)
            .limit(service.BASIC4_LIMIT + 1)
        )
    )


def provide_many(session: Session, requests: Sequence[Request], *, on: date | None = None) -> list[Answer]:
    """Answer ``requests`` in the caller's transaction, logging and auditing each (as ``provide``)."""
    day = on if on is not None else datetime.now(service.JST).date()
    permits: dict[tuple[str, str], Any] = {}
    for r in requests:
        key = (r.agency_code, r.use_code)
        if key not in permits:
            permits[key] = service._permit(session, *key)
    n = NationalIdentity
    codes = sorted(
        {
            r.query.resident_code
            for r in requests
            if r.query.resident_code and permits[(r.agency_code, r.use_code)].rule is None
        }
    )
    numbers = sorted(
        {
            r.query.individual_number
            for r in requests
            if r.query.individual_number
            and permits[(r.agency_code, r.use_code)].rule is None
            and "individual_number" in permits[(r.agency_code, r.use_code)].use.items
        }
    )
    by_code = _find_many(session, n.resident_code, codes) if codes else {}
    by_number = _find_many(session, n.individual_number, numbers) if numbers else {}
    matched: list[list[NationalIdentity]] = []
    for r in requests:
        q = r.query
        permit = permits[(r.agency_code, r.use_code)]
        if permit.rule is not None:
            matched.append([])
        elif q.resident_code is not None:
            matched.append(by_code.get(q.resident_code, []))
        elif q.individual_number is not None:
            matched.append(by_number.get(q.individual_number, []))
        else:
            matched.append(_find_basic4(session, q))
    people = {m.resident_code for ms in matched for m in ms[: service.BASIC4_LIMIT + 1]}
    restricted = service._restricted(session, people, day) if people else set()
    outcomes = [
        service._answer(
            permits[(r.agency_code, r.use_code)], r.query, ms[: service.BASIC4_LIMIT + 1], restricted, None
        )
        for r, ms in zip(requests, matched, strict=True)
    ]
    now = utcnow()
    # Logged in request order: one log call per run of requests with the same agency and use.
    start = 0
    for end in range(1, len(requests) + 1):
        first = requests[start]
        if end == len(requests) or (requests[end].agency_code, requests[end].use_code) != (
            first.agency_code,
            first.use_code,
        ):
            service._log(session, outcomes[start:end], first.agency_code, first.use_code, now=now)
            start = end
    return [o.answer for o in outcomes]


class ProvisionBatcher:
    """Group commit of single provisions (module docstring); one per process and database."""

    def __init__(self, factory: sessionmaker[Session], *, max_batch: int = MAX_BATCH) -> None:
        self._factory = factory
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[Request, Future[Answer]] | None] = queue.SimpleQueue()
        self.batches = 0  # how many transactions (for tests and the benchmark)
        self.answered = 0
        self._thread = threading.Thread(target=self._loop, name="kiban-provision-batcher", daemon=True)
        self._thread.start()

    def submit(self, request: Request) -> Future[Answer]:
        future: Future[Answer] = Future()
        self._queue.put((request, future))
        return future

    def provide(self, agency_code: str, use_code: str, query: ProvisionQuery | Mapping[str, Any]) -> Answer:
        """Blocking: parse (``NetworkError`` at once), queue, wait for the committed answer."""
        return self.submit(Request(agency_code, use_code, parse(query))).result()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self._max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # close after this batch
                    break
                batch.append(more)
            self._answer(batch)

    def _answer(self, batch: list[tuple[Request, Future[Answer]]]) -> None:
        live = [(r, f) for r, f in batch if f.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            with transaction(self._factory) as session:
                answers = provide_many(session, [r for r, _ in live])
        except Exception:
            if len(live) == 1:
                log.exception("provision failed")
                live[0][1].set_exception(_current_exception())
                return
            log.warning("a provision batch of %d failed; answering one by one", len(live), exc_info=True)
            for r, f in live:
                try:
                    with transaction(self._factory) as session:
                        f.set_result(provide_many(session, [r])[0])
                except Exception as exc:  # noqa: BLE001 - handed to the waiting request
                    f.set_exception(exc)
            return
        self.batches += 1
        self.answered += len(live)
        for (_, f), answer in zip(live, answers, strict=True):
            f.set_result(answer)


def _current_exception() -> BaseException:
    import sys

    exc = sys.exc_info()[1]
    assert exc is not None
    return exc
