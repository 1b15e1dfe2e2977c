"""Where a kiosk document's PDF is finished before it leaves the municipality.

PAdES signing with the municipality's organisation certificate is built separately as
``kiban.core.pdfsign`` (``sign_pdf(pdf_bytes, *, municipality_code, ...)``). Until it exists (or
when no signing context is given) the PDF goes out unsigned — its QR verification code and the
ledger still protect it. :func:`pades_finisher` is the switch: pass what ``sign_pdf`` needs
besides the municipality (session factory, keystore) and give the result to ``RegisterIssuer``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

Finisher = Callable[[bytes, str], bytes]


def pdfsign_available() -> bool:
    try:
        module = importlib.import_module("kiban.core.pdfsign")
    except ImportError:
        return False
    return hasattr(module, "sign_pdf")


def finish_pdf(pdf: bytes, municipality_code: str) -> bytes:
    """The unsigned finish: the PDF as drawn."""
    return pdf


def pades_finisher(**context: Any) -> Finisher:
    """A finisher that signs with ``kiban.core.pdfsign.sign_pdf`` and the given context."""
    module = importlib.import_module("kiban.core.pdfsign")

    def finish(pdf: bytes, municipality_code: str) -> bytes:
        return bytes(module.sign_pdf(pdf, municipality_code=municipality_code, **context))

    return finish
