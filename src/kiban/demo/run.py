"""Runs the demo's chapters in order and writes ``report.md`` (SPEC §7, §9)."""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import inspect, select

from kiban.cards.demo import cards_chapter
from kiban.core import accounts, audit
from kiban.core.config import Settings, load_settings
from kiban.core.database import make_engine, session_factory, upgrade
from kiban.demo.context import DemoContext, ReportSection
from kiban.demo.life import live_a_year
from kiban.demo.network import network_year, seed_network
from kiban.demo.pki import pki_ceremony, pki_publish
from kiban.demo.register_docs import counter_work
from kiban.demo.world import DEMO_MUNICIPALITIES, build_world
from kiban.kiosk.demo import kiosk_chapter

# What a previous demo leaves in its directory; anything else there means it is not ours to wipe.
DEMO_FILES = {
    "kiban.sqlite",
    "kiban.sqlite-wal",
    "kiban.sqlite-shm",
    "report.md",
    "keys",
    "documents",
    "pki",
    "cards",
    "exports",
    "demo-credentials.txt",
    "audit-checkpoint.json",
}

Chapter = Callable[[DemoContext], ReportSection]


class DemoError(RuntimeError):
    """The demo cannot start (field and rule in the message)."""


def prepare_directory(data_dir: Path) -> None:
    """Empty ``data_dir`` of an earlier demo's files; refuse to touch a directory holding others."""
    if data_dir.exists() and not data_dir.is_dir():
        raise DemoError(f"--data {data_dir}: is a file, not a directory (rule: data_dir_is_directory)")
    if data_dir.is_dir():
        foreign = sorted(p.name for p in data_dir.iterdir() if p.name not in DEMO_FILES)
        if foreign:
            raise DemoError(
                f"--data {data_dir}: holds files the demo did not write ({', '.join(foreign[:5])}); "
                "choose an empty or earlier demo directory (rule: data_dir_is_demo)"
            )
        for p in data_dir.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def _check_external_database(settings: Settings) -> None:
    engine = make_engine(settings.database_url)
    try:
        if "residents" in inspect(engine).get_table_names():
            from kiban.register.models import Resident

            with engine.connect() as conn:
                if conn.execute(select(Resident.id).limit(1)).first() is not None:
                    raise DemoError(
                        "KIBAN_DATABASE_URL: the database already holds residents; the demo builds a fresh "
                        "world and needs an empty database (rule: empty_database)"
                    )
    finally:
        engine.dispose()


def demo_accounts(ctx: DemoContext) -> ReportSection:
    """Staff accounts for `kiban serve`: a clerk per municipality and one of each national role."""
    password = secrets.token_urlsafe(12)
    made: list[tuple[str, str]] = []
    with ctx.sessions.begin() as s:
        for code in DEMO_MUNICIPALITIES:
            name = f"clerk{code}"
            accounts.create_user(s, name, password, "clerk", municipality_code=code)
            made.append((name, f"clerk of {code}"))
        for name, role, org in [
            ("operator", "national_operator", None),
            ("pension", "agency", "nenkin"),
            ("bank", "verifier", "demo-bank"),
            ("callcentre", "call_centre", None),
        ]:
            accounts.create_user(s, name, password, role, organisation=org)
            made.append((name, role))
    path = ctx.data_dir / "demo-credentials.txt"
    path.write_text(
        "# Demo staff accounts for `kiban serve --data "
        + str(ctx.data_dir)
        + "` (synthetic world only)\n"
        + "".join(f"{name}\t{password}\t{what}\n" for name, what in made)
    )
    path.chmod(0o600)
    body = (
        f"{len(made)} staff accounts (one clerk per municipality, a national operator, an agency, "
        "a verifier, "
        "a call-centre agent); their password is in `demo-credentials.txt` (mode 0600).\n\n"
        + "\n".join(f"- `{name}`: {what}" for name, what in made)
    )
    return ReportSection("Accounts", body)


def audit_chapter(ctx: DemoContext) -> ReportSection:
    with ctx.sessions() as s:
        report = audit.verify_data_dir(s, ctx.settings)
    ctx.facts["audit_ok"] = report.ok
    return ReportSection(
        "Audit log",
        f"Every write of personal data above went through the hash-chained audit log: "
        f"{report.summary()}\n\nCheck it yourself: `kiban audit verify --data {ctx.data_dir}`.",
    )


CHAPTERS: list[Chapter] = [
    build_world,
    seed_network,
    demo_accounts,
    counter_work,
    pki_ceremony,
    cards_chapter,
    live_a_year,
    network_year,
    kiosk_chapter,
    pki_publish,
    audit_chapter,
]


def run_demo(data_dir: Path, residents: int, *, seed: int = 20260401, console: Console | None = None) -> Path:
    console = console or Console(stderr=True)
    data_dir = data_dir.resolve()
    settings = load_settings(data_dir)
    if settings.database_url_override:
        _check_external_database(settings)
    prepare_directory(data_dir)
    settings.ensure_dirs()
    started = time.perf_counter()
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    try:
        with progress:
            ctx = DemoContext(
                settings=settings,
                engine=engine,
                sessions=session_factory(engine),
                progress=progress,
                seed=seed,
                as_of=date(2025, 4, 1),
                residents=residents,
            )
            for chapter in CHAPTERS:
                ctx.sections.append(chapter(ctx))
    finally:
        engine.dispose()
    ctx.timings.append(("total", time.perf_counter() - started, ""))
    report = data_dir / "report.md"
    report.write_text(render_report(ctx))
    return report


def render_report(ctx: DemoContext) -> str:
    parts = [
        "# Kiban demo report",
        "",
        f"A synthetic slice of Japan built by `kiban demo --residents {ctx.residents}` in `{ctx.data_dir}`.",
        "Everything here is synthetic: no real person's data.",
        "",
    ]
    for section in ctx.sections:
        parts += [f"## {section.title}", "", section.body, ""]
    parts += ["## Timings", "", "| step | seconds | rate |", "|---|---:|---:|"]
    parts += [f"| {name} | {seconds:.2f} | {rate} |" for name, seconds, rate in ctx.timings]
    parts.append("")
    return "\n".join(parts)
