"""Minimal tax data (所得・課税): per resident and fiscal year, for the 所得・課税証明書.

No tax calculation engine: assessments are recorded as the tax system computed them.
"""

from kiban.register.taxes.models import TaxAssessment
from kiban.register.taxes.service import (
    AssessmentInput,
    TaxError,
    record_tax_assessment,
    record_tax_assessments,
    synthetic_assessments,
    tax_assessment,
    tax_history,
)

__all__ = [
    "AssessmentInput",
    "TaxAssessment",
    "TaxError",
    "record_tax_assessment",
    "record_tax_assessments",
    "synthetic_assessments",
    "tax_assessment",
    "tax_history",
]
