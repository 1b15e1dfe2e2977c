"""The demo's card chapter on a small world: every count in the report, files in cards/."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from rich.progress import Progress
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from cards_support import ca, ks, registry, world  # noqa: I001 - tests/ is on the path
from kiban.cards.demo import HOLDER_PASSPHRASE, cards_chapter
from kiban.cards.softcard import SoftCard
from kiban.core.config import Settings
from kiban.demo.context import DemoContext
from kiban.jpki.keys import FileKeyStore

__all__ = ["ca", "ks", "registry", "world"]  # fixtures used by name


def test_cards_chapter(
    world: list[str],
    ca: FileKeyStore,
    engine: Engine,
    session_maker: sessionmaker[Session],
    db_url: str,
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path, database_url_override=db_url)  # keys in tmp_path/keys, as the CA's
    ctx = DemoContext(settings, engine, session_maker, Progress(disable=True), 1, date(2025, 4, 1), 40)
    section = cards_chapter(ctx, cards=6)
    facts = ctx.facts["cards"]
    assert facts["forms"] == 6 and facts["paper"] + facts["online"] + facts["bulk"] == 6
    assert facts["refused_unknown_form"] == 1 and facts["defective"] == 1
    assert facts["ordered"] == facts["produced"] == facts["arrived"] == facts["notices"] == 5
    assert facts["handed_over"] == 5 and facts["suspended_by_phone"] == 1 and facts["found_again"] == 1
    assert facts["returned"] == 1 and facts["expiry_notices"] >= 1 and facts["expiry_notices_again"] == 0
    assert facts["states"] == {"defective": 1, "active": 4, "abolished": 1}
    assert "handed over 5" in section.body
    issued = sorted((tmp_path / "cards" / "issued").glob("*.kcard"))
    assert len(issued) == 5
    card = SoftCard.open(issued[0], HOLDER_PASSPHRASE)
    assert card.certificate("user_auth") is not None
    assert list((tmp_path / "cards").glob("交付通知書-*.pdf"))
