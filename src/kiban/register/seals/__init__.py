"""Seal registration (印鑑登録): register, abolish and look up a resident's registered seal.

The service functions live in :mod:`kiban.register.seals.service`; docs/seals-and-taxes.md
explains the rules and the choices.
"""

from kiban.register.seals.models import AbolitionCause, SealRegistration, SealStatus
from kiban.register.seals.service import (
    SealError,
    SealImagePolicy,
    abolish_for_resident,
    abolish_seal,
    active_seal,
    find_by_card_number,
    format_card_number,
    lost_card,
    normalise_card_number,
    register_seal,
    seal_history,
    synthetic_seal_image,
    validate_seal_image,
)

__all__ = [
    "AbolitionCause",
    "SealError",
    "SealImagePolicy",
    "SealRegistration",
    "SealStatus",
    "abolish_for_resident",
    "abolish_seal",
    "active_seal",
    "find_by_card_number",
    "format_card_number",
    "lost_card",
    "normalise_card_number",
    "register_seal",
    "seal_history",
    "synthetic_seal_image",
    "validate_seal_image",
]
