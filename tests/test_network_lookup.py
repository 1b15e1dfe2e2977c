"""kiban.network.lookup: a batch of single provisions answers and logs exactly as provide() does."""

from __future__ import annotations

import random
import threading
from datetime import date
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from kiban.core import audit
from kiban.core.audit import AuditEntry
from kiban.core.identifiers import IndividualNumberCipher, ResidentCodeGenerator
from kiban.network import lookup
from kiban.network import service as network
from kiban.network.models import NationalIdentity, Provision
from kiban.network.service import NetworkError
from kiban.numbering import service as numbering
from kiban.register.loader import load_population
from kiban.register.population import generate_population

TODAY = date(2026, 11, 25)
CIPHER = IndividualNumberCipher(bytes(range(32)))


@pytest.fixture
def people(engine: Engine, session_maker: sessionmaker[Session]) -> list[NationalIdentity]:
    households = list(generate_population(["131016", "212016"], 30, seed=4, as_of=date(2025, 4, 1)))
    with session_maker.begin() as s:
        codes = numbering.issue_resident_codes(s, 30, ResidentCodeGenerator(random.Random(4)))
    load_population(engine, households, iter(codes), lambda code: CIPHER.number_for(code))
    with session_maker.begin() as s:
        network.seed_copies(s)
        network.load_registry(s)
    with session_maker() as s:
        rows = list(s.scalars(select(NationalIdentity).order_by(NationalIdentity.resident_code)))
        s.expunge_all()
    assert all(r.individual_number for r in rows)
    return rows


def _queries(people: list[NationalIdentity]) -> list[tuple[str, str, dict[str, Any]]]:
    p = people
    return [
        ("nenkin", "pension_status_check", {"individual_number": p[0].individual_number}),
        ("nenkin", "pension_status_check", {"resident_code": p[1].resident_code}),
        ("nenkin", "pension_status_check", {"resident_code": "12345678903"}),  # nobody
        ("mofa-passport", "passport_issue", {"individual_number": p[2].individual_number}),  # not allowed
        ("mofa-passport", "passport_issue", {"resident_code": p[3].resident_code}),
        ("nenkin", "passport_issue", {"resident_code": p[4].resident_code}),  # not the agency's use
        ("nobody", "pension_status_check", {"resident_code": p[5].resident_code}),  # unknown agency
        (
            "cfa",
            "child_allowance",
            {
                "name_kana": p[6].family_name_kana + p[6].given_name_kana,
                "birth_date": p[6].birth_date.isoformat(),
                "sex": p[6].sex,
                "address_prefix": p[6].address[:6],
            },
        ),
        ("nenkin", "pension_status_check", {"individual_number": p[0].individual_number}),  # again
    ]


def _logged(s: Session) -> list[tuple[Any, ...]]:
    s.expire_all()
    provisions = [
        (
            p.agency_code,
            p.use_code,
            p.resident_code,
            p.query_kind,
            p.outcome,
            p.rule,
            list(p.items),
            p.restricted,
        )
        for p in s.scalars(select(Provision).order_by(Provision.id))
    ]
    entries = [
        (e.actor, e.action, e.purpose, e.subject, list(e.items), e.detail)
        for e in s.scalars(select(AuditEntry).where(AuditEntry.role == "agency").order_by(AuditEntry.seq))
    ]
    return [*provisions, *entries]


def test_a_batch_answers_and_logs_as_provide_does(
    people: list[NationalIdentity], session_maker: sessionmaker[Session]
) -> None:
    queries = _queries(people)
    with session_maker.begin() as s:
        expected = [network.provide(s, a, u, q, on=TODAY) for a, u, q in queries]
    with session_maker() as s:
        by_provide = _logged(s)
    with session_maker.begin() as s:
        s.execute(Provision.__table__.delete())
    with session_maker.begin() as s:
        requests = [lookup.Request(a, u, lookup.parse(q)) for a, u, q in queries]
        answers = lookup.provide_many(s, requests, on=TODAY)
    assert answers == expected
    assert [a.outcome for a in answers] == [
        "provided",
        "provided",
        "not_found",
        "refused",
        "provided",
        "refused",
        "refused",
        "provided",
        "provided",
    ]
    assert answers[0].data["individual_number"] == people[0].individual_number
    assert "individual_number" not in answers[4].data  # the passport use may not have it
    with session_maker() as s:
        logged = _logged(s)
    # The same provision rows, and the same audit entries again after the first run's.
    provisions = [row for row in by_provide if len(row) == 8]
    assert [row for row in logged if len(row) == 8] == provisions
    entries = [row for row in by_provide if len(row) == 6]
    assert [row for row in logged if len(row) == 6] == entries + entries
    with session_maker() as s:
        assert audit.verify(s).ok


def test_a_malformed_query_is_refused_before_it_is_queued() -> None:
    with pytest.raises(NetworkError) as caught:
        lookup.parse({"individual_number": "123456789012"})
    assert caught.value.rule == "check_digit"


def test_the_batcher_answers_concurrent_queries_each_with_its_record(
    people: list[NationalIdentity], session_maker: sessionmaker[Session]
) -> None:
    batcher = lookup.ProvisionBatcher(session_maker)
    answers: list[Any] = []
    lock = threading.Lock()

    def ask(person: NationalIdentity) -> None:
        answer = batcher.provide(
            "nenkin", "pension_status_check", {"individual_number": person.individual_number}
        )
        with lock:
            answers.append((person.resident_code, answer))

    threads = [threading.Thread(target=ask, args=(p,)) for p in people for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    batcher.close()
    assert len(answers) == 2 * len(people)
    assert all(a.outcome == "provided" and a.data["resident_code"] == code for code, a in answers)
    assert batcher.answered == len(answers) and 1 <= batcher.batches <= len(answers)
    with session_maker() as s:
        assert s.scalar(select(func.count()).select_from(Provision)) == len(answers)
        assert s.scalar(
            select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "provide")
        ) == len(answers)
        assert audit.verify(s).ok


def test_a_failing_batch_is_retried_one_by_one(
    people: list[NationalIdentity], session_maker: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One query that breaks its transaction gets the error; the others are answered and logged."""
    real = lookup.provide_many
    poison = people[0].resident_code

    def flaky(session: Session, requests: Any, **kw: Any) -> Any:
        if any(r.query.resident_code == poison for r in requests):
            raise RuntimeError("database said no")
        return real(session, requests, **kw)

    monkeypatch.setattr(lookup, "provide_many", flaky)
    batcher = lookup.ProvisionBatcher(session_maker)
    futures = [
        batcher.submit(
            lookup.Request("nenkin", "pension_status_check", lookup.parse({"resident_code": p.resident_code}))
        )
        for p in people[:10]
    ]
    outcomes = []
    for f in futures:
        try:
            outcomes.append(f.result(30).outcome)
        except RuntimeError:
            outcomes.append("error")
    batcher.close()
    assert outcomes == ["error"] + ["provided"] * 9
    with session_maker() as s:
        logged = set(s.scalars(select(Provision.resident_code)))
    assert poison not in logged and len(logged) == 9
