"""Where a kiosk document's PDF is finished before it leaves the municipality.

Production and the demo sign every PDF (PAdES, the municipality's organisation certificate, the
signed QR code) with :func:`kiban.core.pdfsign.signing_finisher` — :func:`pades_finisher` here.
:func:`finish_pdf` (unsigned, the layout's own QR code) stays for tests of the protocol that do
not need the signature. The finish runs after the document's ledger row is committed: the signer
reads it (and may issue the organisation certificate on first use, in its own transaction).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

Finisher = Callable[..., bytes]
"""``finish(pdf, municipality_code, serial) -> pdf``."""


def finish_pdf(pdf: bytes, municipality_code: str, serial: str | None = None) -> bytes:
    """The unsigned finish: the PDF as drawn."""
    return pdf


def pades_finisher(session_maker: sessionmaker[Session], keystore: Any) -> Finisher:
    """Sign with the municipality's organisation key (``kiban.core.pdfsign``)."""
    from kiban.core.pdfsign import signing_finisher

    return signing_finisher(session_maker, keystore)


def printed_serial(pdf: bytes) -> str | None:
    """The serial a signed PDF carries in its (signed) Info dictionary; None when unsigned."""
    import io

    from pypdf import PdfReader

    from kiban.core.pdfsign import INFO_SERIAL

    meta: Any = PdfReader(io.BytesIO(pdf)).metadata or {}
    return str(meta[INFO_SERIAL]) if INFO_SERIAL in meta else None
