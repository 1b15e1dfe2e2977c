"""The demo's kiosk chapter on a small world: documents printed, refusals shown, settlement, samples."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from rich.progress import Progress
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from cards_support import ca, ks, registry, world  # noqa: I001 - tests/ is on the path
from kiban.cards.demo import cards_chapter
from kiban.core.config import Settings
from kiban.demo.context import DemoContext
from kiban.jpki.keys import FileKeyStore
from kiban.kiosk.demo import kiosk_chapter
from kiban.network import service as network

__all__ = ["ca", "ks", "registry", "world"]  # fixtures used by name


def test_kiosk_chapter(
    world: list[str],
    ca: FileKeyStore,
    engine: Engine,
    session_maker: sessionmaker[Session],
    db_url: str,
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path, database_url_override=db_url)
    ctx = DemoContext(settings, engine, session_maker, Progress(disable=True), 1, date(2025, 4, 1), 40)
    cards_chapter(ctx, cards=8)
    with session_maker.begin() as s:
        network.seed_copies(s)
    section = kiosk_chapter(ctx)
    facts = ctx.facts["kiosk"]
    assert facts["resident_copy"] >= 3  # every holder with a live card printed at least one
    assert facts["wrong_pin"] == 1 and facts["refused_version_withdrawn"] == 1
    # the only municipality left the 附票 out: asked for, refused
    assert facts.get("koseki_fuhyo", 0) == 0 and facts["refused_document_not_offered"] >= 1
    assert "月次精算" in section.body and "合計" in section.body
    assert (tmp_path / "documents" / "kiosk-resident_copy.pdf").read_bytes().startswith(b"%PDF")
