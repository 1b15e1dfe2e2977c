"""Where the software cards live in a data directory (the embedded demo's stand-in for the post).

``<data>/cards/shipped/<municipality>/<card id>.kcard`` — made by the manufacturer, encrypted under
the municipality's transport passphrase (``<data>/keys/cards_transport``, random, 0600, made on
first use); ``<data>/cards/issued/<card id>.kcard`` — after hand-over, re-encrypted under the
holder's own passphrase and removed from the shipment directory.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def cards_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "cards"


def shipped_dir(data_dir: Path) -> Path:
    return cards_dir(data_dir) / "shipped"


def issued_path(data_dir: Path, card_id: str) -> Path:
    return cards_dir(data_dir) / "issued" / f"{card_id}.kcard"


def transport_passphrase(keys_dir: Path) -> str:
    """The municipality's transport passphrase (one per data directory in the embedded demo)."""
    path = Path(keys_dir) / "cards_transport"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="ascii").strip()
    value = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(value + "\n")
    return value
