"""Numbering (付番, SPEC K3): the store of 住民票コード and 個人番号, and the services that issue them.

The pure rules (check digits, generator, FF3-1 cipher) are in :mod:`kiban.core.identifiers`.
"""

from kiban.numbering.service import (
    NumberingError,
    active_number,
    assign_individual_number,
    assign_individual_numbers_bulk,
    current_resident_code,
    issue_resident_codes,
    number_history,
    reissue_individual_number,
    reissue_resident_code,
)

__all__ = [
    "NumberingError",
    "active_number",
    "assign_individual_number",
    "assign_individual_numbers_bulk",
    "current_resident_code",
    "issue_resident_codes",
    "number_history",
    "reissue_individual_number",
    "reissue_resident_code",
]
