"""Notifying municipalities of assigned numbers (個人番号の通知) through domain events (SPEC §8)."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.orm import Session

from kiban.core.events import emit

NUMBER_ASSIGNED = "numbering.number_assigned"
NUMBER_REISSUED = "numbering.number_reissued"


def notify_assigned(
    session: Session,
    assignments: Mapping[str, str],
    municipality_of: Mapping[str, str],
    *,
    reissued: bool = False,
) -> int:
    """Emit one event per (住民票コード → 個人番号), keyed by the 住民票コード, in ``session``'s transaction.

    The 個人番号 travels only to the resident's own municipality (the payload names it); the
    event stream is never a channel to anyone else.
    """
    event_type = NUMBER_REISSUED if reissued else NUMBER_ASSIGNED
    for code, number in assignments.items():
        emit(
            session,
            event_type,
            code,
            {
                "resident_code": code,
                "individual_number": number,
                "municipality_code": municipality_of[code],
            },
        )
    return len(assignments)
