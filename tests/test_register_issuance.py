"""Issuing documents from the register: the right records, the legal refusals, the audit trail."""

from __future__ import annotations

import io
import random
from datetime import date, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pypdf import PdfReader
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from kiban.core.documents import HmacSigner, verify_document
from kiban.core.identifiers import IndividualNumberCipher, ResidentCodeGenerator
from kiban.core.models.audit import AuditEntry
from kiban.core.models.documents import IssuedDocument
from kiban.core.wareki import to_wareki
from kiban.numbering import service as numbering
from kiban.register import issuance, service
from kiban.register.documents import CopyOptions, Requester
from kiban.register.loader import load_population
from kiban.register.models import Resident
from kiban.register.population import generate_population
from kiban.register.rules import AccessDenied, RegisterError
from kiban.register.schemas import Actor, Death, MoveOut, SetRestriction, Target
from kiban.register.seals.service import register_seal, synthetic_seal_image
from kiban.register.taxes.service import record_tax_assessment

A, B = "131016", "131041"
CLERK = Actor(username="clerk-a", municipality_code=A)
TODAY = service.today_jst()
CIPHER = IndividualNumberCipher(bytes(range(32)))


def signers(code: str) -> HmacSigner:
    return HmacSigner(code, b"k" * 32)


@pytest.fixture
def world(engine: Engine, session_maker: sessionmaker[Session]) -> None:
    households = list(generate_population([A, B], 30, seed=21, as_of=date(2025, 4, 1)))
    with session_maker.begin() as s:
        codes = numbering.issue_resident_codes(s, 30, ResidentCodeGenerator(random.Random(21)))
    numbers = {c: CIPHER.number_for(c) for c in codes}
    load_population(engine, households, iter(codes), numbers.get)


def households(s: Session, municipality: str = A) -> list[list[Resident]]:
    rows = s.scalars(
        select(Resident)
        .where(Resident.municipality_code == municipality, Resident.status == "active")
        .order_by(Resident.household_id, Resident.relationship != "世帯主", Resident.birth_date)
    ).all()
    out: dict[Any, list[Resident]] = {}
    for r in rows:
        out.setdefault(r.household_id, []).append(r)
    return list(out.values())


def family(s: Session) -> list[Resident]:
    return next(h for h in households(s) if len(h) >= 2 and h[0].relationship == "世帯主")


def text(pdf: bytes) -> str:
    return "".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages).replace(" ", "")


def issued(s: Session) -> int:
    return s.scalar(select(func.count()).select_from(IssuedDocument)) or 0


def test_household_copy_prints_every_member_and_audits_each_without_the_number(
    world: None, session_maker: sessionmaker[Session]
) -> None:
    with session_maker.begin() as s:
        members = family(s)
        printed = issuance.resident_copy(
            s,
            CLERK,
            members[1].resident_code,
            household=True,
            options=CopyOptions(relationship=True, individual_number=True),
            requester=Requester.HOUSEHOLD_MEMBER,
            signers=signers,
        )
        body = text(printed.pdf)
        for m in members:
            assert m.given_name.replace(" ", "") in body
            assert to_wareki(m.birth_date) in body
            assert m.individual_number and m.individual_number in body
        entries = s.scalars(select(AuditEntry).where(AuditEntry.purpose == "住民票の写しの交付")).all()
        assert sorted(e.subject for e in entries) == sorted(m.resident_code for m in members)
        assert all("個人番号" in e.items and "氏名" in e.items for e in entries)
        for e in entries:
            fields = str((e.items, e.detail, e.purpose, e.flags, e.subject))
            assert not any(m.individual_number and m.individual_number in fields for m in members)
            assert e.detail["serial"] == printed.serial
    with session_maker() as s:
        i = printed.issuance
        assert verify_document(s, i.serial, i.content_hash, i.verification_code, signers=signers).valid


def test_third_party_request_for_a_restricted_person_is_refused_and_logged(
    world: None, session_maker: sessionmaker[Session]
) -> None:
    with session_maker.begin() as s:
        person = family(s)[0]
        code = person.resident_code
        command = SetRestriction(
            resident_code=code, reason="DV", starts_on=TODAY, ends_on=TODAY + timedelta(days=365)
        )
        service.set_restriction(s, CLERK, command)
    for requester in (Requester.THIRD_PARTY, Requester.AGENT, Requester.HOUSEHOLD_MEMBER):
        with session_maker() as s:
            before = issued(s)
            with pytest.raises(AccessDenied) as refused:
                issuance.resident_copy(s, CLERK, code, requester=requester, signers=signers)
            assert refused.value.rule == "dv_restricted"
            assert issued(s) == before
            refusal = s.scalars(
                select(AuditEntry).where(AuditEntry.subject == code, AuditEntry.action == "refuse")
            ).one()
            assert refusal.flags == ["dv_restricted"] and refusal.detail == {"requester": requester.value}
            s.rollback()
    # A household copy requested by another member is refused too: the restricted person is on it.
    with session_maker() as s:
        other = next(m for m in family(s) if m.resident_code != code)
        with pytest.raises(AccessDenied):
            issuance.resident_copy(
                s,
                CLERK,
                other.resident_code,
                household=True,
                requester=Requester.THIRD_PARTY,
                signers=signers,
            )
    with session_maker.begin() as s:
        own = issuance.resident_copy(s, CLERK, code, signers=signers)
        read = s.scalars(
            select(AuditEntry).where(AuditEntry.subject == code, AuditEntry.purpose == "住民票の写しの交付")
        ).one()
        assert read.flags == ["dv_restricted"]
    assert own.pdf.startswith(b"%PDF")


def test_another_municipalitys_resident_and_unknown_codes(
    world: None, session_maker: sessionmaker[Session]
) -> None:
    with session_maker() as s:
        other = households(s, B)[0][0]
        with pytest.raises(AccessDenied) as denied:
            issuance.resident_copy(s, CLERK, other.resident_code, signers=signers)
        assert (denied.value.field, denied.value.rule) == ("resident_code", "own_municipality")
        with pytest.raises(RegisterError) as bad:
            issuance.resident_copy(s, CLERK, "12345678901", signers=signers)
        assert (bad.value.field, bad.value.rule) == ("resident_code", "check_digit")
        assert issued(s) == 0


def test_number_only_for_the_person_or_household(world: None, session_maker: sessionmaker[Session]) -> None:
    with session_maker() as s:
        code = family(s)[0].resident_code
        for requester in (Requester.AGENT, Requester.THIRD_PARTY):
            with pytest.raises(RegisterError) as refused:
                issuance.resident_copy(
                    s,
                    CLERK,
                    code,
                    options=CopyOptions(individual_number=True),
                    requester=requester,
                    signers=signers,
                )
            assert refused.value.rule == "only_to_the_person"
        assert issued(s) == 0


def test_move_out_certificate_lists_everyone_who_left_together(
    world: None, session_maker: sessionmaker[Session]
) -> None:
    with session_maker.begin() as s:
        members = family(s)
        targets = [Target(resident_code=m.resident_code) for m in members]
        service.move_out(
            s,
            CLERK,
            MoveOut(
                notified_on=TODAY,
                effective_on=TODAY + timedelta(days=3),
                targets=targets,
                destination_municipality_code=B,
                destination_address="東京都新宿区新宿三丁目1番1号",
            ),
        )
    with session_maker.begin() as s:
        printed = issuance.move_out_certificate(s, CLERK, members[-1].resident_code, signers=signers)
        body = text(printed.pdf)
        assert "転出証明書" in body and "新宿三丁目" in body
        assert to_wareki(TODAY + timedelta(days=3)) in body
        for m in members:
            assert m.given_name.replace(" ", "") in body
        removed = issuance.removed_record_copy(s, CLERK, members[0].resident_code, signers=signers)
        assert "転出" in text(removed.pdf) and "除票の写し" in text(removed.pdf)


def test_removed_record_copy_after_death_has_reason_and_wareki_date(
    world: None, session_maker: sessionmaker[Session]
) -> None:
    with session_maker.begin() as s:
        person = next(h[0] for h in households(s) if len(h) == 1)
        day = TODAY - timedelta(days=2)
        service.death(
            s,
            CLERK,
            Death(notified_on=TODAY, effective_on=day, target=Target(resident_code=person.resident_code)),
        )
    with session_maker.begin() as s:
        with pytest.raises(RegisterError) as closed:
            issuance.resident_copy(s, CLERK, person.resident_code, signers=signers)
        assert closed.value.rule == "dead_or_removed"
        body = text(issuance.removed_record_copy(s, CLERK, person.resident_code, signers=signers).pdf)
        assert "死亡" in body and to_wareki(day) in body and person.family_name.replace(" ", "") in body


def test_entry_certificate_prints_only_the_chosen_items(
    world: None, session_maker: sessionmaker[Session]
) -> None:
    with session_maker.begin() as s:
        person = family(s)[0]
        body = text(
            issuance.entry_certificate(
                s, CLERK, person.resident_code, ["name", "birth_date"], signers=signers
            ).pdf
        )
        assert person.family_name.replace(" ", "") in body and to_wareki(person.birth_date) in body
        assert "本籍" not in body and "住民票コード" not in body
        with pytest.raises(RegisterError) as unknown:
            issuance.entry_certificate(s, CLERK, person.resident_code, ["blood_type"], signers=signers)
        assert unknown.value.rule == "known_item"


def test_seal_and_tax_certificates(world: None, session_maker: sessionmaker[Session]) -> None:
    with session_maker.begin() as s:
        person = next(h[0] for h in households(s) if (TODAY - h[0].birth_date).days > 20 * 366)
        with pytest.raises(RegisterError) as none:
            issuance.seal_certificate(s, CLERK, person.resident_code, signers=signers)
        assert none.value.rule == "no_seal"
        register_seal(
            s, CLERK, person.resident_code, synthetic_seal_image(person.family_name), "image/png", TODAY
        )
        record_tax_assessment(s, CLERK, person.resident_code, 2025, 2_000_000, 2_600_000, 205_000)
    with session_maker.begin() as s:
        seal = text(issuance.seal_certificate(s, CLERK, person.resident_code, signers=signers).pdf)
        assert "印鑑登録証明書" in seal and to_wareki(person.birth_date) in seal
        tax = text(issuance.tax_certificate(s, CLERK, person.resident_code, 2025, signers=signers).pdf)
        assert "令和7年度" in tax and "2,000,000円" in tax and "205,000円" in tax


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    honseki=st.booleans(),
    code=st.booleans(),
    number=st.booleans(),
    requester=st.sampled_from(list(Requester)),
)
def test_copy_prints_exactly_the_requested_items(
    world: None,
    session_maker: sessionmaker[Session],
    honseki: bool,
    code: bool,
    number: bool,
    requester: Requester,
) -> None:
    with session_maker() as s:
        person = family(s)[0]
        code_text = person.resident_code
        options = CopyOptions(honseki=honseki, resident_code=code, individual_number=number)
        before = issued(s)
        if number and requester not in (Requester.SELF, Requester.HOUSEHOLD_MEMBER):
            with pytest.raises(RegisterError):
                issuance.resident_copy(
                    s, CLERK, person.resident_code, options=options, requester=requester, signers=signers
                )
            assert issued(s) == before
            return
        body = text(
            issuance.resident_copy(
                s, CLERK, person.resident_code, options=options, requester=requester, signers=signers
            ).pdf
        )
        s.rollback()
    assert ("住民票コード" in body) == code and (code_text in body) == code
    assert ("個人番号" in body) == number
    assert ("本籍" in body) == honseki
