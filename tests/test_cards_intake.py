"""Bulk application intake (employer bulk files, the daily load): the single path's rules, line by line."""

from __future__ import annotations

from datetime import date

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from cards_support import CLERK, OPERATOR, A, adults, registry, s, snapshot, world  # noqa: I001 - tests/ is on the path
from kiban.cards import service, states
from kiban.cards.intake import LineError, apply_many
from kiban.cards.models import Card
from kiban.cards.service import Application
from kiban.core.audit import AuditEntry
from kiban.register import service as register
from kiban.register.schemas import Actor as RegisterActor
from kiban.register.schemas import Death, Target

__all__ = ["registry", "s", "world"]  # fixtures used by name


def test_bulk_lines_are_accepted_or_refused_alone(world: list[str], s: Session) -> None:
    people = adults(s, non_head=True)
    dead = people[0]
    others = [r.resident_code for r in adults(s) if r.resident_code != dead.resident_code][:4]
    forms = service.issue_forms(s, CLERK, [dead.resident_code, *others], A)
    today = date.today()
    register.death(
        s,
        RegisterActor(username="clerk-a", municipality_code=A),
        Death(notified_on=today, effective_on=today, target=Target(resident_code=dead.resident_code)),
    )
    pending = service.apply(s, service.Actor("clerk-a", "clerk", A), Application(forms[others[3]]))
    extra = service.issue_forms(s, CLERK, [others[3]], A)[others[3]]
    s.commit()
    audit_before = s.scalar(select(func.count()).select_from(AuditEntry))
    lines = [
        Application(forms[others[0]], channel="bulk", employer="株式会社サンプル"),  # 0 ok
        Application("9" * 23, channel="bulk", employer="株式会社サンプル"),  # 1 unknown
        Application(forms[dead.resident_code], channel="bulk", employer="株式会社サンプル"),  # 2 dead
        Application(forms[others[0]], channel="bulk", employer="株式会社サンプル"),  # 3 same form again
        Application(forms[others[1]], channel="bulk"),  # 4 no employer
        Application("12", channel="online"),  # 5 malformed
        Application(forms[others[2]], channel="online", express_reason="loss"),  # 6 express in bulk
        Application(extra, channel="online"),  # 7 already has a card on its way
        Application(forms[others[2]], channel="online"),  # 8 ok
    ]
    result = apply_many(s, CLERK, lines)
    s.commit()
    assert result.refused == [
        LineError(1, "application_id", "unknown_application_id"),
        LineError(2, "application_id", "resident_dead"),
        LineError(3, "application_id", "already_used"),
        LineError(4, "employer", "required"),
        LineError(5, "application_id", "format"),
        LineError(6, "express_reason", "express_not_in_bulk"),
        LineError(7, "application_id", "pending_application"),
    ]
    assert len(result.accepted) == 2
    rows = {c.card_id: c for c in s.scalars(select(Card).where(Card.card_id.in_(result.accepted)))}
    assert {r.resident_code for r in rows.values()} == {others[0], others[2]}
    assert all(r.state == states.APPLIED for r in rows.values())
    assert rows[result.accepted[0]].employer == "株式会社サンプル"
    assert s.scalar(select(func.count()).select_from(AuditEntry)) == audit_before + 2
    assert [t.to_state for t in service.history(s, result.accepted[0])] == ["applied"]
    assert pending.state == states.APPLIED


def test_a_wholly_bad_batch_changes_nothing(world: list[str], s: Session) -> None:
    before = snapshot(s)
    result = apply_many(s, CLERK, [Application("1" * 23), Application("bad")])
    s.commit()
    assert result.accepted == [] and len(result.refused) == 2
    assert snapshot(s) == before


def test_bulk_card_ids_look_like_single_ones() -> None:
    from kiban.cards.service import new_card_id, new_card_ids

    alphabet = set("ABCDEFGHJKLMNPQRSTUVWXYZ23456789")
    ids = new_card_ids(5000)
    assert len(set(ids)) == 5000 and new_card_ids(0) == []
    for card_id in ids[:500] + [new_card_id() for _ in range(500)]:
        assert len(card_id) == 12 and set(card_id) <= alphabet, card_id
    # every symbol turns up in every position (60 random bits, 5 per character)
    for position in range(12):
        assert {card_id[position] for card_id in ids} == alphabet


def test_bulk_intake_writes_in_the_callers_transaction(
    world: list[str], session_maker: sessionmaker[Session]
) -> None:
    """Rolled back → nothing stays; committed → the rows read back as the single path writes them."""
    from kiban.cards.models import Transition

    with session_maker() as s:
        people = [r.resident_code for r in adults(s)[:3]]
        forms = service.issue_forms(s, CLERK, people, A)
        s.commit()
        apps = [Application(forms[code], channel="online") for code in people]
        assert len(apply_many(s, CLERK, apps).accepted) == 3
        s.rollback()
        assert s.scalar(select(func.count()).select_from(Card)) == 0
        assert s.scalar(select(func.count()).select_from(Transition)) == 0
        ids = apply_many(s, CLERK, apps).accepted
        s.commit()
        s.expire_all()
        for card_id in ids:
            card = service.get_card(s, card_id)
            assert card.state == "applied" and card.applied_on == service.today_jst()
            assert card.created_at.tzinfo is not None and card.express is False and card.renewal_of is None
        # a card taken in bulk goes on like any other
        assert service.check(s, OPERATOR, ids[0]).state == "checked"
