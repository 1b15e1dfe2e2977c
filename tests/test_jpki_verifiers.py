"""Verifier services (SPEC K5): registry, tokens, usage, 新旧紐付け, consent and 基本4情報, 発行記録,
the operator's status views — on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from kiban.core.events import Registry, drain, emit
from kiban.core.identifiers import ResidentCodeGenerator
from kiban.core.models.audit import AuditEntry
from kiban.jpki import crl
from kiban.jpki import service as ca
from kiban.jpki.handlers import register_handlers as jpki_handlers
from kiban.jpki.keys import FileKeyStore
from kiban.jpki.models import CertificateAuthority
from kiban.jpki.profiles import HolderInfo
from kiban.jpki.verifiers import service as vs
from kiban.jpki.verifiers.models import Verifier, VerifierConsent, VerifierToken, VerifierUsage
from kiban.jpki.verifiers.service import VerifierError
from kiban.network.handlers import register_handlers as network_handlers

NOW = datetime.now(UTC).replace(microsecond=0)
TODAY = vs.today_jst(NOW)
KEY = ec.generate_private_key(ec.SECP256R1()).public_key()
BASE = "http://127.0.0.1:8000"
CHIYODA = "131016"
OLD_ADDRESS = "東京都千代田区永田町一丁目７番１号"
NEW_ADDRESS = "東京都千代田区霞が関二丁目１番２号"
OP = "operator"


@dataclass
class World:
    factory: sessionmaker[Session]
    ks: FileKeyStore
    registry: Registry
    code: str  # the holder's 住民票コード

    def person(self, s: Session, *, address: str, reason: str, reason_ja: str, when: datetime) -> None:
        emit(
            s,
            "register.identity_changed",
            self.code,
            {
                "resident_code": self.code,
                "municipality_code": CHIYODA,
                "family_name": "山田",
                "given_name": "花子",
                "family_name_kana": "ヤマダ",
                "given_name_kana": "ハナコ",
                "birth_date": "1990-01-02",
                "sex": 2,
                "address_text": address,
                "status": "active",
                "reason": reason,
                "reason_ja": reason_ja,
                "effective_on": when.date().isoformat(),
            },
            occurred_at=when,
        )

    def holder(self, address: str = OLD_ADDRESS, card: str = "card-1") -> HolderInfo:
        return HolderInfo(
            resident_code=self.code,
            name="山田　花子",
            birth_date=date(1990, 1, 2),
            sex=2,
            address=address,
            card_id=card,
        )

    def pair(self, s: Session, *, address: str = OLD_ADDRESS, card: str = "card-1") -> tuple[str, str]:
        h = self.holder(address, card)
        auth = ca.issue_user_auth_certificate(
            s, self.ks, public_key=KEY, holder=h, card_expiry=date(2036, 1, 2), now=NOW
        )
        sign = ca.issue_signature_certificate(
            s, self.ks, public_key=KEY, holder=h, card_expiry=date(2036, 1, 2), now=NOW
        )
        return auth.serial, sign.serial

    def move(self) -> None:
        """転居: the register's change reaches the national copy, whose 異動等情報 revokes the
        signature certificate (affiliationChanged)."""
        with self.factory.begin() as s:
            self.person(s, address=NEW_ADDRESS, reason="relocation", reason_ja="転居", when=NOW)
        drain(self.factory, self.registry)


@pytest.fixture
def world(session_maker: sessionmaker[Session], tmp_path: Path) -> World:
    registry = Registry()
    network_handlers(registry)
    jpki_handlers(registry)
    ks = FileKeyStore(tmp_path / "keys")
    code = ResidentCodeGenerator(random.Random(17)).generate()
    w = World(session_maker, ks, registry, code)
    with session_maker.begin() as s:
        ca.init_hierarchies(s, ks, BASE, algorithm="p256", now=NOW - timedelta(days=1))
        w.person(
            s, address=OLD_ADDRESS, reason="initial_load", reason_ja="初期登録", when=NOW - timedelta(days=30)
        )
    drain(session_maker, registry)
    return w


@pytest.fixture
def s(session_maker: sessionmaker[Session]) -> Iterator[Session]:
    with session_maker() as session:
        yield session


def make(s: Session, code: str, services: tuple[str, ...] = vs.SERVICES, **kw: Any) -> Verifier:
    kw.setdefault("category", "certified_business")
    return vs.create_verifier(
        s, code=code, name=f"{code} 株式会社", services=services, actor=OP, now=NOW, **kw
    )


def count(s: Session, model: Any) -> int:
    return s.scalar(select(func.count()).select_from(model)) or 0


def audits(s: Session, action: str | None = None) -> list[AuditEntry]:
    q = select(AuditEntry).order_by(AuditEntry.seq)
    if action:
        q = q.where(AuditEntry.action == action)
    return list(s.scalars(q))


def identity(s: Session, code: str) -> vs.VerifierIdentity:
    return vs.identify_account(s, code)


# --- registry --------------------------------------------------------------------------------------


def test_registry_records_verifiers_and_refuses_broken_rules(world: World, s: Session) -> None:
    bank = make(s, "bank-a", ("revocation", "basic_info"), ocsp_rate_per_second=200)
    make(s, "soumu", ("revocation",), category="national_body")
    delegate = make(s, "platform-x", ("revocation",), category="delegate", principal_code="bank-a")
    s.commit()
    assert (bank.status, vs.services_of(bank), bank.ocsp_rate_per_second) == (
        "active",
        {"revocation", "basic_info"},
        200.0,
    )
    assert delegate.principal_code == "bank-a"
    [entry, *_] = [e for e in audits(s, "create") if e.role == "national_operator"]
    assert (entry.role, entry.detail["verifier"], entry.detail["category"]) == (
        "national_operator",
        "bank-a",
        "certified_business",
    )
    before = (count(s, Verifier), count(s, AuditEntry))
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"code": "bank-a"}, "code", "unique"),
        ({"code": "Bad Code"}, "code", "pattern"),
        ({"code": "x"}, "code", "pattern"),
        ({"code": "dg", "category": "delegate"}, "principal_code", "required"),
        (
            {"code": "dg", "category": "delegate", "principal_code": "nobody"},
            "principal_code",
            "unknown_verifier",
        ),
        (
            {"code": "dg", "category": "delegate", "principal_code": "platform-x"},
            "principal_code",
            "not_a_delegate",
        ),
        (
            {"code": "dg", "category": "delegate", "principal_code": "soumu", "services": ("links",)},
            "services",
            "principal_services",
        ),
        ({"code": "dg", "principal_code": "bank-a"}, "principal_code", "delegates_only"),
        ({"code": "dg", "category": "embassy"}, "category", "enum"),
        ({"code": "dg", "services": ("ocsp",)}, "services", "enum"),
        ({"code": "dg", "services": ()}, "services", "too_short"),
        ({"code": "dg", "services": "links"}, "services", "list"),
        ({"code": "dg", "name": "悪意\x00の名前"}, "name", "control_characters"),
        ({"code": "dg", "name": "名" * 201}, "name", "max_length"),
        ({"code": "dg", "ocsp_rate_per_second": 0}, "ocsp_rate_per_second", "range"),
        ({"code": "dg", "ocsp_rate_per_second": float("nan")}, "ocsp_rate_per_second", "range"),
        ({"code": "dg", "ocsp_rate_per_second": "50"}, "ocsp_rate_per_second", "float_type"),
    ]
    for args, field, rule in cases:
        kw: dict[str, Any] = {
            "name": "名前",
            "category": "certified_business",
            "services": ("revocation",),
            "actor": OP,
            "now": NOW,
        }
        kw.update(args)
        with pytest.raises(VerifierError) as error:
            vs.create_verifier(s, **kw)
        assert (error.value.field, error.value.rule) == (field, rule), args
        s.rollback()
    assert (count(s, Verifier), count(s, AuditEntry)) == before


def test_narrowing_a_principal_narrows_its_delegates(world: World, s: Session) -> None:
    make(s, "bank-a")
    make(s, "platform-x", ("revocation", "links"), category="delegate", principal_code="bank-a")
    token = vs.issue_token(s, "platform-x", actor=OP, now=NOW).token
    s.commit()
    who = vs.identify_token(s, token, now=NOW)
    assert who is not None and who.services == {"revocation", "links"}
    vs.update_verifier(s, "bank-a", services=["revocation"], actor=OP, now=NOW)
    s.commit()
    who = vs.identify_token(s, token, now=NOW)
    assert who is not None and who.services == {"revocation"}
    with pytest.raises(VerifierError) as error:
        vs.update_verifier(s, "platform-x", services=["links"], actor=OP, now=NOW)
    assert error.value.rule == "principal_services"


# --- credentials -----------------------------------------------------------------------------------


def test_tokens_are_stored_hashed_and_shown_once(world: World, s: Session) -> None:
    make(s, "bank-a", ocsp_rate_per_second=120)
    issued = vs.issue_token(s, "bank-a", actor=OP, label="本番", now=NOW)
    s.commit()
    assert issued.token.startswith("kbv_") and len(issued.token) >= 40
    [row] = s.scalars(select(VerifierToken)).all()
    assert row.token_hash == hashlib.sha256(issued.token.encode()).hexdigest()
    stored = [str(getattr(row, c.key)) for c in VerifierToken.__table__.columns]
    assert issued.token not in stored
    assert all(issued.token not in repr(e.detail) for e in audits(s))
    detail = vs.verifier_detail(s, "bank-a", now=NOW)
    assert issued.token not in detail.model_dump_json()
    assert [t.hint for t in detail.tokens] == [issued.token[:10]]
    who = vs.identify_token(s, issued.token, now=NOW)
    assert who is not None and (who.code, who.ocsp_rate_per_second, who.token_id) == ("bank-a", 120.0, row.id)
    assert who.may("revocation") and who.may("basic_info")


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(garbage=st.one_of(st.text(max_size=300), st.binary(max_size=50), st.integers(), st.none()))
def test_any_other_string_identifies_nobody(world: World, s: Session, garbage: Any) -> None:
    if s.get(Verifier, "bank-a") is None:
        make(s, "bank-a")
        vs.issue_token(s, "bank-a", actor=OP, now=NOW)
        s.commit()
    assert vs.identify_token(s, garbage, now=NOW) is None


def test_revoke_rotate_and_expiry(world: World, s: Session) -> None:
    make(s, "bank-a")
    first = vs.issue_token(s, "bank-a", actor=OP, now=NOW)
    short = vs.issue_token(s, "bank-a", actor=OP, expires_at=NOW + timedelta(hours=1), now=NOW)
    s.commit()
    assert vs.identify_token(s, short.token, now=NOW + timedelta(minutes=59)) is not None
    assert vs.identify_token(s, short.token, now=NOW + timedelta(hours=1)) is None
    new = vs.rotate_token(s, "bank-a", first.id, actor=OP, overlap=timedelta(hours=24), now=NOW)
    s.commit()
    assert new.token != first.token
    later = NOW + timedelta(hours=23)
    assert vs.identify_token(s, first.token, now=later) is not None  # the overlap
    assert vs.identify_token(s, first.token, now=NOW + timedelta(hours=24, seconds=1)) is None
    assert vs.identify_token(s, new.token, now=NOW + timedelta(days=30)) is not None
    vs.revoke_token(s, "bank-a", new.id, actor=OP, now=NOW)
    s.commit()
    assert vs.identify_token(s, new.token, now=NOW) is None
    with pytest.raises(VerifierError) as error:
        vs.revoke_token(s, "bank-a", new.id, actor=OP, now=NOW)
    assert (error.value.rule, error.value.status) == ("not_revoked", 409)
    with pytest.raises(VerifierError) as error:
        vs.rotate_token(s, "bank-a", new.id, actor=OP, now=NOW)
    assert error.value.rule == "active_token"
    make(s, "bank-b")
    with pytest.raises(VerifierError) as error:
        vs.revoke_token(s, "bank-b", first.id, actor=OP, now=NOW)  # another verifier's token
    assert (error.value.rule, error.value.status) == ("unknown_token", 404)
    actions = [e.action for e in audits(s) if e.role == "national_operator"]
    assert actions.count("issue_token") == 3 and "rotate_token" in actions and "revoke_token" in actions


def test_suspended_verifier_and_its_delegates_are_refused(world: World, s: Session) -> None:
    make(s, "bank-a")
    make(s, "platform-x", ("revocation",), category="delegate", principal_code="bank-a")
    own = vs.issue_token(s, "bank-a", actor=OP, now=NOW).token
    delegated = vs.issue_token(s, "platform-x", actor=OP, now=NOW).token
    vs.suspend_verifier(s, "bank-a", reason="契約違反の調査", actor=OP, now=NOW)
    s.commit()
    assert vs.identify_token(s, own, now=NOW) is None
    assert vs.identify_token(s, delegated, now=NOW) is None
    with pytest.raises(VerifierError) as error:
        vs.identify_account(s, "bank-a")
    assert (error.value.rule, error.value.status) == ("verifier_suspended", 403)
    with pytest.raises(VerifierError) as error:
        vs.identify_account(s, "nobody")
    assert (error.value.rule, error.value.status) == ("unknown_verifier", 403)
    with pytest.raises(VerifierError) as error:
        vs.suspend_verifier(s, "bank-a", reason="again", actor=OP, now=NOW)
    assert error.value.status == 409
    vs.resume_verifier(s, "bank-a", actor=OP, now=NOW)
    s.commit()
    assert vs.identify_token(s, own, now=NOW) is not None
    assert vs.identify_token(s, delegated, now=NOW) is not None
    assert [e.detail.get("reason") for e in audits(s, "suspend")] == ["契約違反の調査"]


# --- usage -----------------------------------------------------------------------------------------


def test_usage_counts_per_service_and_day(world: World, s: Session) -> None:
    make(s, "bank-a")
    make(s, "bank-b")
    yesterday = TODAY - timedelta(days=1)
    for _ in range(3):
        vs.record_usage(s, "bank-a", "ocsp", on=TODAY)
    vs.record_usage(s, "bank-a", "ocsp", 1000, on=TODAY)
    vs.record_usage(s, "bank-a", "crl", on=TODAY)
    vs.record_usage(s, "bank-a", "ocsp", 7, on=yesterday)
    vs.record_usage(s, "bank-a", "ocsp", 5, on=TODAY - timedelta(days=40))
    vs.record_usage(s, "bank-b", "links", on=TODAY)
    s.commit()
    rows = {(r.day, r.service): r.requests for r in vs.usage(s, "bank-a")}
    assert rows == {
        (TODAY, "ocsp"): 1003,
        (TODAY, "crl"): 1,
        (yesterday, "ocsp"): 7,
        (TODAY - timedelta(days=40), "ocsp"): 5,
    }
    listed = {v.code: (v.requests_today, v.requests_30_days) for v in vs.list_verifiers(s, now=NOW)}
    assert listed == {"bank-a": (1004, 1011), "bank-b": (1, 1)}
    before = count(s, VerifierUsage)
    bad: list[tuple[tuple[Any, ...], str]] = [
        (("bank-a", "telnet"), "enum"),
        (("bank-a", "ocsp", 0), "range"),
        (("bank-a", "ocsp", True), "range"),
        (("nobody", "ocsp"), "unknown_verifier"),
    ]
    for args, rule in bad:
        with pytest.raises(VerifierError) as error:
            vs.record_usage(s, *args)
        assert error.value.rule == rule
    assert count(s, VerifierUsage) == before


@given(value=st.one_of(st.text(max_size=80), st.from_regex(r"[0-9A-Fa-f:]{1,60}", fullmatch=True)))
def test_a_serial_is_parsed_exactly_or_refused_naming_the_rule(value: str) -> None:
    try:
        parsed = vs.parse_serial(value)
    except VerifierError as error:
        assert (error.field, error.rule) in {("serial", "hex"), ("serial", "range")}
        return
    assert len(parsed) == 40 and parsed == parsed.lower()
    assert int(parsed, 16) == int(value.replace(":", ""), 16) > 0


# --- 新旧紐付け -------------------------------------------------------------------------------------


def test_links_follow_reissue_after_a_move_and_renewal(world: World, s: Session) -> None:
    make(s, "bank-a", ("revocation", "links"))
    make(s, "shop", ("revocation",))
    _, sign1 = world.pair(s)
    s.commit()
    bank = identity(s, "bank-a")
    chain = vs.links(s, bank, sign1, actor="bank-user", now=NOW)
    assert [step.certificate.serial for step in chain.chain] == [sign1] and chain.current_serial == sign1
    s.commit()
    world.move()
    s.expire_all()
    # After the move the holder gets a new signature certificate (the new address).
    sign2 = ca.issue_signature_certificate(
        s, world.ks, public_key=KEY, holder=world.holder(NEW_ADDRESS), card_expiry=date(2036, 1, 2), now=NOW
    ).serial
    sign3 = ca.issue_signature_certificate(
        s,
        world.ks,
        public_key=KEY,
        holder=world.holder(NEW_ADDRESS),
        card_expiry=date(2036, 1, 2),
        now=NOW,
        renewal_of=sign2,
    ).serial
    s.commit()
    chain = vs.links(s, bank, sign1.upper(), actor="bank-user", now=NOW)
    assert [(st.certificate.serial, st.link) for st in chain.chain] == [
        (sign1, None),
        (sign2, "reissue"),
        (sign3, "renewal"),
    ]
    assert chain.chain[0].certificate.reason == "affiliationChanged"
    assert chain.chain[1].certificate.reason == "superseded"
    assert chain.current_serial == sign3
    s.commit()
    reads = [e for e in audits(s, "read") if e.items == ["新旧紐付け"]]
    assert len(reads) == 2 and {e.subject for e in reads} == {world.code}
    assert reads[-1].organisation == "bank-a" and reads[-1].detail["links"] == 2
    assert {r.service: r.requests for r in vs.usage(s, "bank-a")} == {"links": 2}
    # Not registered for 新旧紐付け: refused, and the refusal is logged.
    with pytest.raises(VerifierError) as error:
        vs.links(s, identity(s, "shop"), sign1, actor="shop-user", now=NOW)
    assert (error.value.rule, error.value.status) == ("service_not_registered", 403)
    s.commit()
    [refusal] = audits(s, "refuse")
    assert (refusal.organisation, refusal.detail["rule"]) == ("shop", "service_not_registered")
    for bad, rule in [("zz", "hex"), ("0", "range"), ("1" * 60, "hex"), ("'; DROP TABLE x;--", "hex")]:
        with pytest.raises(VerifierError) as error:
            vs.links(s, bank, bad, actor="bank-user", now=NOW)
        assert (error.value.field, error.value.rule) == ("serial", rule)
    with pytest.raises(VerifierError) as error:
        vs.links(s, bank, "ab" * 20, actor="bank-user", now=NOW)
    assert (error.value.rule, error.value.status) == ("known_certificate", 404)


# --- consent and 基本4情報 --------------------------------------------------------------------------


def test_basic_info_needs_consent_and_follows_the_move(world: World, s: Session) -> None:
    make(s, "bank-a")
    make(s, "platform-x", ("basic_info",), category="delegate", principal_code="bank-a")
    make(s, "bank-b")
    _, sign = world.pair(s)
    s.commit()
    bank = identity(s, "bank-a")
    # No consent: refused, nothing given, the refusal logged with the holder.
    with pytest.raises(VerifierError) as error:
        vs.provide_basic_info(s, bank, sign, actor="bank-user", now=NOW)
    assert (error.value.field, error.value.rule, error.value.status) == ("serial", "consent_required", 403)
    s.commit()
    [refusal] = audits(s, "refuse")
    assert (refusal.subject, refusal.detail["rule"], refusal.organisation) == (
        world.code,
        "consent_required",
        "bank-a",
    )
    consent = vs.record_consent(
        s,
        bank,
        sign,
        method="signed",
        given_at=NOW,
        expires_at=NOW + timedelta(days=365),
        evidence_sha256="a" * 64,
        actor="bank-user",
        now=NOW,
    )
    s.commit()
    assert consent.active and consent.verifier_code == "bank-a"
    first = vs.provide_basic_info(s, bank, sign, actor="bank-user", now=NOW)
    assert (first.name, first.address, first.birth_date, first.sex, first.certificate_status) == (
        "山田　花子",
        OLD_ADDRESS,
        date(1990, 1, 2),
        2,
        "good",
    )
    s.commit()
    # The move revokes the certificate; the verifier still gets the holder's current 基本4情報.
    world.move()
    s.expire_all()
    after = vs.provide_basic_info(s, bank, sign, actor="bank-user", now=NOW + timedelta(seconds=1))
    assert (after.address, after.certificate_status, after.certificate_reason) == (
        NEW_ADDRESS,
        "revoked",
        "affiliationChanged",
    )
    assert after.holder_status == "active" and after.consent_id == consent.id
    # A delegate acts under its principal's consent; another verifier has none.
    via = vs.provide_basic_info(
        s, identity(s, "platform-x"), sign, actor="px", now=NOW + timedelta(seconds=2)
    )
    assert via.address == NEW_ADDRESS
    with pytest.raises(VerifierError) as error:
        vs.provide_basic_info(s, identity(s, "bank-b"), sign, actor="b", now=NOW)
    assert error.value.rule == "consent_required"
    s.commit()
    provided = audits(s, "provide")
    assert [(e.organisation, e.subject) for e in provided] == [
        ("bank-a", world.code),
        ("bank-a", world.code),
        ("platform-x", world.code),
    ]
    assert "address" in provided[0].items and provided[0].detail["consent"] == consent.id
    assert {r.service: r.requests for r in vs.usage(s, "bank-a")} == {"basic_info": 2}
    # Withdrawn by the holder (portal): refused from then on.
    vs.withdraw_consent(s, consent.id, channel="holder", actor="resident", resident_code=world.code, now=NOW)
    s.commit()
    with pytest.raises(VerifierError) as error:
        vs.provide_basic_info(s, bank, sign, actor="bank-user", now=NOW + timedelta(seconds=3))
    assert error.value.rule == "consent_required"
    [withdrawn] = vs.holders_consents(s, world.code, now=NOW)
    assert (withdrawn.active, withdrawn.withdrawal_channel) == (False, "holder")


def test_consent_expiry_and_rules(world: World, s: Session) -> None:
    make(s, "bank-a")
    make(s, "shop", ("revocation",))
    auth, sign = world.pair(s)
    s.commit()
    bank = identity(s, "bank-a")
    vs.record_consent(
        s, bank, auth, method="online", given_at=NOW, expires_at=NOW + timedelta(days=1), actor="u", now=NOW
    )
    s.commit()
    assert vs.provide_basic_info(s, bank, auth, actor="u", now=NOW + timedelta(hours=23)).name == "山田　花子"
    with pytest.raises(VerifierError) as error:
        vs.provide_basic_info(s, bank, auth, actor="u", now=NOW + timedelta(days=1))
    assert error.value.rule == "consent_required"
    s.rollback()
    before = count(s, VerifierConsent)
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"given_at": NOW + timedelta(hours=1)}, "given_at", "not_future"),
        ({"given_at": NOW - timedelta(days=400)}, "given_at", "certificate_valid_at_consent"),
        ({"expires_at": NOW - timedelta(days=1)}, "expires_at", "after_given"),
        ({"method": "telepathy"}, "method", "enum"),
        ({"evidence_sha256": "XYZ"}, "evidence_sha256", "hex64"),
        ({"given_at": datetime(2026, 1, 1)}, "given_at", "aware_datetime"),
        ({"serial": "not-hex"}, "serial", "hex"),
    ]
    for change, field, rule in cases:
        kw: dict[str, Any] = {"method": "written", "given_at": NOW, "actor": "u", "now": NOW}
        serial = change.pop("serial", sign)
        kw.update(change)
        with pytest.raises(VerifierError) as error:
            vs.record_consent(s, bank, serial, **kw)
        assert (error.value.field, error.value.rule) == (field, rule), change
    vs.record_consent(s, bank, sign, method="written", given_at=NOW, actor="u", now=NOW)
    with pytest.raises(VerifierError) as error:
        vs.record_consent(s, bank, sign, method="written", given_at=NOW, actor="u", now=NOW)
    assert (error.value.rule, error.value.status) == ("consent_exists", 409)
    s.rollback()
    with pytest.raises(VerifierError) as error:
        vs.record_consent(s, identity(s, "shop"), sign, method="written", given_at=NOW, actor="u", now=NOW)
    assert error.value.rule == "service_not_registered"
    s.rollback()
    assert count(s, VerifierConsent) == before


def test_dv_restriction_withholds_the_address(world: World, s: Session) -> None:
    make(s, "bank-a")
    _, sign = world.pair(s)
    emit(
        s,
        "register.restriction_changed",
        world.code,
        {
            "resident_code": world.code,
            "municipality_code": CHIYODA,
            "measures": [
                {
                    "id": "m1",
                    "starts_on": (TODAY - timedelta(days=10)).isoformat(),
                    "ends_on": (TODAY + timedelta(days=300)).isoformat(),
                }
            ],
        },
    )
    s.commit()
    drain(world.factory, world.registry)
    bank = identity(s, "bank-a")
    vs.record_consent(s, bank, sign, method="counter", given_at=NOW, actor="u", now=NOW)
    answer = vs.provide_basic_info(s, bank, sign, actor="u", now=NOW)
    assert (answer.address, answer.address_withheld, answer.name) == (None, True, "山田　花子")
    s.commit()
    [entry] = audits(s, "provide")
    assert entry.flags == ["dv_restricted"] and "address" not in entry.items


# --- 発行記録 and the operator's views ---------------------------------------------------------------


def test_issuance_records_are_queried_and_audited(world: World, s: Session) -> None:
    auth, sign = world.pair(s)
    s.commit()
    page = vs.issuance_records(s, actor=OP, resident_code=world.code)
    assert {r.serial for r in page.records} == {auth, sign} and page.total == 2
    assert {r.action for r in page.records} == {"issue"}
    only = vs.issuance_records(s, actor=OP, serial=sign.upper())
    assert [r.kind for r in only.records] == ["signature"]
    assert vs.issuance_records(s, actor=OP, since=TODAY + timedelta(days=1)).total == 0
    mine = vs.issuance_records(s, actor="resident", role="resident", resident_code=world.code)
    assert mine.total == 2
    s.commit()
    reads = [e for e in audits(s, "read") if e.items == ["発行記録"]]
    assert [(e.role, e.subject) for e in reads] == [
        ("national_operator", world.code),
        ("national_operator", world.code),
        ("national_operator", ""),
        ("resident", world.code),
    ]
    bad: list[tuple[dict[str, Any], str, str]] = [
        ({"resident_code": "123"}, "resident_code", "pattern"),
        ({"ca_id": "evil"}, "ca_id", "enum"),
        ({"kind": "passport"}, "kind", "enum"),
        ({"page_size": 1000}, "page_size", "range"),
        ({"since": TODAY, "until": TODAY - timedelta(days=1)}, "until", "period_order"),
        ({"role": "resident"}, "resident_code", "required"),
    ]
    for kw, field, rule in bad:
        with pytest.raises(VerifierError) as error:
            vs.issuance_records(s, actor=OP, **kw)
        assert (error.value.field, error.value.rule) == (field, rule)


def test_dashboard_ca_status_statistics_and_crl_alerts(world: World, s: Session) -> None:
    auth, sign = world.pair(s)
    ca.revoke_on_request(s, auth, key_compromise=True, now=NOW, actor="holder")
    make(s, "bank-a")
    s.commit()
    info = vs.keystore_info(world.ks.directory)
    board = vs.dashboard(s, keystore=info, now=NOW)
    cas = {c.id: c for c in board.cas}
    assert set(cas) == {d.id for d in ca.CA_DEFINITIONS}
    assert cas["jpki-auth"].revoked == 1 and cas["jpki-sign"].good == 1
    assert all(c.valid and c.key_store == "file" and c.key_present for c in cas.values())
    month = NOW.astimezone(vs.JST).strftime("%Y-%m")
    issued = {(r.month, r.key, r.kind): r.count for r in board.statistics.issued}
    assert issued == {(month, "issue", "user_auth"): 1, (month, "issue", "signature"): 1}
    assert [(r.month, r.key, r.kind, r.count) for r in board.statistics.revoked] == [
        (month, "keyCompromise", "user_auth", 1)
    ]
    assert board.statistics.by_status["user_auth"] == {"good": 0, "revoked": 1, "hold": 0}
    # Before any CRL: every CA's CRL is missing.
    assert {c.alert for c in board.crls} == {"missing"} and len(board.alerts) == len(cas)
    for c in ca.CA_DEFINITIONS:
        crl.publish_crl(s, world.ks, c.id, NOW)
    s.commit()
    fresh = vs.dashboard(s, keystore=info, now=NOW + timedelta(hours=1))
    assert fresh.alerts == [] and all(c.complete and not c.overdue for c in fresh.crls)
    assert {c.ca_id: c.entries for c in fresh.crls}["jpki-auth"] == 1
    late = vs.crl_status(s, now=NOW + timedelta(days=1, seconds=1))
    assert {c.alert for c in late} == {"overdue"}
    # Partitioned CRLs: every issuance batch needs one; a batch begun since is missing.
    s.execute(
        update(CertificateAuthority)
        .where(CertificateAuthority.id == "jpki-auth")
        .values(partition_size=1, partition_threshold=0)
    )
    crl.publish_crl(s, world.ks, "jpki-auth", NOW)
    world.pair(s, card="card-2")
    s.commit()
    parts = {c.partition: c.alert for c in vs.crl_status(s, now=NOW) if c.ca_id == "jpki-auth"}
    assert parts == {0: None, 1: None, 2: "missing"}
    crl.publish_crl(s, world.ks, "jpki-auth", NOW)
    s.commit()
    parts = {c.partition: c.alert for c in vs.crl_status(s, now=NOW) if c.ca_id == "jpki-auth"}
    assert parts == {0: None, 1: None, 2: None}
    # A key gone from the store is an alert too.
    (world.ks.directory / "jpki-sign.key.pem").unlink()
    gone = vs.dashboard(s, keystore=vs.keystore_info(world.ks.directory), now=NOW + timedelta(hours=1))
    assert gone.alerts == ["jpki-sign: 認証局の鍵が鍵保管庫にありません"]
    with pytest.raises(VerifierError):
        vs.statistics(s, months=0, now=NOW)
