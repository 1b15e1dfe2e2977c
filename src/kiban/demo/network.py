"""Chapter 4 — the network: every change reaches the copies; agencies ask, within their uses."""

from __future__ import annotations

import random
from collections import Counter
from datetime import date, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select

from kiban.demo.context import DemoContext, ReportSection
from kiban.network import service as network
from kiban.network.models import NationalIdentity, current_version
from kiban.network.schemas import ProvisionQuery
from kiban.register.models import Resident, ResidentStatus

FISCAL_YEAR_END = date(2026, 3, 31)
JST = ZoneInfo("Asia/Tokyo")


def seed_network(ctx: DemoContext) -> ReportSection:
    """初期登録: the bulk-loaded world goes into the prefectural and national copies once."""
    with ctx.step("本人確認情報の初期登録 (copies seeded)", total=1) as advance, ctx.sessions.begin() as s:
        seeded = network.seed_copies(s)
        network.load_registry(s)
        advance(1)
    ctx.facts["seeded"] = seeded
    return ReportSection(
        "Network: initial load",
        f"{seeded:,} persons' 本人確認情報 seeded into the prefectural and national copies (初期登録); "
        "from here on every register change reaches them as a `register.identity_changed` event.",
    )


def network_year(ctx: DemoContext) -> ReportSection:
    rng = random.Random(ctx.seed + 4)
    with ctx.sessions() as s:
        codes = list(
            s.scalars(
                select(Resident.resident_code)
                .where(Resident.status == ResidentStatus.ACTIVE.value)
                .order_by(Resident.resident_code)
            )
        )
    outcomes: Counter[str] = Counter()
    with ctx.step("年金の現況確認 (pension bulk check)", total=len(codes)) as advance:
        with ctx.sessions.begin() as s:
            job = network.create_bulk_job(s, "nenkin", "pension_status_check")
        rows = [ProvisionQuery(resident_code=c) for c in codes]
        for answer in network.provide_bulk(ctx.sessions, job, rows, on=FISCAL_YEAR_END):
            outcomes[f"pension:{answer.outcome}"] += 1
            advance(1)
    sample = rng.sample(codes, min(25, len(codes)))
    with (
        ctx.step("旅券・不正な照会 (single queries)", total=len(sample) + 1) as advance,
        ctx.sessions.begin() as s,
    ):
        for code in sample:
            answer = network.provide(s, "mofa-passport", "passport_issue", {"resident_code": code})
            outcomes[f"passport:{answer.outcome}"] += 1
            advance(1)
        # The tax agency asks for a pension use it does not have: refused and logged.
        refused = network.provide(s, "nta", "pension_status_check", {"resident_code": sample[0]})
        outcomes[f"wrong-use:{refused.outcome}"] += 1
        advance(1)
    with ctx.sessions.begin() as s:
        # Provisions are logged at the time they are made (now), not in the simulated year.
        disclosure = network.provisions_about(s, sample[0], datetime.now(JST).year)
        status = network.replication_status(s)
        quarantined = len(network.quarantined(s))
    versions = sum(r.versions for r in status)
    lines = [
        "| municipality | versions applied to the national copy | newest change lag |",
        "|---|---:|---:|",
    ]
    for r in sorted(status, key=lambda r: r.municipality_code):
        lag = f"{r.lag.total_seconds():.2f} s" if r.lag is not None else "–"
        lines.append(f"| {r.municipality_code} | {r.versions:,} | {lag} |")
    lines += [
        "",
        f"- replication: {versions:,} versions in the national copy from the register's events; "
        f"{quarantined} messages quarantined",
        f"- 日本年金機構's yearly 現況確認 as one bulk file of {len(codes):,} rows: "
        f"{outcomes['pension:provided']:,} provided, {outcomes['pension:not_found']:,} not found",
        f"- 外務省 旅券課 asked about {len(sample)} people one by one: "
        f"{outcomes['passport:provided']} provided (without the 個人番号: the passport use may not have it)",
        f"- 国税庁 asked for the pension use it is not registered for: **{refused.outcome}** "
        f"(rule `{refused.rule}`), and the refusal is logged",
        f"- 提供状況の開示: the resident {sample[0][:3]}…'s record of provisions this year lists "
        f"{len(disclosure)} entries: "
        + ", ".join(sorted({f"{d.agency_name}（{d.use_code}）" for d in disclosure})),
    ]
    lines += _documents(ctx)
    lines += _move_in_export(ctx)
    api = _api_provisions(ctx, sample)
    lines += api
    ctx.facts["provided"] = outcomes["pension:provided"] + outcomes["passport:provided"]
    return ReportSection("4. The network", "\n".join(lines))


def _documents(ctx: DemoContext) -> list[str]:
    """A sample 個人番号通知書 and a 広域交付 住民票の写し, written to ``documents/network/``."""
    from kiban.core.documents import KeyDirectorySigners
    from kiban.network.wide_area import Identification, PhotoId, wide_area_resident_copy
    from kiban.numbering.letters import produce_letters
    from kiban.register.schemas import Actor

    # A folder of the chapter's own: documents/ itself holds the counter's four samples.
    out = ctx.data_dir / "documents" / "network"
    out.mkdir(parents=True, exist_ok=True)
    signers = KeyDirectorySigners(ctx.settings.keys_dir)
    lines: list[str] = []
    with ctx.step("通知書・広域交付 (sample documents)", total=2) as advance, ctx.sessions.begin() as s:
        batch = produce_letters(s, issuer="demo", limit=1, signers=signers)
        if batch.letters:
            letter = batch.letters[0]
            (out / "kojin-bango-tsuchisho.pdf").write_bytes(letter.pdf)
            lines.append(
                "- 個人番号通知書 sample: `documents/network/kojin-bango-tsuchisho.pdf` "
                f"(serial {letter.serial}, {letter.municipality_code})"
            )
        advance(1)
        # 広域交付: a person of one municipality asks at another's counter with a photo ID.
        person = s.scalars(
            select(NationalIdentity)
            .where(current_version(NationalIdentity), NationalIdentity.status == "active")
            .order_by(NationalIdentity.resident_code)
            .limit(1)
        ).one()
        counter = next(
            code
            for code in s.scalars(select(Resident.municipality_code).distinct())
            if code != person.municipality_code
        )
        ident = Identification(
            PhotoId.MY_NUMBER_CARD,
            person.family_name,
            person.given_name,
            person.birth_date,
            resident_code=person.resident_code,
        )
        clerk = Actor(username=f"clerk{counter}", municipality_code=counter)
        copy = wide_area_resident_copy(s, clerk, ident, signers=signers)
        (out / "koiki-kofu-juminhyo.pdf").write_bytes(copy.pdf)
        lines.append(
            "- 広域交付: `documents/network/koiki-kofu-juminhyo.pdf`, a resident of "
            f"{person.municipality_code} served at {counter}'s counter from the network "
            f"(serial {copy.serial})"
        )
        advance(1)
    return lines


def _move_in_export(ctx: DemoContext) -> list[str]:
    """The monthly 転入 extract (住民基本台帳人口移動報告) for the year's busiest month, as CSV."""
    from kiban.network import exports

    with ctx.sessions() as s:
        days = s.scalars(
            select(NationalIdentity.effective_on).where(NationalIdentity.reason == exports.MIGRATION_REASON)
        ).all()
    months = Counter(d.strftime("%Y-%m") for d in days)
    month = months.most_common(1)[0][0] if months else "2025-10"
    caller = exports.Caller("operator", "national_operator", "demo")
    out = ctx.data_dir / "exports"
    out.mkdir(exist_ok=True)
    with ctx.step("人口移動報告 (monthly 転入 CSV)", total=1) as advance, ctx.sessions.begin() as s:
        counts = exports.move_in_extract(s, caller, month)
        (out / f"move-ins-{month}.csv").write_text(exports.migration_csv(counts), encoding="utf-8")
        total = sum(c.count for c in counts)
        advance(1)
    ctx.facts["move_ins"] = {"month": month, "moves": total, "cells": len(counts)}
    return [
        f"- 住民基本台帳人口移動報告: `exports/move-ins-{month}.csv`, {total} 転入 in {month} in "
        f"{len(counts)} cells (destination × origin × sex × age group; counts only, no person)"
    ]


def _api_provisions(ctx: DemoContext, codes: list[str]) -> list[str]:
    """A few provisions through the HTTP API, as the agency account ``pension`` (日本年金機構)."""
    import re

    from fastapi.testclient import TestClient

    from kiban.network.api import register_web
    from kiban.web.app import WebOptions, create_app

    password = _password(ctx, "pension")
    if password is None:
        return ["- HTTP API: skipped (no `pension` account in demo-credentials.txt)"]
    app = create_app(ctx.settings, options=WebOptions(deliver_events=False), capabilities=[register_web])
    statuses: Counter[str] = Counter()
    asked = codes[:5]
    with (
        ctx.step("API照会 (provisions over HTTP)", total=len(asked) + 1) as advance,
        TestClient(app) as web,
    ):
        page = web.get("/login", headers={"accept": "text/html"})
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        form = {"username": "pension", "password": password, "csrf_token": token.group(1) if token else ""}
        web.post("/login", data=form, headers={"accept": "text/html"}, follow_redirects=False)
        web.headers["X-CSRF-Token"] = web.get("/api/session").json()["csrf_token"]
        for code in asked:
            body = {"use_code": "pension_status_check", "query": {"resident_code": code}}
            answer = web.post("/api/provision", json=body)
            statuses[answer.json().get("outcome", str(answer.status_code))] += 1
            advance(1)
        # The pension agency asks for a use it does not have: 403, and the refusal is logged.
        refused = web.post(
            "/api/provision", json={"use_code": "passport_issue", "query": {"resident_code": codes[0]}}
        )
        statuses[f"HTTP {refused.status_code}"] += 1
        advance(1)
    ctx.facts["api_provisions"] = dict(statuses)
    return [
        f"- HTTP API (`POST /api/provision`, logged in as `pension`): {statuses['provided']} provided of "
        f"{len(asked)}; a passport query by the same agency answered **{refused.status_code}** "
        f"(rule `{refused.json().get('rule', '?')}`)"
    ]


def _password(ctx: DemoContext, username: str) -> str | None:
    path = ctx.data_dir / "demo-credentials.txt"
    if not path.exists():
        return None
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[0] == username:
            return parts[1]
    return None
