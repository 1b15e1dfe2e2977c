"""How the CA reacts to other capabilities' events (SPEC §8).

``network.identity_changed`` (異動等情報) revokes the certificates the change invalidates;
``cards.state_changed`` puts a card's certificates on hold or revokes them.
``jpki.certificate_status_changed`` re-signs the certificate's stored OCSP response.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from kiban.core.events import DomainEvent, Registry
from kiban.jpki.service import handle_card_state_changed, handle_identity_changed


def revoke_on_identity_change(session: Session, event: DomainEvent) -> None:
    handle_identity_changed(session, event)


def follow_card_state(session: Session, event: DomainEvent) -> None:
    handle_card_state_changed(session, event)


def refresh_ocsp_response(session: Session, event: DomainEvent) -> None:
    # Imported here: the OCSP module is only needed by processes that deliver this event.
    from kiban.jpki.ocsp import on_status_changed

    on_status_changed(session, str(event.payload.get("ca_id", "")), event.payload.get("serial") or event.key)


def register_handlers(registry: Registry) -> None:
    registry.add("network.identity_changed", "jpki.revoke_on_identity_change", revoke_on_identity_change)
    registry.add("cards.state_changed", "jpki.card_state", follow_card_state)
    registry.add("jpki.certificate_status_changed", "jpki.ocsp_refresh", refresh_ocsp_response)
