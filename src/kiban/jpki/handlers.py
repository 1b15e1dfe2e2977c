"""How the CA reacts to other capabilities' events (SPEC §8).

``network.identity_changed`` (異動等情報) revokes the certificates the change invalidates;
``cards.state_changed`` puts a card's certificates on hold or revokes them.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from kiban.core.events import DomainEvent, Registry
from kiban.jpki.service import handle_card_state_changed, handle_identity_changed


def revoke_on_identity_change(session: Session, event: DomainEvent) -> None:
    handle_identity_changed(session, event)


def follow_card_state(session: Session, event: DomainEvent) -> None:
    handle_card_state_changed(session, event)


def register_handlers(registry: Registry) -> None:
    registry.add("network.identity_changed", "jpki.revoke_on_identity_change", revoke_on_identity_change)
    registry.add("cards.state_changed", "jpki.card_state", follow_card_state)
