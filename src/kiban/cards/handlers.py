"""How the card lifecycle reacts to other capabilities' events (SPEC §8).

``network.identity_changed`` (異動等情報): death → cards invalid; 住民票コード変更 → the cards follow the
code; 国外転出 → continued use abroad. ``numbering.number_reissued`` → cards invalid, new 申請書.
Both handlers are idempotent: a second delivery finds nothing live left to change.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from kiban.cards import service
from kiban.core.events import DomainEvent, Registry


def identity_changed(session: Session, event: DomainEvent) -> None:
    service.handle_identity_changed(session, event)


def number_reissued(session: Session, event: DomainEvent) -> None:
    service.handle_number_reissued(session, event)


def register_handlers(registry: Registry) -> None:
    registry.add("network.identity_changed", "cards.identity_changed", identity_changed)
    registry.add("numbering.number_reissued", "cards.number_reissued", number_reissued)
