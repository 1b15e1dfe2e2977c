"""How the identity network reacts to the register's and numbering's events (SPEC §8).

``register.identity_changed`` → both copies (or the quarantine); ``numbering.number_assigned`` /
``numbering.number_reissued`` → the copies learn the 個人番号 (a new version);
``register.restriction_changed`` → the network's copy of the DV等支援措置 (state replaces state);
``register.moved_out`` / ``register.moved_in`` → forwarded to the other municipality (moves).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from kiban.core.events import DomainEvent, Registry
from kiban.network.service import apply_identity_change, apply_number, apply_restrictions


def replicate(session: Session, event: DomainEvent) -> None:
    apply_identity_change(session, event)


def record_number(session: Session, event: DomainEvent) -> None:
    apply_number(session, event)


def copy_restrictions(session: Session, event: DomainEvent) -> None:
    apply_restrictions(session, event)


def register_handlers(registry: Registry) -> None:
    registry.add("register.identity_changed", "network.replicate", replicate)
    registry.add("numbering.number_assigned", "network.record_number", record_number)
    registry.add("numbering.number_reissued", "network.record_number", record_number)
    registry.add("register.restriction_changed", "network.copy_restrictions", copy_restrictions)
    # 転出証明書情報 and 転入通知 relayed between municipalities (kiban.network.moves).
    from kiban.network import moves

    moves.register_handlers(registry)
